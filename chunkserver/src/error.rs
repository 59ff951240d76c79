//! The chunkserver's domain errors. The gRPC layer maps them to status codes in one table
//! (`api/status.rs`); nothing below the API sees `tonic::Status`.

use crate::block::{BlockCheckError, GeometryError};
use crate::ids::{ChunkId, ChunkVersion};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {chunk} not found")]
    NotFound { chunk: ChunkId },

    #[error("chunk {chunk} is being installed from a peer")]
    Busy { chunk: ChunkId },

    /// The request carries an older version than this replica holds: the writer is stale.
    #[error("stale version: chunk {chunk} is at version {stored} here, the request has {requested}")]
    StaleVersion { chunk: ChunkId, requested: ChunkVersion, stored: ChunkVersion },

    /// This replica holds an older version than the request: this replica is stale.
    #[error("stale replica: chunk {chunk} is at version {stored} here, the request has {requested}")]
    StaleReplica { chunk: ChunkId, requested: ChunkVersion, stored: ChunkVersion },

    #[error("range [{offset}, {offset}+{len}) lies outside chunk {chunk} of {chunk_size_bytes} bytes")]
    OutOfRange { chunk: ChunkId, offset: u64, len: u64, chunk_size_bytes: u64 },

    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },

    #[error("CRC mismatch on the wire for chunk {chunk} at offset {offset}: sent {sent:08x}, received data has {computed:08x}")]
    WireChecksum { chunk: ChunkId, offset: u64, sent: u32, computed: u32 },

    #[error("checksum error in chunk {chunk} block {block}: {source}")]
    Corrupt {
        chunk: ChunkId,
        block: u32,
        #[source]
        source: BlockCheckError,
    },

    #[error("digest mismatch for chunk {chunk}: expected {expected}, got {actual}")]
    DigestMismatch { chunk: ChunkId, expected: String, actual: String },

    #[error("invalid geometry: {0}")]
    Geometry(#[from] GeometryError),

    #[error("invalid request: {0}")]
    InvalidArgument(String),

    #[error("not enough space: {needed_bytes} bytes needed, {free_bytes} free")]
    NoSpace { needed_bytes: u64, free_bytes: u64 },

    /// A replica further down the chain failed; `replica` names it (host:port).
    #[error("replica {replica} failed: {message}")]
    ReplicaFailed { replica: String, message: String },

    /// A replica further down the chain refused the write for lack of space. Not a failed
    /// replica: the caller reports ENOSPC instead of repairing the chain around it.
    #[error("replica {replica} is out of space: {message}")]
    ReplicaNoSpace { replica: String, message: String },

    /// The chunkserver a copy reads from failed.
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },

    #[error("upstream ended the write stream: {0}")]
    UpstreamFailed(String),

    #[error("{what} timed out")]
    Timeout { what: String },

    #[error("shutting down")]
    ShuttingDown,

    #[error(transparent)]
    Storage(#[from] StorageError),

    #[error("internal error: {0}")]
    Internal(String),
}

impl ChunkError {
    /// Whether the error says the stored data of this replica is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, ChunkError::Corrupt { .. })
    }
}
