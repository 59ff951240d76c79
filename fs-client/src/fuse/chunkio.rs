//! Talking to chunkservers for the data path, straight over the generated `cairn.chunk.v1`
//! client: chain writes to the primary (replicas[0]) with the rest as its chain, and reads with
//! every message's CRC verified, failing over to the next replica; large reads are striped over
//! the replicas.
//!
//! Channels are cached per address and reconnect by themselves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::chunk::chunk_service_client::ChunkServiceClient;
use cairn_proto::chunk::{ReadChunkRequest, WriteChunkRequest, WriteChunkResponse, WriteHeader};
use cairn_proto::meta::ChunkEntry;
use tonic::transport::{Channel, Endpoint};

use super::rope::Rope;
use crate::limits::{
    CHUNK_GRPC_MESSAGE_BYTES_MAX, CHUNK_RPC_TIMEOUT, FANOUT_WRITE_BYTES_MAX, MOUNT_CONNECT_TIMEOUT,
    READ_STRIPE_BYTES_MIN, WRITE_MESSAGE_BYTES,
};

/// Status metadata naming the replica that failed in a chain write.
pub const FAILED_REPLICA_KEY: &str = "cairn-failed-replica";

#[derive(Debug, thiserror::Error)]
pub enum ChunkIoError {
    /// A chain write failed; `failed` names the replica to report (the chunkserver's
    /// metadata, or the primary itself when it could not be reached).
    #[error("chain write through {primary} failed at {failed}: {message}")]
    Chain { primary: String, failed: String, message: String },
    /// A replica of the chain lacks the space for the write: ENOSPC, not a failed replica.
    #[error("chain write through {primary}: {replica} is out of space: {message}")]
    NoSpace { primary: String, replica: String, message: String },
    /// A replica holds another version of the chunk than the entry written with.
    #[error("stale chunk version: {message}")]
    Stale { message: String },
    #[error("chunk {chunk_id} has no replica")]
    NoReplica { chunk_id: u64 },
    /// Every replica answered NOT_FOUND: none has the chunk (yet, for a fresh one).
    #[error("no replica has chunk {chunk_id}")]
    Missing { chunk_id: u64 },
    /// Every replica failed a read; `corrupt` lists those that sent bad data.
    #[error("every replica of chunk {chunk_id} failed: {message}")]
    Read { chunk_id: u64, message: String, corrupt: Vec<String> },
    #[error("invalid chunkserver address {0:?}")]
    Address(String),
}

#[derive(Debug, Default)]
pub struct ChunkIo {
    clients: Mutex<HashMap<String, ChunkServiceClient<Channel>>>,
}

