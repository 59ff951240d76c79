//! The `ChunkService` gRPC adapter: translates messages, runs engine calls on blocking
//! threads, forwards chain operations downstream, and maps errors through `status.rs`.

use std::sync::Arc;

use cairn_proto::chunk::chunk_service_server::ChunkService;
use cairn_proto::chunk::{
    ChunkInfo, CopyChunkFromPeerRequest, CopyChunkFromPeerResponse, DeleteChunkRequest, DeleteChunkResponse,
    ListChunksRequest, ListChunksResponse, ReadChunkRequest, ReadChunkResponse, StatChunkRequest, StatChunkResponse,
    TruncateChunkRequest, TruncateChunkResponse, UpdateVersionRequest, UpdateVersionResponse, WriteChunkRequest,
    WriteChunkResponse, WriteHeader,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::status::to_status;
use crate::block::crc32;
use crate::engine::{ChunkEngine, ReadPiece, WriteTarget};
use crate::error::ChunkError;
use crate::ids::{ChunkId, ChunkVersion};
use crate::integrity::Integrity;
use crate::limits::{
    APPLY_GROUP_BYTES_MAX, APPLY_GROUP_MESSAGES_MAX, BULK_FLUSH_STEP_BYTES, BULK_STREAM_BYTES_MIN, CHAIN_REPLICAS_MAX,
    COPIES_MAX, COPY_TIMEOUT, MEMORY_READ_BYTES_MAX, PEER_RPC_TIMEOUT, READ_AHEAD_PIECES, READ_MESSAGE_BYTES,
    READ_QUEUE_MESSAGES_MAX, WRITE_IDLE_TIMEOUT, WRITE_MESSAGE_BYTES_MAX, WRITE_STREAMS_MAX,
};
use crate::metrics::Metrics;
use crate::replication::{replica_failure, Forwarder, PeerPool};
use crate::storage::Logging;

/// Runs a synchronous engine call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, ChunkError> {
    joined(tokio::task::spawn_blocking(f).await)
}

/// The result of a finished blocking task; a panic in it becomes an internal error.
fn joined<T>(result: Result<Result<T, ChunkError>, tokio::task::JoinError>) -> Result<T, ChunkError> {
    result.map_err(|e| ChunkError::Internal(format!("blocking task: {e}")))?
}

/// The chunk service of one chunkserver.
#[derive(Debug, Clone)]
pub struct ChunkApi {
    engine: Arc<ChunkEngine>,
    metrics: Arc<Metrics>,
    integrity: Arc<Integrity>,
    peers: Arc<PeerPool>,
    write_slots: Arc<Semaphore>,
    copy_slots: Arc<Semaphore>,
}

impl ChunkApi {
    /// Starts reading `[offset, offset + len)` of `chunk` on the blocking pool; a checksum
    /// failure is reported to the integrity tracker.
    fn read_piece(
        &self,
        chunk: ChunkId,
        version: Option<ChunkVersion>,
        offset: u64,
        len: u64,
    ) -> tokio::task::JoinHandle<Result<ReadPiece, ChunkError>> {
        let (engine, integrity) = (self.engine.clone(), self.integrity.clone());
        tokio::task::spawn_blocking(move || {
            engine.read_with_crc(chunk, version, offset, len).inspect_err(|e| integrity.observe(e, "read"))
        })
    }

    /// The first piece of a read: a small one from memory right here when its blocks are
    /// cached (a hand-off to a blocking thread and back costs more than the read), else on the
    /// blocking pool.
    async fn first_piece(
        &self,
        chunk: ChunkId,
        version: Option<ChunkVersion>,
        offset: u64,
        len: u64,
    ) -> Result<ReadPiece, ChunkError> {
        if len <= MEMORY_READ_BYTES_MAX {
            let read = self.engine.read_from_memory(chunk, version, offset, len);
            if let Some(piece) = read.inspect_err(|e| self.integrity.observe(e, "read"))? {
                return Ok(piece);
            }
        }
        joined(self.read_piece(chunk, version, offset, len).await)
    }

