//! Calling chunkservers: gRPC channels with Cairn's limits, whole-range writes and verified
//! reads, and reads that fail over from one replica to the next.
//!
//! This module depends only on the generated gRPC code, never on the storage engine, so the
//! replication chain, copy-from-peer, the benchmark and the tests all speak to chunkservers the
//! same way a filesystem client will.

use std::time::Duration;

use cairn_proto::chunk::chunk_service_client::ChunkServiceClient;
use cairn_proto::chunk::{
    CopyChunkFromPeerRequest, CopyChunkFromPeerResponse, DeleteChunkRequest, DeleteChunkResponse, ListChunksRequest,
    ListChunksResponse, ReadChunkRequest, StatChunkRequest, StatChunkResponse, TruncateChunkRequest,
    TruncateChunkResponse, UpdateVersionRequest, UpdateVersionResponse, WriteChunkRequest, WriteChunkResponse,
    WriteHeader,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::block::crc32;
use crate::limits::{
    CONNECT_TIMEOUT, GRPC_CONNECTION_WINDOW_BYTES, GRPC_FRAME_BYTES_MAX, GRPC_MESSAGE_BYTES_MAX,
    GRPC_STREAM_WINDOW_BYTES, WRITE_MESSAGE_BYTES_MAX,
};

/// Status metadata naming the replica (host:port) that failed in a chain operation.
pub const FAILED_REPLICA_KEY: &str = "cairn-failed-replica";
/// Status metadata naming the chunk a checksum or version error is about (decimal).
pub const CHUNK_ID_KEY: &str = "cairn-chunk-id";
/// Status metadata naming the block whose stored checksum did not match (decimal).
pub const BLOCK_INDEX_KEY: &str = "cairn-block-index";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid chunkserver address {addr:?}: {message}")]
    InvalidAddress { addr: String, message: String },
    #[error("{replica}: {} ({:?})", .status.message(), .status.code())]
    Status { replica: String, status: Status },
    #[error("{replica}: {message}")]
    BadResponse { replica: String, message: String },
    #[error("every replica failed: {}", .failures.iter().map(|(r, e)| format!("{r}: {e}")).collect::<Vec<_>>().join("; "))]
    AllReplicasFailed { failures: Vec<(String, String)> },
}

