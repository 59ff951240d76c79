//! Where chunks live: a small key-value contract ([`ChunkStore`]) with a RocksDB implementation
//! ([`RocksStore`]) and an in-memory one ([`MemoryStore`]) for fast tests.
//!
//! The contract knows two tables: chunk metadata keyed by chunk id, and stored block values
//! keyed by (chunk id, block index). It promises that a [`StoreBatch`] is applied atomically
//! (all of it or none of it, also across a crash) and that after [`ChunkStore::sync`] returns,
//! every batch committed before the call survives a machine crash. It never interprets block
//! values: checksums and block math belong to the engine (`engine.rs`).

mod memory;
mod rocks;

pub use memory::MemoryStore;
pub use rocks::{IoMode, RocksStore};

use std::ops::ControlFlow;

use crate::ids::{ChunkId, ChunkVersion};

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("open chunk store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("storage engine: {0}")]
    Engine(String),
    /// The disk filled under RocksDB (ENOSPC from a WAL append, a flush or a compaction).
    /// RocksDB then refuses every write, and resumes by itself, without a restart, once the
    /// disk has room for a memtable flush again.
    #[error(
        "disk full: {0}; writes resume by themselves once the disk has {free_needed_mib} MiB free",
        free_needed_mib = crate::limits::BLOCK_MEMTABLE_BYTES >> 20
    )]
    DiskFull(String),
    #[error("chunk {chunk} has unreadable metadata: {message}")]
    BadMeta { chunk: ChunkId, message: String },
    /// A read restricted to memory (`ReadTier::Memory`) needed the disk.
    #[error("not in memory")]
    NotInMemory,
}

/// Where a read may look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTier {
    /// Memory, then the disk.
    Any,
    /// Memory only (memtables and caches); anything else is [`StorageError::NotInMemory`].
    /// Such a read never blocks on the disk, so it may run on an async worker.
    Memory,
}

/// What the store records about a chunk besides its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub version: ChunkVersion,
    /// Bytes `[0, length_bytes)` are the chunk's contents (holes read as zeros).
    pub length_bytes: u64,
    /// The chunk's maximum size, fixed at creation (64 or 128 MiB).
    pub chunk_size_bytes: u64,
    /// The block size this chunk was written with, fixed at creation.
    pub block_size_bytes: u32,
    /// A read or the scrubber found a block whose checksum does not match. Cleared only when
    /// the chunk is deleted or replaced by a copy from a peer.
    pub corrupt: bool,
    /// A copy from a peer is installing this chunk; it is invisible until the copy completes,
    /// and deleted at startup if the process died during the copy.
    pub installing: bool,
}

const META_FORMAT: u8 = 1;
const META_BYTES: usize = 1 + 8 + 8 + 8 + 4 + 1;

impl ChunkMeta {
    /// Fixed little-endian layout: format, version, length, chunk size, block size, flags.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_BYTES);
        out.push(META_FORMAT);
        out.extend_from_slice(&self.version.0.to_le_bytes());
        out.extend_from_slice(&self.length_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunk_size_bytes.to_le_bytes());
        out.extend_from_slice(&self.block_size_bytes.to_le_bytes());
        out.push(u8::from(self.corrupt) | (u8::from(self.installing) << 1));
        out
    }

    pub fn decode(chunk: ChunkId, bytes: &[u8]) -> Result<ChunkMeta, StorageError> {
        let bad = |message: String| StorageError::BadMeta { chunk, message };
        if bytes.len() != META_BYTES {
            return Err(bad(format!("{} bytes, expected {META_BYTES}", bytes.len())));
        }
        if bytes[0] != META_FORMAT {
            return Err(bad(format!("unknown format {}", bytes[0])));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let mut block = [0u8; 4];
        block.copy_from_slice(&bytes[25..29]);
        Ok(ChunkMeta {
            version: ChunkVersion(u64_at(1)),
            length_bytes: u64_at(9),
            chunk_size_bytes: u64_at(17),
            block_size_bytes: u32::from_le_bytes(block),
            corrupt: bytes[29] & 1 != 0,
            installing: bytes[29] & 2 != 0,
        })
    }
}

/// One change in a [`StoreBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    PutMeta(ChunkId, ChunkMeta),
    DeleteMeta(ChunkId),
    /// A stored block value (checksum and data, see `block.rs`).
    PutBlock(ChunkId, u32, Vec<u8>),
    DeleteBlock(ChunkId, u32),
}