    pub fn new(engine: Arc<ChunkEngine>, metrics: Arc<Metrics>, integrity: Arc<Integrity>) -> ChunkApi {
        ChunkApi {
            engine,
            metrics,
            integrity,
            peers: Arc::new(PeerPool::new()),
            write_slots: Arc::new(Semaphore::new(WRITE_STREAMS_MAX)),
            copy_slots: Arc::new(Semaphore::new(COPIES_MAX)),
        }
    }

    /// Counts and logs a failed operation, and turns it into a status.
    fn fail(&self, what: &'static str, chunk_id: u64, error: ChunkError) -> Status {
        match &error {
            ChunkError::ReplicaNoSpace { replica, message } => {
                tracing::warn!(op = what, chunk_id, %replica, %message, "replica out of space");
            }
            ChunkError::ReplicaFailed { replica, message } => {
                self.metrics.replica_failures.inc();
                tracing::warn!(op = what, chunk_id, %replica, %message, "replica failed");
            }
            ChunkError::Storage(_) | ChunkError::Internal(_) => {
                tracing::warn!(op = what, chunk_id, %error, "operation failed");
            }
            _ => tracing::debug!(op = what, chunk_id, %error, "operation refused"),
        }
        to_status(&error)
    }

    async fn write_stream(&self, mut inbound: Streaming<WriteChunkRequest>) -> Result<WriteChunkResponse, ChunkError> {
        let _slot = self.write_slots.acquire().await.map_err(|_| ChunkError::ShuttingDown)?;
        let first = next_message(&mut inbound).await?.ok_or_else(|| invalid("empty write stream"))?;
        let header = first.header.clone().ok_or_else(|| invalid("the first write message must carry the header"))?;
        if header.chain.len() > CHAIN_REPLICAS_MAX {
            return Err(invalid(&format!("chain of {} replicas exceeds {CHAIN_REPLICAS_MAX}", header.chain.len())));
        }
        let target = WriteTarget {
            chunk: ChunkId(header.chunk_id),
            version: ChunkVersion(header.version),
            create: header.create,
            chunk_size_bytes: header.chunk_size_bytes,
        };
        let engine = self.engine.clone();
        blocking(move || engine.check_write(&target)).await?;

        let mut forwarder = match header.chain.split_first() {
            Some((next, _)) => Some(Forwarder::start(&self.peers, next)?),
            None => None,
        };
        let mut downstream_header =
            Some(WriteHeader { chain: header.chain.iter().skip(1).cloned().collect(), ..header.clone() });
        // A bulk stream skips the write-ahead log and is persisted (flushed to the data files)
        // before it is answered: each byte reaches the disk once, and the answer means durable.
        let bulk = header.stream_bytes >= BULK_STREAM_BYTES_MIN;
        let logging = if bulk { Logging::Unlogged } else { Logging::Logged };
        let mut next = Some(first);
        let mut bytes_written = 0u64;
        let mut length_bytes = 0;
        let mut applying: Option<tokio::task::JoinHandle<Result<u64, ChunkError>>> = None;
        while let Some(message) = next.take() {
            // The messages already received are applied together (one store commit): a stream
            // of small writes (4 KiB random writes flushed by a client) costs one commit per
            // group instead of one per message.
            let mut group = vec![self.accept(message, target.chunk, &mut forwarder, &mut downstream_header).await?];
            let mut group_bytes = group[0].1.len();
            let mut ended = false;
            while group.len() < APPLY_GROUP_MESSAGES_MAX && group_bytes < APPLY_GROUP_BYTES_MAX {
                match inbound.message().now_or_never() {
                    None => break,
                    Some(Ok(Some(message))) => {
                        let piece = self.accept(message, target.chunk, &mut forwarder, &mut downstream_header).await?;
                        group_bytes += piece.1.len();
                        group.push(piece);
                    }
                    Some(Ok(None)) => {
                        ended = true;
                        break;
                    }
                    Some(Err(status)) => return Err(ChunkError::UpstreamFailed(status.message().to_owned())),
                }
            }
            // Groups apply in order, one at a time, but the next one is received and forwarded
            // while the previous one is being applied.
            if let Some(previous) = applying.take() {
                length_bytes = previous.await.map_err(|e| ChunkError::Internal(format!("apply task: {e}")))??;
            }
            let (engine, integrity) = (self.engine.clone(), self.integrity.clone());
            let metrics = self.metrics.clone();
            let len = group_bytes as u64;
            let flush_step =
                bulk && (bytes_written + len) / BULK_FLUSH_STEP_BYTES > bytes_written / BULK_FLUSH_STEP_BYTES;
            applying = Some(tokio::task::spawn_blocking(move || {
                let pieces: Vec<(u64, &[u8])> = group.iter().map(|(offset, data)| (*offset, &data[..])).collect();
                let meta =
                    engine.write_many(&target, &pieces, logging).inspect_err(|e| integrity.observe(e, "write"))?;
                if flush_step {
                    engine.start_persist()?;
                }
                metrics.write_bytes.inc_by(len);
                Ok::<_, ChunkError>(meta.length_bytes)
            }));
            bytes_written += len;
            if !ended {
                next = next_message(&mut inbound).await?;
            }
        }
        if let Some(last) = applying.take() {
            length_bytes = last.await.map_err(|e| ChunkError::Internal(format!("apply task: {e}")))??;
        }

        // Durable here (if asked, or a bulk stream) and acknowledged downstream, concurrently.
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        let local = async move {
            if bulk {
                metrics.bulk_streams.inc();
                blocking(move || engine.persist()).await
            } else if header.sync {
                blocking(move || engine.sync()).await
            } else {
                Ok(())
            }
        };
        let downstream = async move {
            match forwarder {
                Some(forwarder) => forwarder.finish().await.map(Some),
                None => Ok(None),
            }
        };
        let (local, downstream) = tokio::join!(local, downstream);
        local?;
        let downstream = downstream?;
        Ok(WriteChunkResponse {
            chunk_id: header.chunk_id,
            version: header.version,
            length_bytes,
            bytes_written,
            replicas: 1 + downstream.map_or(0, |r| r.replicas),
        })
    }