impl ChunkIo {
    fn client(&self, addr: &str) -> Result<ChunkServiceClient<Channel>, ChunkIoError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ChunkIoError::Address(addr.to_owned()))?
            .connect_timeout(MOUNT_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(8 * 1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let client = ChunkServiceClient::new(channel)
            .max_decoding_message_size(CHUNK_GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CHUNK_GRPC_MESSAGE_BYTES_MAX);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Writes `pieces` (offset in chunk, bytes) into the chunk on every replica and waits
    /// until every replica has applied them (durably with `sync`). No pieces with `sync` is a
    /// sync of the chain: one header-only message, and every replica fsyncs its store. Small
    /// writes go to every replica at once ([`FANOUT_WRITE_BYTES_MAX`]), larger ones through
    /// the chain from the primary; the outcome and its errors are the same either way.
    pub async fn write(
        &self,
        entry: &ChunkEntry,
        chunk_size_bytes: u64,
        pieces: &[(u64, Bytes)],
        sync: bool,
    ) -> Result<(), ChunkIoError> {
        let Some(primary) = entry.replicas.first() else {
            return Err(ChunkIoError::NoReplica { chunk_id: entry.chunk_id });
        };
        let total_bytes: usize = pieces.iter().map(|(_, data)| data.len()).sum();
        let header = WriteHeader {
            chunk_id: entry.chunk_id,
            version: entry.version,
            // A header-only write (a sync) must never create an empty chunk.
            create: entry.fresh && !pieces.is_empty(),
            chunk_size_bytes,
            chain: entry.replicas[1..].iter().map(|r| r.address.clone()).collect(),
            sync,
            // A large stream is stored around the replicas' write-ahead logs (and persisted
            // before the answer): its bytes reach each disk once.
            stream_bytes: total_bytes as u64,
        };
        let mut messages = Vec::new();
        for (offset, data) in pieces {
            for at in (0..data.len()).step_by(WRITE_MESSAGE_BYTES) {
                let part = data.slice(at..(at + WRITE_MESSAGE_BYTES).min(data.len()));
                messages.push(WriteChunkRequest {
                    header: None,
                    offset: offset + at as u64,
                    crc32: crc32fast::hash(&part),
                    data: part,
                });
            }
        }
        if messages.is_empty() {
            messages.push(WriteChunkRequest {
                header: None,
                offset: 0,
                data: Bytes::new(),
                crc32: crc32fast::hash(&[]),
            });
        }
        if entry.replicas.len() > 1 && total_bytes <= FANOUT_WRITE_BYTES_MAX {
            return self.write_fanout(entry, header, messages).await;
        }
        messages[0].header = Some(header);
        match self.send_write(&primary.address, messages).await? {
            Ok(_) => Ok(()),
            Err(status) => {
                // A replica further down the chain is named in the status metadata.
                let failed = status
                    .metadata()
                    .get(FAILED_REPLICA_KEY)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| primary.address.clone(), str::to_owned);
                write_outcome(&primary.address, vec![(failed, status)])
            }
        }
    }

    /// The same write sent to each replica on its own (an empty chain), all at once. The
    /// answers are judged as the chain's would be: a replica ahead of the entry's version
    /// means the entry is stale; else the first replica (in chain order) out of space, then
    /// the first that failed, is the one named.
    async fn write_fanout(
        &self,
        entry: &ChunkEntry,
        header: WriteHeader,
        messages: Vec<WriteChunkRequest>,
    ) -> Result<(), ChunkIoError> {
        let writes = entry.replicas.iter().map(|replica| {
            let mut messages = messages.clone();
            messages[0].header = Some(WriteHeader { chain: Vec::new(), ..header.clone() });
            self.send_write(&replica.address, messages)
        });
        let outcomes = futures::future::join_all(writes).await;
        let mut failures = Vec::new();
        for (replica, outcome) in entry.replicas.iter().zip(outcomes) {
            if let Err(status) = outcome? {
                failures.push((replica.address.clone(), status));
            }
        }
        write_outcome(&entry.replicas[0].address, failures)
    }

    /// One write stream to the chunkserver at `addr`, bounded by the chunk RPC timeout; the
    /// inner result is the chunkserver's answer.
    async fn send_write(
        &self,
        addr: &str,
        messages: Vec<WriteChunkRequest>,
    ) -> Result<Result<WriteChunkResponse, tonic::Status>, ChunkIoError> {
        let mut client = self.client(addr)?;
        let call = tokio::time::timeout(CHUNK_RPC_TIMEOUT, client.write_chunk(futures::stream::iter(messages)));
        Ok(call.await.map_or_else(
            |_| Err(tonic::Status::deadline_exceeded("chunk write timed out")),
            |answer| answer.map(tonic::Response::into_inner),
        ))
    }

    /// Reads `[offset, offset + len)` of the chunk. A large read is split into stripes read
    /// from different replicas at once (each replica's disk and CPU serve a part, like a RAID-1
    /// read), each stripe failing over to the other replicas on its own. The result may be
    /// shorter than `len` (the chunk's length cuts it); it holds the received messages
    /// themselves, not a copy.
    pub async fn read(&self, entry: &ChunkEntry, offset: u64, len: u64) -> Result<Rope, ChunkIoError> {
        let stripes = stripes(offset, len, entry.replicas.len());
        let reads = stripes.iter().enumerate().map(|(i, &(at, n))| self.read_failover(entry, at, n, i));
        let got = futures::future::try_join_all(reads).await?;
        let mut out = Rope::new();
        for ((_, asked), stripe) in stripes.iter().zip(got) {
            let short = (stripe.len() as u64) < *asked;
            out.append(stripe);
            // The chunk ends inside this stripe: whatever a later stripe saw was written after
            // this one was read, so the read ends here, as one sequential read would have.
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// Reads `len` bytes at `offset` from the first replica that answers with correct data,
    /// starting with replica `first` (modulo their number).
    async fn read_failover(
        &self,
        entry: &ChunkEntry,
        offset: u64,
        len: u64,
        first: usize,
    ) -> Result<Rope, ChunkIoError> {
        let mut errors = Vec::new();
        let mut corrupt = Vec::new();
        let mut missing = 0;
        let n = entry.replicas.len();
        for replica in entry.replicas.iter().cycle().skip(first % n.max(1)).take(n) {
            let attempt = tokio::time::timeout(CHUNK_RPC_TIMEOUT, self.read_one(&replica.address, entry, offset, len));
            match attempt.await.unwrap_or_else(|_| Err(("read timed out".to_owned(), false, false))) {
                Ok(read) => return Ok(read),
                Err((message, bad_data, not_found)) => {
                    missing += usize::from(not_found);
                    tracing::warn!(replica = %replica.address, chunk_id = entry.chunk_id, %message,
                        "chunk read failed; trying the next replica");
                    if bad_data {
                        corrupt.push(replica.address.clone());
                    }
                    errors.push(format!("{}: {message}", replica.address));
                }
            }
        }
        if entry.replicas.is_empty() {
            return Err(ChunkIoError::NoReplica { chunk_id: entry.chunk_id });
        }
        if missing == entry.replicas.len() {
            return Err(ChunkIoError::Missing { chunk_id: entry.chunk_id });
        }
        Err(ChunkIoError::Read { chunk_id: entry.chunk_id, message: errors.join("; "), corrupt })
    }

    /// One replica's read of `len` bytes at `offset` (only messages whose CRC verified are
    /// kept). The error says whether the replica sent bad data, and whether it does not have
    /// the chunk.
    async fn read_one(
        &self,
        addr: &str,
        entry: &ChunkEntry,
        offset: u64,
        len: u64,
    ) -> Result<Rope, (String, bool, bool)> {
        let client = self.client(addr).map_err(|e| (e.to_string(), false, false))?;
        let request = ReadChunkRequest { chunk_id: entry.chunk_id, version: entry.version, offset, length: len };
        let failed = |s: tonic::Status| (s.to_string(), is_corrupt(&s), s.code() == tonic::Code::NotFound);
        let mut stream = client.clone().read_chunk(request).await.map_err(failed)?.into_inner();
        let mut out = Rope::new();
        while let Some(message) = stream.message().await.map_err(failed)? {
            if message.offset != offset + out.len() as u64 {
                return Err((format!("message at offset {} out of order", message.offset), true, false));
            }
            if crc32fast::hash(&message.data) != message.crc32 {
                return Err((format!("CRC mismatch at offset {}", message.offset), true, false));
            }
            if (out.len() + message.data.len()) as u64 > len {
                return Err(("more data than asked for".to_owned(), true, false));
            }
            out.push(message.data);
        }
        Ok(out)
    }
}

/// The outcome of a write from the replicas that refused it (in chain order; through the
/// chain, the one its status names): a replica ahead of the writer's version makes the entry
/// stale (nothing failed); else the first replica out of space is ENOSPC; else the first that
/// failed is named.
fn write_outcome(primary: &str, failures: Vec<(String, tonic::Status)>) -> Result<(), ChunkIoError> {
    let writer_is_stale = |status: &tonic::Status| {
        // The chunkserver's StaleVersion; its StaleReplica ("stale replica: ...") means the
        // replica missed a version bump, a failed replica as in the chain.
        status.code() == tonic::Code::FailedPrecondition && !status.message().starts_with("stale replica")
    };
    if let Some((_, status)) = failures.iter().find(|(_, status)| writer_is_stale(status)) {
        return Err(ChunkIoError::Stale { message: status.message().to_owned() });
    }
    let primary = primary.to_owned();
    if let Some((replica, status)) = failures.iter().find(|(_, s)| s.code() == tonic::Code::ResourceExhausted) {
        return Err(ChunkIoError::NoSpace { primary, replica: replica.clone(), message: status.message().to_owned() });
    }
    match failures.into_iter().next() {
        None => Ok(()),
        Some((failed, status)) => {
            Err(ChunkIoError::Chain { primary, failed, message: format!("{:?}: {}", status.code(), status.message()) })
        }
    }
}

/// `[offset, offset + len)` cut into at most `replicas` stripes of whole read stripes
/// (READ_STRIPE_BYTES_MIN at least), in order; one stripe when the read is small.
fn stripes(offset: u64, len: u64, replicas: usize) -> Vec<(u64, u64)> {
    let count = (len / READ_STRIPE_BYTES_MIN).clamp(1, replicas.max(1) as u64);
    let size = len.div_ceil(count).div_ceil(READ_STRIPE_BYTES_MIN) * READ_STRIPE_BYTES_MIN;
    let mut out = Vec::new();
    let mut at = offset;
    while at < offset + len {
        let n = size.min(offset + len - at);
        out.push((at, n));
        at += n;
    }
    out
}

/// A stored block failed its checksum on the replica.
fn is_corrupt(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::DataLoss
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn write_failures_name_the_replica_to_report() {
        use tonic::Status;
        let failed = |list: &[(&str, Status)]| {
            write_outcome("p:1", list.iter().map(|(r, s)| (r.to_string(), s.clone())).collect())
        };
        assert!(failed(&[]).is_ok());
        // The writer's entry is behind a replica: refetch, nothing failed.
        let stale_writer =
            Status::failed_precondition("stale version: chunk 7 is at version 3 here, the request has 2");
        let down = Status::unavailable("connection refused");
        assert!(matches!(failed(&[("s:2", down.clone()), ("s:3", stale_writer)]), Err(ChunkIoError::Stale { .. })));
        // A replica behind the entry missed a version bump: it is the failed one.
        let stale_replica =
            Status::failed_precondition("stale replica: chunk 7 is at version 1 here, the request has 2");
        let e = failed(&[("s:3", stale_replica)]).expect_err("stale replica");
        assert!(
            matches!(&e, ChunkIoError::Chain { primary, failed, .. } if primary == "p:1" && failed == "s:3"),
            "{e}"
        );
        // Out of space wins over a failure, whatever the order; else the first failure is named.
        let full = Status::resource_exhausted("disk full");
        let e = failed(&[("p:1", down.clone()), ("s:2", full)]).expect_err("no space");
        assert!(matches!(&e, ChunkIoError::NoSpace { replica, .. } if replica == "s:2"), "{e}");
        let e = failed(&[("s:2", down.clone()), ("s:3", down)]).expect_err("failed");
        assert!(matches!(&e, ChunkIoError::Chain { failed, .. } if failed == "s:2"), "{e}");
    }

    #[test]
    fn large_reads_are_striped_over_the_replicas_in_order() {
        assert_eq!(stripes(0, 8 * MIB, 3), vec![(0, 3 * MIB), (3 * MIB, 3 * MIB), (6 * MIB, 2 * MIB)]);
        assert_eq!(stripes(5, 2 * MIB, 3), vec![(5, MIB), (5 + MIB, MIB)]);
        assert_eq!(stripes(7, MIB - 1, 3), vec![(7, MIB - 1)]);
        assert_eq!(stripes(0, 8 * MIB, 1), vec![(0, 8 * MIB)]);
        assert_eq!(stripes(0, 8 * MIB, 0), vec![(0, 8 * MIB)]);
        for (offset, len, replicas) in [(0, 1, 3), (3, 10 * MIB + 7, 3), (MIB, 64 * MIB, 2)] {
            let parts = stripes(offset, len, replicas);
            assert!(parts.len() <= replicas.max(1));
            assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), len);
            assert!(parts.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
    }
}