/// Whether a [`StoreBatch`] goes through the store's write-ahead log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Logging {
    /// Written to the log at commit: it survives a killed process, and a machine crash once
    /// [`ChunkStore::sync`] has run.
    #[default]
    Logged,
    /// Kept in memory until the store writes its data files: each byte reaches the disk once,
    /// not twice (log, then data file), but a killed process loses it unless
    /// [`ChunkStore::persist`] ran after the commit. For bulk data that is persisted before
    /// it is acknowledged.
    Unlogged,
}

/// Changes applied atomically by [`ChunkStore::commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreBatch {
    pub ops: Vec<StoreOp>,
    pub logging: Logging,
}

impl StoreBatch {
    /// An empty batch committed with `logging`.
    pub fn with_logging(logging: Logging) -> StoreBatch {
        StoreBatch { ops: Vec::new(), logging }
    }
    pub fn put_meta(&mut self, chunk: ChunkId, meta: ChunkMeta) {
        self.ops.push(StoreOp::PutMeta(chunk, meta));
    }
    pub fn delete_meta(&mut self, chunk: ChunkId) {
        self.ops.push(StoreOp::DeleteMeta(chunk));
    }
    pub fn put_block(&mut self, chunk: ChunkId, index: u32, value: Vec<u8>) {
        self.ops.push(StoreOp::PutBlock(chunk, index, value));
    }
    pub fn delete_block(&mut self, chunk: ChunkId, index: u32) {
        self.ops.push(StoreOp::DeleteBlock(chunk, index));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// About how many bytes the batch takes once encoded for the engine (keys, values and a
    /// little framing per change).
    pub fn encoded_len_estimate(&self) -> usize {
        const FRAMING_BYTES: usize = 32;
        self.ops
            .iter()
            .map(|op| match op {
                StoreOp::PutMeta(..) => FRAMING_BYTES + 8 + META_BYTES,
                StoreOp::PutBlock(_, _, value) => FRAMING_BYTES + 12 + value.len(),
                StoreOp::DeleteMeta(_) | StoreOp::DeleteBlock(..) => FRAMING_BYTES + 12,
            })
            .sum()
    }
}

/// What [`ChunkStore::visit_blocks`] calls for each block: its index and its stored value, if
/// any; breaking stops the visit.
pub type BlockVisitor<'a> = dyn FnMut(u32, Option<&[u8]>) -> ControlFlow<()> + 'a;

/// The chunk tables. Implementations are synchronous; async callers use `spawn_blocking`.
pub trait ChunkStore: Send + Sync + 'static {
    /// A chunk's metadata, if the chunk exists.
    fn meta(&self, chunk: ChunkId) -> Result<Option<ChunkMeta>, StorageError> {
        self.meta_from(chunk, ReadTier::Any)
    }

    /// A chunk's metadata, read from `tier`.
    fn meta_from(&self, chunk: ChunkId, tier: ReadTier) -> Result<Option<ChunkMeta>, StorageError>;

    /// Up to `limit` chunks with ids greater than `start_after`, in id order.
    fn metas(&self, start_after: ChunkId, limit: usize) -> Result<Vec<(ChunkId, ChunkMeta)>, StorageError>;

    /// The stored value of a block, if stored.
    fn block(&self, chunk: ChunkId, index: u32) -> Result<Option<Vec<u8>>, StorageError>;

    /// Indices of a chunk's stored blocks, ascending.
    fn block_indices(&self, chunk: ChunkId) -> Result<Vec<u32>, StorageError>;

    /// Calls `visit(index, value)` for blocks `first .. first + count` in order (`None` for
    /// blocks not stored), lending each value from the engine's buffers rather than copying it;
    /// stops early when `visit` breaks.
    fn visit_blocks(
        &self,
        chunk: ChunkId,
        first: u32,
        count: u32,
        visit: &mut BlockVisitor<'_>,
    ) -> Result<(), StorageError> {
        self.visit_blocks_from(chunk, first, count, ReadTier::Any, visit)
    }

    /// [`ChunkStore::visit_blocks`], read from `tier`; with `ReadTier::Memory` nothing is
    /// visited unless every block is in memory.
    fn visit_blocks_from(
        &self,
        chunk: ChunkId,
        first: u32,
        count: u32,
        tier: ReadTier,
        visit: &mut BlockVisitor<'_>,
    ) -> Result<(), StorageError>;