    /// Checks one write message (size, wire CRC) and forwards it downstream (the first
    /// forwarded message carries the downstream header); answers its (offset, data).
    async fn accept(
        &self,
        message: WriteChunkRequest,
        chunk: ChunkId,
        forwarder: &mut Option<Forwarder>,
        downstream_header: &mut Option<WriteHeader>,
    ) -> Result<(u64, bytes::Bytes), ChunkError> {
        if message.data.len() > WRITE_MESSAGE_BYTES_MAX {
            return Err(ChunkError::TooLarge { len: message.data.len(), max: WRITE_MESSAGE_BYTES_MAX });
        }
        let computed = crc32(&message.data);
        if computed != message.crc32 {
            self.metrics.wire_checksum_errors.inc();
            return Err(ChunkError::WireChecksum { chunk, offset: message.offset, sent: message.crc32, computed });
        }
        // Forward first, so the next replica writes while this one does.
        if let Some(forwarder) = forwarder.as_mut() {
            let copy = WriteChunkRequest {
                header: downstream_header.take(),
                offset: message.offset,
                data: message.data.clone(),
                crc32: message.crc32,
            };
            forwarder.send(copy).await?;
        }
        Ok((message.offset, message.data))
    }

    /// Applies a unary chain operation here, then forwards it to the rest of the chain.
    async fn forward_unary<T, F, Fut>(&self, chain: &[String], call: F) -> Result<Option<T>, ChunkError>
    where
        F: FnOnce(
            cairn_proto::chunk::chunk_service_client::ChunkServiceClient<tonic::transport::Channel>,
            Vec<String>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        if chain.len() > CHAIN_REPLICAS_MAX {
            return Err(invalid(&format!("chain of {} replicas exceeds {CHAIN_REPLICAS_MAX}", chain.len())));
        }
        let Some((next, rest)) = chain.split_first() else { return Ok(None) };
        let client = self.peers.client(next)?;
        match tokio::time::timeout(PEER_RPC_TIMEOUT, call(client, rest.to_vec())).await {
            Ok(Ok(response)) => Ok(Some(response.into_inner())),
            Ok(Err(status)) => Err(replica_failure(next, &status)),
            Err(_) => Err(ChunkError::ReplicaFailed {
                replica: next.clone(),
                message: format!("no answer within {PEER_RPC_TIMEOUT:?}"),
            }),
        }
    }

