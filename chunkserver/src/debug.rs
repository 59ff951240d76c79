//! Fault injection for tests and operators: damaging a stored block on purpose, through
//! RocksDB, on a *stopped* chunkserver (the database is locked while the server runs). Used by
//! the corruption tests via `cairn-chunkserver corrupt-block`.

use std::path::Path;

use crate::block::BLOCK_CRC_BYTES;
use crate::error::ChunkError;
use crate::ids::ChunkId;
use crate::node::db_path;
use crate::storage::{ChunkStore, IoMode, RocksStore};

/// Flips every bit of one data byte in the middle of block `block` of `chunk`, leaving its
/// stored checksum as it was, so the next verification of that block fails.
pub fn corrupt_block(data_dir: &Path, chunk: ChunkId, block: u32) -> Result<(), ChunkError> {
    let store = RocksStore::open(&db_path(data_dir), IoMode::Buffered, 0)?;
    let mut value = store
        .block(chunk, block)?
        .ok_or_else(|| ChunkError::InvalidArgument(format!("chunk {chunk} has no stored block {block}")))?;
    if value.len() <= BLOCK_CRC_BYTES {
        return Err(ChunkError::InvalidArgument(format!("block {block} of chunk {chunk} holds no data")));
    }
    let at = BLOCK_CRC_BYTES + (value.len() - BLOCK_CRC_BYTES) / 2;
    value[at] ^= 0xff;
    store.put_raw_block(chunk, block, &value)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{ChunkEngine, WriteTarget};
    use crate::ids::ChunkVersion;
    use crate::space::Space;

    #[test]
    fn corrupted_block_fails_verification_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = WriteTarget { chunk: ChunkId(5), version: ChunkVersion(1), create: true, chunk_size_bytes: 0 };
        {
            let store = Arc::new(RocksStore::open(&db_path(dir.path()), IoMode::Direct, 0).expect("open"));
            let engine = ChunkEngine::open(store, Arc::new(Space::fixed(u64::MAX / 2, 0, None)), 4096).expect("engine");
            engine.write(&target, 0, &vec![7u8; 3 * 4096]).expect("write");
            engine.sync().expect("sync");
        }
        corrupt_block(dir.path(), ChunkId(5), 1).expect("corrupt");
        assert!(corrupt_block(dir.path(), ChunkId(5), 9).is_err());
        let store = Arc::new(RocksStore::open(&db_path(dir.path()), IoMode::Direct, 0).expect("open"));
        let engine = ChunkEngine::open(store, Arc::new(Space::fixed(u64::MAX / 2, 0, None)), 4096).expect("engine");
        assert!(engine.read(ChunkId(5), None, 0, 4096).is_ok());
        assert!(matches!(engine.read(ChunkId(5), None, 0, 3 * 4096), Err(ChunkError::Corrupt { block: 1, .. })));
    }
}