    /// The stored values of blocks `first .. first + count` (one entry per block, `None` for
    /// blocks not stored).
    fn blocks(&self, chunk: ChunkId, first: u32, count: u32) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut out = Vec::with_capacity(count as usize);
        self.visit_blocks(chunk, first, count, &mut |_, value| {
            out.push(value.map(<[u8]>::to_vec));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Applies `batch` atomically.
    fn commit(&self, batch: StoreBatch) -> Result<(), StorageError>;

    /// Makes every committed logged batch durable against a machine crash.
    fn sync(&self) -> Result<(), StorageError>;

    /// Writes every committed batch, logged or not, to the store's data files and syncs them:
    /// from its return on, they survive a killed process and a machine crash. Costs a flush
    /// of the store's memory tables, so it is for bulk writes, not for each small one.
    fn persist(&self) -> Result<(), StorageError>;

    /// Starts writing what is committed so far to the data files, without waiting: a later
    /// [`ChunkStore::persist`] then has less left to write. Lets a long bulk stream's disk
    /// writes overlap its receiving.
    fn start_persist(&self) -> Result<(), StorageError>;

    /// Bytes the store occupies on disk (best effort; 0 if unknown).
    fn disk_bytes(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let meta = ChunkMeta {
            version: ChunkVersion(7),
            length_bytes: 12345,
            chunk_size_bytes: 64 << 20,
            block_size_bytes: 65536,
            corrupt: true,
            installing: false,
        };
        let installing = ChunkMeta { corrupt: false, installing: true, ..meta };
        assert_eq!(ChunkMeta::decode(ChunkId(1), &installing.encode()).expect("decode"), installing);
        assert_eq!(ChunkMeta::decode(ChunkId(1), &meta.encode()).expect("decode"), meta);
        assert!(ChunkMeta::decode(ChunkId(1), &[1, 2, 3]).is_err());
        let mut bad = meta.encode();
        bad[0] = 9;
        assert!(ChunkMeta::decode(ChunkId(1), &bad).is_err());
    }

    /// The contract, run against both implementations.
    pub(crate) fn conformance(store: &dyn ChunkStore) {
        let meta = |v: u64| ChunkMeta {
            version: ChunkVersion(v),
            length_bytes: 10,
            chunk_size_bytes: 64 << 20,
            block_size_bytes: 4096,
            corrupt: false,
            installing: false,
        };
        assert_eq!(store.meta(ChunkId(1)).expect("meta"), None);
        let mut batch = StoreBatch::default();
        batch.put_meta(ChunkId(2), meta(1));
        batch.put_meta(ChunkId(1), meta(2));
        batch.put_block(ChunkId(1), 0, b"a".to_vec());
        batch.put_block(ChunkId(1), 7, b"b".to_vec());
        batch.put_block(ChunkId(1), 256, b"c".to_vec());
        batch.put_block(ChunkId(3), 1, b"orphan".to_vec());
        batch.put_block(ChunkId(u64::MAX), u32::MAX, b"edge".to_vec());
        store.commit(batch).expect("commit");
        store.sync().expect("sync");
        assert_eq!(store.meta(ChunkId(1)).expect("meta"), Some(meta(2)));
        assert_eq!(store.block(ChunkId(1), 7).expect("block"), Some(b"b".to_vec()));
        assert_eq!(store.block(ChunkId(1), 8).expect("block"), None);
        assert_eq!(store.block_indices(ChunkId(1)).expect("indices"), vec![0, 7, 256]);
        assert_eq!(store.block_indices(ChunkId(2)).expect("indices"), Vec::<u32>::new());
        let metas = store.metas(ChunkId(0), 10).expect("metas");
        assert_eq!(metas.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), vec![1, 2]);
        let metas = store.metas(ChunkId(1), 10).expect("metas");
        assert_eq!(metas.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(store.metas(ChunkId(0), 1).expect("metas").len(), 1);
        assert_eq!(store.blocks(ChunkId(1), 6, 3).expect("blocks"), vec![None, Some(b"b".to_vec()), None]);
        assert_eq!(store.blocks(ChunkId(1), 0, 0).expect("blocks"), Vec::<Option<Vec<u8>>>::new());
        assert_eq!(store.block_indices(ChunkId(u64::MAX)).expect("indices"), vec![u32::MAX]);

        let mut batch = StoreBatch::default();
        batch.delete_block(ChunkId(1), 7);
        batch.delete_meta(ChunkId(2));
        store.commit(batch).expect("commit");
        assert_eq!(store.block_indices(ChunkId(1)).expect("indices"), vec![0, 256]);
        assert_eq!(store.meta(ChunkId(2)).expect("meta"), None);
    }
}