    async fn copy_from_peer(&self, request: CopyChunkFromPeerRequest) -> Result<CopyChunkFromPeerResponse, ChunkError> {
        let _slot = self.copy_slots.acquire().await.map_err(|_| ChunkError::ShuttingDown)?;
        let chunk = ChunkId(request.chunk_id);
        let peer = request.source.clone();
        let peer_error = |message: String| ChunkError::Peer { peer: peer.clone(), message };
        let mut source = self.peers.client(&request.source)?;
        let stat = tokio::time::timeout(
            PEER_RPC_TIMEOUT,
            source.stat_chunk(StatChunkRequest { chunk_id: chunk.0, digest: true }),
        )
        .await
        .map_err(|_| peer_error("stat timed out".into()))?
        .map_err(|s| peer_error(format!("stat: {} ({:?})", s.message(), s.code())))?
        .into_inner();
        if stat.version != request.version {
            return Err(peer_error(format!(
                "holds version {} of chunk {chunk}, not {}",
                stat.version, request.version
            )));
        }
        let expected: [u8; 32] =
            stat.blake3.as_slice().try_into().map_err(|_| peer_error("stat returned no blake3 digest".into()))?;

        let engine = self.engine.clone();
        let chunk_size = stat.chunk_size_bytes;
        let mut installer = blocking(move || engine.begin_install(chunk, chunk_size)).await?;
        let read =
            ReadChunkRequest { chunk_id: chunk.0, version: request.version, offset: 0, length: stat.length_bytes };
        let mut stream = source
            .read_chunk(read)
            .await
            .map_err(|s| peer_error(format!("read: {} ({:?})", s.message(), s.code())))?
            .into_inner();
        let mut hasher = blake3::Hasher::new();
        while let Some(message) =
            stream.message().await.map_err(|s| peer_error(format!("read: {} ({:?})", s.message(), s.code())))?
        {
            if message.offset != installer.received_bytes() {
                return Err(peer_error(format!(
                    "sent offset {} where {} was expected",
                    message.offset,
                    installer.received_bytes()
                )));
            }
            let computed = crc32(&message.data);
            if computed != message.crc32 {
                return Err(ChunkError::WireChecksum { chunk, offset: message.offset, sent: message.crc32, computed });
            }
            hasher.update(&message.data);
            installer = blocking(move || {
                installer.push(&message.data)?;
                Ok(installer)
            })
            .await?;
        }
        let actual = *hasher.finalize().as_bytes();
        if installer.received_bytes() != stat.length_bytes || actual != expected {
            return Err(ChunkError::DigestMismatch {
                chunk,
                expected: format!("{} bytes, blake3 {}", stat.length_bytes, hex(&expected)),
                actual: format!("{} bytes, blake3 {}", installer.received_bytes(), hex(&actual)),
            });
        }
        let version = ChunkVersion(request.version);
        let meta = blocking(move || installer.finish(version)).await?;
        self.integrity.clear(chunk);
        self.metrics.copies.inc();
        tracing::info!(%chunk, %peer, version = meta.version.0, length_bytes = meta.length_bytes, "installed a chunk copied from a peer");
        Ok(CopyChunkFromPeerResponse {
            length_bytes: meta.length_bytes,
            version: meta.version.0,
            blake3: actual.to_vec(),
        })
    }
}

