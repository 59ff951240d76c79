//! The one table mapping domain errors to gRPC status codes, with the metadata a caller acts
//! on (see chunk.proto: `cairn-failed-replica`, `cairn-chunk-id`, `cairn-block-index`).

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::client::{BLOCK_INDEX_KEY, CHUNK_ID_KEY, FAILED_REPLICA_KEY};
use crate::error::ChunkError;
use crate::storage::StorageError;

/// The status code of each error.
pub fn code(error: &ChunkError) -> Code {
    match error {
        ChunkError::NotFound { .. } => Code::NotFound,
        ChunkError::Busy { .. } => Code::Unavailable,
        ChunkError::StaleVersion { .. } | ChunkError::StaleReplica { .. } => Code::FailedPrecondition,
        ChunkError::OutOfRange { .. } => Code::OutOfRange,
        ChunkError::TooLarge { .. } | ChunkError::InvalidArgument(_) | ChunkError::Geometry(_) => Code::InvalidArgument,
        ChunkError::WireChecksum { .. } => Code::InvalidArgument,
        ChunkError::Corrupt { .. } | ChunkError::DigestMismatch { .. } => Code::DataLoss,
        ChunkError::NoSpace { .. }
        | ChunkError::ReplicaNoSpace { .. }
        | ChunkError::Storage(StorageError::DiskFull(_)) => Code::ResourceExhausted,
        ChunkError::ReplicaFailed { .. } | ChunkError::Peer { .. } => Code::Unavailable,
        ChunkError::UpstreamFailed(_) => Code::Cancelled,
        ChunkError::Timeout { .. } => Code::DeadlineExceeded,
        ChunkError::ShuttingDown => Code::Unavailable,
        ChunkError::Storage(_) | ChunkError::Internal(_) => Code::Internal,
    }
}

fn insert(status: &mut Status, key: &'static str, value: &str) {
    if let Ok(value) = MetadataValue::try_from(value) {
        status.metadata_mut().insert(key, value);
    }
}

/// The status a handler returns for `error`.
pub fn to_status(error: &ChunkError) -> Status {
    let mut status = Status::new(code(error), error.to_string());
    match error {
        ChunkError::ReplicaFailed { replica, .. } | ChunkError::ReplicaNoSpace { replica, .. } => {
            insert(&mut status, FAILED_REPLICA_KEY, replica)
        }
        ChunkError::Corrupt { chunk, block, .. } => {
            insert(&mut status, CHUNK_ID_KEY, &chunk.0.to_string());
            insert(&mut status, BLOCK_INDEX_KEY, &block.to_string());
        }
        ChunkError::NotFound { chunk }
        | ChunkError::StaleVersion { chunk, .. }
        | ChunkError::StaleReplica { chunk, .. }
        | ChunkError::DigestMismatch { chunk, .. } => insert(&mut status, CHUNK_ID_KEY, &chunk.0.to_string()),
        _ => {}
    }
    status
}

impl From<ChunkError> for Status {
    fn from(error: ChunkError) -> Status {
        to_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockCheckError;
    use crate::client::{corrupt_block, failed_replica, is_checksum_error};
    use crate::ids::{ChunkId, ChunkVersion};

    #[test]
    fn corruption_carries_chunk_and_block() {
        let error = ChunkError::Corrupt {
            chunk: ChunkId(42),
            block: 3,
            source: BlockCheckError::Mismatch { stored: 1, computed: 2 },
        };
        let status = to_status(&error);
        assert_eq!(status.code(), Code::DataLoss);
        assert!(is_checksum_error(&status));
        assert_eq!(corrupt_block(&status), Some(3));
        assert!(status.message().contains("block 3"), "{}", status.message());
    }

    #[test]
    fn replica_failures_name_the_replica() {
        let status =
            to_status(&ChunkError::ReplicaFailed { replica: "127.0.0.1:9".into(), message: "connection reset".into() });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(failed_replica(&status).as_deref(), Some("127.0.0.1:9"));
        assert!(status.message().contains("127.0.0.1:9"));
    }

    #[test]
    fn version_errors_are_failed_preconditions() {
        let stale = ChunkError::StaleVersion { chunk: ChunkId(1), requested: ChunkVersion(1), stored: ChunkVersion(2) };
        assert_eq!(to_status(&stale).code(), Code::FailedPrecondition);
        assert!(to_status(&stale).message().starts_with("stale version"));
        assert_eq!(
            code(&ChunkError::OutOfRange { chunk: ChunkId(1), offset: 0, len: 1, chunk_size_bytes: 0 }),
            Code::OutOfRange
        );
        assert_eq!(code(&ChunkError::NoSpace { needed_bytes: 1, free_bytes: 0 }), Code::ResourceExhausted);
        assert_eq!(code(&ChunkError::Storage(StorageError::DiskFull("ENOSPC".into()))), Code::ResourceExhausted);
        assert_eq!(code(&ChunkError::Storage(StorageError::Engine("EIO".into()))), Code::Internal);
    }
}
