//! [`ChunkStore`] in memory, for fast tests of everything above the storage layer. Batches are
//! atomic (one lock); `sync` does nothing because nothing survives the process anyway.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{BlockVisitor, ChunkMeta, ChunkStore, ReadTier, StorageError, StoreBatch, StoreOp};
use crate::ids::ChunkId;

#[derive(Debug, Default)]
struct Tables {
    metas: BTreeMap<ChunkId, ChunkMeta>,
    blocks: BTreeMap<(ChunkId, u32), Vec<u8>>,
}

/// Chunk tables in a `BTreeMap`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // Map operations do not panic midway, so a poisoned lock still guards consistent data.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Overwrites a stored block value as-is, bypassing every check (fault injection in tests).
    pub fn put_raw_block(&self, chunk: ChunkId, index: u32, value: Vec<u8>) {
        self.lock().blocks.insert((chunk, index), value);
    }
}

impl ChunkStore for MemoryStore {
    fn meta_from(&self, chunk: ChunkId, _tier: ReadTier) -> Result<Option<ChunkMeta>, StorageError> {
        Ok(self.lock().metas.get(&chunk).copied())
    }

    fn metas(&self, start_after: ChunkId, limit: usize) -> Result<Vec<(ChunkId, ChunkMeta)>, StorageError> {
        let tables = self.lock();
        Ok(tables
            .metas
            .range((std::ops::Bound::Excluded(start_after), std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn block(&self, chunk: ChunkId, index: u32) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().blocks.get(&(chunk, index)).cloned())
    }

    fn visit_blocks_from(
        &self,
        chunk: ChunkId,
        first: u32,
        count: u32,
        _tier: ReadTier,
        visit: &mut BlockVisitor<'_>,
    ) -> Result<(), StorageError> {
        let tables = self.lock();
        for index in (0..count).filter_map(|i| first.checked_add(i)) {
            if visit(index, tables.blocks.get(&(chunk, index)).map(Vec::as_slice)).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn block_indices(&self, chunk: ChunkId) -> Result<Vec<u32>, StorageError> {
        let tables = self.lock();
        Ok(tables.blocks.range((chunk, 0)..=(chunk, u32::MAX)).map(|((_, index), _)| *index).collect())
    }

    fn commit(&self, batch: StoreBatch) -> Result<(), StorageError> {
        let mut tables = self.lock();
        for op in batch.ops {
            match op {
                StoreOp::PutMeta(chunk, meta) => {
                    tables.metas.insert(chunk, meta);
                }
                StoreOp::DeleteMeta(chunk) => {
                    tables.metas.remove(&chunk);
                }
                StoreOp::PutBlock(chunk, index, value) => {
                    tables.blocks.insert((chunk, index), value);
                }
                StoreOp::DeleteBlock(chunk, index) => {
                    tables.blocks.remove(&(chunk, index));
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn persist(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn start_persist(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_conformance() {
        super::super::tests::conformance(&super::MemoryStore::new());
    }
}