fn invalid(message: &str) -> ChunkError {
    ChunkError::InvalidArgument(message.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next message of a write stream, or `None` at its end.
async fn next_message(inbound: &mut Streaming<WriteChunkRequest>) -> Result<Option<WriteChunkRequest>, ChunkError> {
    match tokio::time::timeout(WRITE_IDLE_TIMEOUT, inbound.message()).await {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(status)) => Err(ChunkError::UpstreamFailed(status.message().to_owned())),
        Err(_) => Err(ChunkError::Timeout { what: "waiting for the next write message".into() }),
    }
}

#[tonic::async_trait]
impl ChunkService for ChunkApi {
    async fn write_chunk(
        &self,
        request: Request<Streaming<WriteChunkRequest>>,
    ) -> Result<Response<WriteChunkResponse>, Status> {
        self.metrics.write_streams.inc();
        match self.write_stream(request.into_inner()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                self.metrics.write_failures.inc();
                Err(self.fail("write", 0, error))
            }
        }
    }

    type ReadChunkStream = futures::stream::BoxStream<'static, Result<ReadChunkResponse, Status>>;

    async fn read_chunk(&self, request: Request<ReadChunkRequest>) -> Result<Response<Self::ReadChunkStream>, Status> {
        let request = request.into_inner();
        self.metrics.read_requests.inc();
        let chunk = ChunkId(request.chunk_id);
        let version = (request.version != 0).then_some(ChunkVersion(request.version));
        // The first piece is read before answering, so that a missing chunk, a wrong version or
        // a bad range is the call's status rather than an error in the middle of the stream.
        let first_len = request.length.min(READ_MESSAGE_BYTES as u64);
        let first = self
            .first_piece(chunk, version, request.offset, first_len)
            .await
            .map_err(|e| self.fail("read", chunk.0, e))?;
        let meta = first.meta;
        let end = request.offset.checked_add(request.length).filter(|&end| end <= meta.chunk_size_bytes).ok_or_else(
            || {
                to_status(&ChunkError::OutOfRange {
                    chunk,
                    offset: request.offset,
                    len: request.length,
                    chunk_size_bytes: meta.chunk_size_bytes,
                })
            },
        )?;
        let end = end.min(meta.length_bytes);
        if first.data.len() as u64 >= end.saturating_sub(request.offset) || (first.data.len() as u64) < first_len {
            // The first piece is the whole answer (every small read): sent from here, without
            // the streaming task and its queue.
            self.metrics.read_bytes.inc_by(first.data.len() as u64);
            let message = (!first.data.is_empty()).then(|| {
                Ok(ReadChunkResponse {
                    offset: request.offset,
                    crc32: first.crc32,
                    data: first.data.into(),
                    version: meta.version.0,
                    length_bytes: meta.length_bytes,
                })
            });
            return Ok(Response::new(futures::stream::iter(message).boxed()));
        }

        let (tx, rx) = mpsc::channel(READ_QUEUE_MESSAGES_MAX);
        let api = self.clone();
        tokio::spawn(async move {
            // The pieces after the one being sent are already being read, so that the disk
            // does not wait for the network (nor the network for the disk).
            let mut ahead = std::collections::VecDeque::with_capacity(READ_AHEAD_PIECES);
            let mut next_read = request.offset + first_len;
            let (mut offset, mut wanted) = (request.offset, first_len);
            let mut piece = Ok(first);
            loop {
                let ReadPiece { meta, data, crc32 } = match piece {
                    Ok(piece) => piece,
                    Err(error) => {
                        let _ = tx.send(Err(api.fail("read", chunk.0, error))).await;
                        return;
                    }
                };
                if data.is_empty() {
                    return;
                }
                while ahead.len() < READ_AHEAD_PIECES && next_read < end {
                    let len = (end - next_read).min(READ_MESSAGE_BYTES as u64);
                    ahead.push_back((next_read, len, api.read_piece(chunk, version, next_read, len)));
                    next_read += len;
                }
                let len = data.len() as u64;
                api.metrics.read_bytes.inc_by(len);
                let message = ReadChunkResponse {
                    offset,
                    crc32,
                    data: data.into(),
                    version: meta.version.0,
                    length_bytes: meta.length_bytes,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return; // the reader went away
                }
                // A short piece means the chunk ended (or was cut) there: nothing follows it.
                if len < wanted {
                    return;
                }
                let Some((next_offset, next_len, next)) = ahead.pop_front() else { return };
                (offset, wanted) = (next_offset, next_len);
                piece = joined(next.await);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn truncate_chunk(
        &self,
        request: Request<TruncateChunkRequest>,
    ) -> Result<Response<TruncateChunkResponse>, Status> {
        let request = request.into_inner();
        let chunk = ChunkId(request.chunk_id);
        let result = async {
            let engine = self.engine.clone();
            let (version, length, sync) = (ChunkVersion(request.version), request.length_bytes, request.sync);
            let integrity = self.integrity.clone();
            let meta = blocking(move || {
                let meta = engine.truncate(chunk, version, length).inspect_err(|e| integrity.observe(e, "write"))?;
                if sync {
                    engine.sync()?;
                }
                Ok(meta)
            })
            .await?;
            let downstream = self
                .forward_unary(&request.chain, |mut client, chain| async move {
                    client.truncate_chunk(TruncateChunkRequest { chain, ..request }).await
                })
                .await?;
            Ok(TruncateChunkResponse {
                length_bytes: meta.length_bytes,
                replicas: 1 + downstream.map_or(0, |r| r.replicas),
            })
        }
        .await;
        result.map(Response::new).map_err(|e| self.fail("truncate", chunk.0, e))
    }

    async fn delete_chunk(
        &self,
        request: Request<DeleteChunkRequest>,
    ) -> Result<Response<DeleteChunkResponse>, Status> {
        let request = request.into_inner();
        let chunk = ChunkId(request.chunk_id);
        let result = async {
            let engine = self.engine.clone();
            let version = (request.version != 0).then_some(ChunkVersion(request.version));
            let sync = request.sync;
            let existed = blocking(move || {
                let existed = engine.delete(chunk, version)?;
                if sync {
                    engine.sync()?;
                }
                Ok(existed)
            })
            .await?;
            self.integrity.clear(chunk);
            let downstream = self
                .forward_unary(&request.chain, |mut client, chain| async move {
                    client.delete_chunk(DeleteChunkRequest { chain, ..request }).await
                })
                .await?;
            Ok(DeleteChunkResponse { existed, replicas: 1 + downstream.map_or(0, |r| r.replicas) })
        }
        .await;
        result.map(Response::new).map_err(|e| self.fail("delete", chunk.0, e))
    }

    async fn stat_chunk(&self, request: Request<StatChunkRequest>) -> Result<Response<StatChunkResponse>, Status> {
        let request = request.into_inner();
        let chunk = ChunkId(request.chunk_id);
        let (engine, integrity) = (self.engine.clone(), self.integrity.clone());
        let stat = blocking(move || engine.stat(chunk, request.digest).inspect_err(|e| integrity.observe(e, "stat")))
            .await
            .map_err(|e| self.fail("stat", chunk.0, e))?;
        Ok(Response::new(StatChunkResponse {
            chunk_id: chunk.0,
            version: stat.meta.version.0,
            length_bytes: stat.meta.length_bytes,
            chunk_size_bytes: stat.meta.chunk_size_bytes,
            block_size_bytes: stat.meta.block_size_bytes,
            blake3: stat.blake3.map(|d| d.to_vec()).unwrap_or_default(),
            corrupt: stat.meta.corrupt,
        }))
    }

    async fn list_chunks(&self, request: Request<ListChunksRequest>) -> Result<Response<ListChunksResponse>, Status> {
        let request = request.into_inner();
        let engine = self.engine.clone();
        let (page, more) = blocking(move || engine.list(ChunkId(request.start_after), request.limit))
            .await
            .map_err(|e| self.fail("list", 0, e))?;
        let chunks = page
            .into_iter()
            .map(|(id, meta)| ChunkInfo {
                chunk_id: id.0,
                version: meta.version.0,
                length_bytes: meta.length_bytes,
                corrupt: meta.corrupt,
            })
            .collect();
        Ok(Response::new(ListChunksResponse { chunks, more }))
    }

    async fn update_version(
        &self,
        request: Request<UpdateVersionRequest>,
    ) -> Result<Response<UpdateVersionResponse>, Status> {
        let request = request.into_inner();
        let chunk = ChunkId(request.chunk_id);
        let engine = self.engine.clone();
        let meta = blocking(move || {
            let meta = engine.update_version(
                chunk,
                ChunkVersion(request.expected_version),
                ChunkVersion(request.new_version),
            )?;
            engine.sync()?;
            Ok(meta)
        })
        .await
        .map_err(|e| self.fail("update_version", chunk.0, e))?;
        Ok(Response::new(UpdateVersionResponse { version: meta.version.0 }))
    }

    async fn copy_chunk_from_peer(
        &self,
        request: Request<CopyChunkFromPeerRequest>,
    ) -> Result<Response<CopyChunkFromPeerResponse>, Status> {
        let request = request.into_inner();
        let chunk_id = request.chunk_id;
        match tokio::time::timeout(COPY_TIMEOUT, self.copy_from_peer(request)).await {
            Ok(Ok(response)) => Ok(Response::new(response)),
            Ok(Err(error)) => Err(self.fail("copy", chunk_id, error)),
            Err(_) => Err(self.fail("copy", chunk_id, ChunkError::Timeout { what: "copy from peer".into() })),
        }
    }
}