impl ClientError {
    /// The gRPC status, if the error came from a server.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// The replica a failed chain operation names, from the status metadata.
pub fn failed_replica(status: &Status) -> Option<String> {
    status.metadata().get(FAILED_REPLICA_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Whether the status reports stored data failing its checksum (the reader should fail over
/// and report the replica).
pub fn is_checksum_error(status: &Status) -> bool {
    status.code() == Code::DataLoss && status.metadata().get(BLOCK_INDEX_KEY).is_some()
}

/// The block index a checksum error names.
pub fn corrupt_block(status: &Status) -> Option<u32> {
    status.metadata().get(BLOCK_INDEX_KEY)?.to_str().ok()?.parse().ok()
}

/// A gRPC endpoint for a chunkserver at `addr` (host:port) with Cairn's transport settings:
/// large flow-control windows so 1 MiB messages stream without stalls, no Nagle delay.
pub fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let bad = |message: String| ClientError::InvalidAddress { addr: addr.to_owned(), message };
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(GRPC_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(GRPC_CONNECTION_WINDOW_BYTES)
        .max_frame_size(GRPC_FRAME_BYTES_MAX)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// A client for one chunkserver. Cheap to clone; connects lazily and reconnects by itself.
#[derive(Debug, Clone)]
pub struct ChunkClient {
    addr: String,
    inner: ChunkServiceClient<Channel>,
}

impl ChunkClient {
    pub fn connect_lazy(addr: &str) -> Result<ChunkClient, ClientError> {
        let channel = endpoint(addr)?.connect_lazy();
        Ok(ChunkClient { addr: addr.to_owned(), inner: raw_client(channel) })
    }

    /// host:port of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The generated client, for calls this type does not wrap.
    pub fn raw(&self) -> ChunkServiceClient<Channel> {
        self.inner.clone()
    }

    fn status(&self, status: Status) -> ClientError {
        ClientError::Status { replica: self.addr.clone(), status }
    }

    /// Writes `data` at `offset` through this server as the primary, in messages of
    /// `message_bytes`; `header.chain` lists the replicas after it.
    pub async fn write(
        &self,
        header: WriteHeader,
        offset: u64,
        data: &[u8],
        message_bytes: usize,
    ) -> Result<WriteChunkResponse, ClientError> {
        let message_bytes = message_bytes.clamp(1, WRITE_MESSAGE_BYTES_MAX);
        let messages = write_messages(header, offset, data, message_bytes);
        let response = self.inner.clone().write_chunk(futures::stream::iter(messages)).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }

    /// Reads `[offset, offset + len)` (cut at the chunk's length), verifying each message's CRC
    /// and that the messages are contiguous. `version` 0 reads any version.
    pub async fn read(&self, chunk_id: u64, version: u64, offset: u64, len: u64) -> Result<Vec<u8>, ClientError> {
        let request = ReadChunkRequest { chunk_id, version, offset, length: len };
        let mut stream = self.inner.clone().read_chunk(request).await.map_err(|s| self.status(s))?.into_inner();
        let mut out = Vec::with_capacity(len.min(WRITE_MESSAGE_BYTES_MAX as u64 * 32) as usize);
        while let Some(message) = stream.message().await.map_err(|s| self.status(s))? {
            let bad = |message: String| ClientError::BadResponse { replica: self.addr.clone(), message };
            if message.offset != offset + out.len() as u64 {
                return Err(bad(format!(
                    "message at offset {} where {} was expected",
                    message.offset,
                    offset + out.len() as u64
                )));
            }
            let computed = crc32(&message.data);
            if computed != message.crc32 {
                return Err(bad(format!(
                    "CRC mismatch on the wire at offset {}: sent {:08x}, received {computed:08x}",
                    message.offset, message.crc32
                )));
            }
            out.extend_from_slice(&message.data);
        }
        Ok(out)
    }

    pub async fn stat(&self, chunk_id: u64, digest: bool) -> Result<StatChunkResponse, ClientError> {
        let response = self.inner.clone().stat_chunk(StatChunkRequest { chunk_id, digest }).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }

    pub async fn truncate(&self, request: TruncateChunkRequest) -> Result<TruncateChunkResponse, ClientError> {
        let response = self.inner.clone().truncate_chunk(request).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }

    pub async fn delete(&self, request: DeleteChunkRequest) -> Result<DeleteChunkResponse, ClientError> {
        let response = self.inner.clone().delete_chunk(request).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }

    pub async fn list(&self, start_after: u64, limit: u32) -> Result<ListChunksResponse, ClientError> {
        let response = self.inner.clone().list_chunks(ListChunksRequest { start_after, limit }).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }

    pub async fn update_version(
        &self,
        chunk_id: u64,
        expected_version: u64,
        new_version: u64,
    ) -> Result<UpdateVersionResponse, ClientError> {
        let request = UpdateVersionRequest { chunk_id, expected_version, new_version };
        let response = self.inner.clone().update_version(request).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }

    /// Asks this server to pull `chunk_id` at `version` from `source` and install it.
    pub async fn copy_from_peer(
        &self,
        chunk_id: u64,
        version: u64,
        source: &str,
    ) -> Result<CopyChunkFromPeerResponse, ClientError> {
        let request = CopyChunkFromPeerRequest { chunk_id, version, source: source.to_owned() };
        let response = self.inner.clone().copy_chunk_from_peer(request).await;
        response.map(tonic::Response::into_inner).map_err(|s| self.status(s))
    }
}

/// The generated client with Cairn's message size limits.
pub fn raw_client(channel: Channel) -> ChunkServiceClient<Channel> {
    ChunkServiceClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
}

/// The messages of a write stream: the header rides on the first, with `stream_bytes` set to
/// the length of `data`; each carries its CRC.
pub fn write_messages(header: WriteHeader, offset: u64, data: &[u8], message_bytes: usize) -> Vec<WriteChunkRequest> {
    let mut messages: Vec<WriteChunkRequest> = data
        .chunks(message_bytes.max(1))
        .enumerate()
        .map(|(i, piece)| WriteChunkRequest {
            header: None,
            offset: offset + (i * message_bytes) as u64,
            data: bytes::Bytes::copy_from_slice(piece),
            crc32: crc32(piece),
        })
        .collect();
    if messages.is_empty() {
        messages.push(WriteChunkRequest { header: None, offset, data: bytes::Bytes::new(), crc32: crc32(&[]) });
    }
    // The stream's size is known here: a replica stores a large stream without its write-ahead
    // log (see `WriteHeader::stream_bytes`).
    messages[0].header = Some(WriteHeader { stream_bytes: data.len() as u64, ..header });
    messages
}

/// A read served by one of several replicas.
#[derive(Debug)]
pub struct FailoverRead {
    pub data: Vec<u8>,
    /// The replica that served the read.
    pub served_by: String,
    /// Replicas tried before it, with why they failed. A checksum failure here means that
    /// replica holds a corrupt copy and should be reported for repair.
    pub failures: Vec<(String, ClientError)>,
}

/// Reads from the first replica that answers correctly, in order: any error (unreachable,
/// checksum mismatch on disk or on the wire, stale version) moves on to the next replica.
pub async fn read_with_failover(
    replicas: &[ChunkClient],
    chunk_id: u64,
    version: u64,
    offset: u64,
    len: u64,
) -> Result<FailoverRead, ClientError> {
    let mut failures = Vec::new();
    for replica in replicas {
        match replica.read(chunk_id, version, offset, len).await {
            Ok(data) => return Ok(FailoverRead { data, served_by: replica.addr().to_owned(), failures }),
            Err(e) => {
                tracing::warn!(replica = replica.addr(), chunk_id, error = %e, "read failed; trying the next replica");
                failures.push((replica.addr().to_owned(), e));
            }
        }
    }
    Err(ClientError::AllReplicasFailed { failures: failures.into_iter().map(|(r, e)| (r, e.to_string())).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_messages_split_and_carry_crcs() {
        let header = WriteHeader { chunk_id: 1, ..Default::default() };
        let data: Vec<u8> = (0..10u8).collect();
        let messages = write_messages(header.clone(), 100, &data, 4);
        assert_eq!(messages.len(), 3);
        assert_eq!(messages.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![100, 104, 108]);
        assert!(messages[0].header.is_some() && messages[1].header.is_none());
        assert!(messages.iter().all(|m| m.crc32 == crc32(&m.data)));
        let empty = write_messages(header, 5, &[], 4);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].header.is_some());
    }

    #[test]
    fn status_metadata_helpers() {
        let mut status = Status::data_loss("checksum");
        assert!(!is_checksum_error(&status));
        status.metadata_mut().insert(BLOCK_INDEX_KEY, "12".parse().expect("ascii"));
        assert!(is_checksum_error(&status));
        assert_eq!(corrupt_block(&status), Some(12));
        let mut status = Status::unavailable("replica failed");
        status.metadata_mut().insert(FAILED_REPLICA_KEY, "127.0.0.1:5".parse().expect("ascii"));
        assert_eq!(failed_replica(&status).as_deref(), Some("127.0.0.1:5"));
    }
}
