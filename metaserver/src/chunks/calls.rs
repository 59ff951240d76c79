//! The leader's calls to chunkservers (`cairn.chunk.v1.ChunkService`): one lazily connected
//! channel per address, every call under a deadline. Errors are the server's status (or a
//! made-up UNAVAILABLE / DEADLINE_EXCEEDED when it could not be reached in time).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_proto::chunk::chunk_service_client::ChunkServiceClient;
use cairn_proto::chunk::{
    CopyChunkFromPeerRequest, DeleteChunkRequest, ListChunksRequest, ListChunksResponse, StatChunkRequest,
    TruncateChunkRequest, UpdateVersionRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::limits::{CHUNK_CALL_TIMEOUT, CHUNK_CHANNELS_MAX, CHUNK_CONNECT_TIMEOUT, CHUNK_COPY_TIMEOUT};
use crate::namespace::ChunkId;

/// A chunk's version and length on one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStat {
    pub version: u64,
    pub length_bytes: u64,
}

/// Channels to chunkservers, by address.
#[derive(Default)]
pub struct ChunkCalls {
    clients: Mutex<HashMap<String, ChunkServiceClient<Channel>>>,
}

async fn deadline<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
    }
}

/// Whether a status says the replica does not have the chunk.
pub fn not_found(status: &Status) -> bool {
    status.code() == Code::NotFound
}

/// Whether a status says the server could not be reached (or did not answer in time), as
/// opposed to an answer of its own.
pub fn unreachable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

impl ChunkCalls {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self, addr: &str) -> Result<ChunkServiceClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("chunkserver address {addr:?}: {e}")))?
            .connect_timeout(CHUNK_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let client = ChunkServiceClient::new(endpoint.connect_lazy());
        if clients.len() >= CHUNK_CHANNELS_MAX {
            // Addresses of long-gone servers: start over rather than grow without bound.
            clients.clear();
        }
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    pub async fn stat(&self, addr: &str, chunk: ChunkId) -> Result<ReplicaStat, Status> {
        let mut c = self.client(addr)?;
        let r =
            deadline(CHUNK_CALL_TIMEOUT, c.stat_chunk(StatChunkRequest { chunk_id: chunk.0, digest: false })).await?;
        Ok(ReplicaStat { version: r.version, length_bytes: r.length_bytes })
    }

    /// Raises the replica's version from `expected` to `new` (succeeds if it already is `new`).
    pub async fn update_version(&self, addr: &str, chunk: ChunkId, expected: u64, new: u64) -> Result<(), Status> {
        let mut c = self.client(addr)?;
        let request = UpdateVersionRequest { chunk_id: chunk.0, expected_version: expected, new_version: new };
        deadline(CHUNK_CALL_TIMEOUT, c.update_version(request)).await.map(|_| ())
    }

    /// Cuts this replica alone (no chain) to `length_bytes`, durably.
    pub async fn truncate(&self, addr: &str, chunk: ChunkId, version: u64, length_bytes: u64) -> Result<(), Status> {
        let mut c = self.client(addr)?;
        let request = TruncateChunkRequest { chunk_id: chunk.0, version, length_bytes, chain: Vec::new(), sync: true };
        deadline(CHUNK_CALL_TIMEOUT, c.truncate_chunk(request)).await.map(|_| ())
    }

    /// Deletes this replica alone; `version` 0 deletes any version, else only up to `version`.
    /// Answers whether it existed.
    pub async fn delete(&self, addr: &str, chunk: ChunkId, version: u64) -> Result<bool, Status> {
        let mut c = self.client(addr)?;
        let request = DeleteChunkRequest { chunk_id: chunk.0, version, chain: Vec::new(), sync: false };
        deadline(CHUNK_CALL_TIMEOUT, c.delete_chunk(request)).await.map(|r| r.existed)
    }

    pub async fn list(&self, addr: &str, start_after: ChunkId, limit: u32) -> Result<ListChunksResponse, Status> {
        let mut c = self.client(addr)?;
        deadline(CHUNK_CALL_TIMEOUT, c.list_chunks(ListChunksRequest { start_after: start_after.0, limit })).await
    }

    /// Has the server at `target` pull the chunk at `version` from `source`.
    pub async fn copy(&self, target: &str, chunk: ChunkId, version: u64, source: &str) -> Result<(), Status> {
        let mut c = self.client(target)?;
        let request = CopyChunkFromPeerRequest { chunk_id: chunk.0, version, source: source.to_owned() };
        deadline(CHUNK_COPY_TIMEOUT, c.copy_chunk_from_peer(request)).await.map(|_| ())
    }
}
