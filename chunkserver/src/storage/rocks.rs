//! [`ChunkStore`] on RocksDB.
//!
//! Two column families: `chunk_meta` (chunk id → [`ChunkMeta`]) and `chunk_blocks`
//! ((chunk id, block index) → stored block value). Keys are big-endian so that RocksDB's order
//! is chunk order, then block order. `chunk_blocks` uses RocksDB's integrated BlobDB: values of
//! at least `BLOB_MIN_BYTES` are written to blob files at flush time and only a small blob
//! index stays in the LSM tree, so compactions move keys, not 64 KiB values. Blob garbage
//! collection reclaims overwritten blocks during compaction.
//!
//! Durability: a logged batch goes through the write-ahead log (written on commit, so it
//! survives a killed process); `sync` fsyncs the WAL (survives a machine crash). An unlogged
//! batch (bulk data) skips the WAL and lives in the memtables until `persist` flushes them to
//! table and blob files: its bytes reach the disk once instead of twice. Flushes are atomic
//! across both column families, so a crash never keeps a chunk's blocks without the metadata
//! written with them, or the reverse.

use std::path::{Path, PathBuf};

use rocksdb::{
    Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB,
};

use super::{BlockVisitor, ChunkMeta, ChunkStore, Logging, ReadTier, StorageError, StoreBatch, StoreOp};
use crate::ids::ChunkId;
use crate::limits::{BLOB_FILE_BYTES, BLOB_MIN_BYTES, BLOCK_MEMTABLE_BYTES, CACHED_READ_BLOCKS_MAX};

const CF_META: &str = "chunk_meta";
const CF_BLOCKS: &str = "chunk_blocks";

/// How the store's files meet the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Blob and table files are written at flush and read with O_DIRECT; the WAL stays
    /// buffered (RocksDB has no direct WAL). On this project's 2-core VM the kernel's copies
    /// between the page cache and RocksDB's buffers were the largest CPU cost of the data path:
    /// a third of all CPU in a cold 1 MiB read, and as much again when flushing blob files. A
    /// chunkserver's page cache also rarely helps: the client's kernel caches what it reads, and
    /// three replicas on one host would cache every byte three times. Falls back to `Buffered`
    /// on file systems that refuse O_DIRECT (tmpfs before Linux 6.6, some overlays and network
    /// file systems).
    Direct,
    /// Everything through the page cache.
    Buffered,
}

/// The RocksDB database of one chunkserver.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    direct: bool,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.path).field("direct", &self.direct).finish()
    }
}

fn meta_key(chunk: ChunkId) -> [u8; 8] {
    chunk.0.to_be_bytes()
}

fn block_key(chunk: ChunkId, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&chunk.0.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn parse_block_key(key: &[u8]) -> Option<(ChunkId, u32)> {
    let chunk: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let index: [u8; 4] = key.get(8..12)?.try_into().ok()?;
    Some((ChunkId(u64::from_be_bytes(chunk)), u32::from_be_bytes(index)))
}

/// Reads of block values skip RocksDB's own checksums: every block value carries a CRC that the
/// engine verifies end to end on every read, so RocksDB's would be a second pass over the data.
/// Only reads of a few blocks (`CACHED_READ_BLOCKS_MAX`: small random reads) fill the block
/// value cache; a streaming read would evict them and gain nothing.
fn block_read_options(blocks: u32, tier: ReadTier) -> ReadOptions {
    let mut opts = tier_read_options(tier);
    opts.set_verify_checksums(false);
    opts.fill_cache(blocks <= CACHED_READ_BLOCKS_MAX);
    opts
}

/// Memory only is RocksDB's block-cache tier: memtables, the block cache and the blob cache.
fn tier_read_options(tier: ReadTier) -> ReadOptions {
    let mut opts = ReadOptions::default();
    if tier == ReadTier::Memory {
        opts.set_read_tier(rocksdb::ReadTier::BlockCache);
    }
    opts
}

/// Whether `dir`'s file system accepts an O_DIRECT write: some refuse the
/// open or the write, and RocksDB would then fail its first flush and turn read-only.
fn supports_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
    const ALIGN: usize = 4096;
    let probe = dir.join("DIRECT_IO_PROBE");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(&probe)
        .and_then(|file| {
            // O_DIRECT needs an aligned buffer; find an aligned window inside a larger one.
            let buffer = vec![0u8; 2 * ALIGN];
            let start = buffer.as_ptr().align_offset(ALIGN);
            file.write_all_at(&buffer[start..start + ALIGN], 0)
        });
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "file system refuses O_DIRECT; chunk data goes through the page cache");
            false
        }
    }
}

fn engine(e: rocksdb::Error) -> StorageError {
    if e.kind() == rocksdb::ErrorKind::Incomplete {
        // Only a read limited to the block cache answers this (RocksDB's kBlockCacheTier).
        return StorageError::NotInMemory;
    }
    engine_error(e.into_string())
}

/// RocksDB reports ENOSPC as an IO error with the NoSpace subcode; the binding exposes only the
/// code, so the subcode is read from the text (the C library's message, which RocksDB quotes).
/// Once a write failed that way, RocksDB answers every later write with the same background
/// error until it recovers, so those are recognised too.
fn engine_error(message: String) -> StorageError {
    if message.contains("No space left on device") {
        StorageError::DiskFull(message)
    } else {
        StorageError::Engine(message)
    }
}

impl RocksStore {
    /// Opens (creating if needed) the database in `path`.
    /// `cache_bytes` bounds the cache of block values read by small reads (0: none); with
    /// `IoMode::Direct` it is the only cache of chunk data on this server.
    pub fn open(path: &Path, io: IoMode, cache_bytes: usize) -> Result<RocksStore, StorageError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Open { path: path.display().to_string(), message: e.to_string() })?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(4);
        // No `bytes_per_sync` / `wal_bytes_per_sync`: on this machine the periodic
        // sync_file_range they issue cut sequential writes from ~420 to ~170 MiB/s
        // (bench-blocks, 256 KiB blocks); durability comes from the explicit WAL fsync anyway.
        // Chunks are mostly read sequentially, and their blocks sit in order in the blob files:
        // let the kernel read ahead instead of advising random access (RocksDB's default).
        db_opts.set_advise_random_on_open(false);
        // Chunk data bypasses the page cache (see `IoMode::Direct`).
        let direct = io == IoMode::Direct && supports_direct_io(path);
        db_opts.set_use_direct_io_for_flush_and_compaction(direct);
        db_opts.set_use_direct_reads(direct);
        // Bounds the WAL (and recovery time): older memtables are flushed when exceeded.
        db_opts.set_max_total_wal_size(4 * BLOCK_MEMTABLE_BYTES as u64);
        // Unlogged batches are recovered only from flushed files: every flush (the automatic
        // ones included) must write a batch's blocks and its chunk metadata together.
        db_opts.set_atomic_flush(true);

        let mut meta_opts = Options::default();
        meta_opts.set_compression_type(DBCompressionType::Lz4);

        let mut block_opts = Options::default();
        block_opts.set_compression_type(DBCompressionType::Lz4);
        block_opts.set_write_buffer_size(BLOCK_MEMTABLE_BYTES);
        block_opts.set_max_write_buffer_number(4);
        block_opts.set_enable_blob_files(true);
        block_opts.set_min_blob_size(BLOB_MIN_BYTES);
        block_opts.set_blob_file_size(BLOB_FILE_BYTES);
        // File data is mostly incompressible or already compressed by the application.
        block_opts.set_blob_compression_type(DBCompressionType::None);
        block_opts.set_enable_blob_gc(true);
        block_opts.set_blob_gc_age_cutoff(0.25);
        if cache_bytes > 0 {
            block_opts.set_blob_cache(&Cache::new_lru_cache(cache_bytes));
        }

        let cfs =
            vec![ColumnFamilyDescriptor::new(CF_META, meta_opts), ColumnFamilyDescriptor::new(CF_BLOCKS, block_opts)];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| StorageError::Open { path: path.display().to_string(), message: e.into_string() })?;
        Ok(RocksStore { db, path: path.to_path_buf(), direct })
    }

    /// Whether chunk data bypasses the page cache (`IoMode::Direct` on a file system that
    /// allows it).
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| StorageError::Engine(format!("column family {name} missing")))
    }

    /// Flushes both column families' memtables (atomically, see `open`), waiting for the
    /// flush or only scheduling it.
    fn flush(&self, wait: bool) -> Result<(), StorageError> {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(wait);
        self.db.flush_cfs_opt(&[self.cf(CF_META)?, self.cf(CF_BLOCKS)?], &opts).map_err(engine)
    }

    /// Overwrites a stored block value as-is, bypassing every check. For fault-injection tests
    /// only (see `debug.rs`).
    pub fn put_raw_block(&self, chunk: ChunkId, index: u32, value: &[u8]) -> Result<(), StorageError> {
        let cf = self.cf(CF_BLOCKS)?;
        self.db.put_cf(cf, block_key(chunk, index), value).map_err(engine)?;
        self.db.flush_wal(true).map_err(engine)
    }
}

impl ChunkStore for RocksStore {
    fn meta_from(&self, chunk: ChunkId, tier: ReadTier) -> Result<Option<ChunkMeta>, StorageError> {
        let cf = self.cf(CF_META)?;
        match self.db.get_pinned_cf_opt(cf, meta_key(chunk), &tier_read_options(tier)).map_err(engine)? {
            Some(bytes) => ChunkMeta::decode(chunk, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn metas(&self, start_after: ChunkId, limit: usize) -> Result<Vec<(ChunkId, ChunkMeta)>, StorageError> {
        let Some(first) = start_after.0.checked_add(1) else { return Ok(Vec::new()) };
        let cf = self.cf(CF_META)?;
        let start = first.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(engine)?;
            let id: [u8; 8] = key
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::Engine(format!("malformed meta key of {} bytes", key.len())))?;
            let chunk = ChunkId(u64::from_be_bytes(id));
            out.push((chunk, ChunkMeta::decode(chunk, &value)?));
        }
        Ok(out)
    }

    fn block(&self, chunk: ChunkId, index: u32) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = self.cf(CF_BLOCKS)?;
        self.db.get_cf_opt(cf, block_key(chunk, index), &block_read_options(1, ReadTier::Any)).map_err(engine)
    }

    fn visit_blocks_from(
        &self,
        chunk: ChunkId,
        first: u32,
        count: u32,
        tier: ReadTier,
        visit: &mut BlockVisitor<'_>,
    ) -> Result<(), StorageError> {
        let cf = self.cf(CF_BLOCKS)?;
        let indices: Vec<u32> = (0..count).filter_map(|i| first.checked_add(i)).collect();
        let keys: Vec<[u8; 12]> = indices.iter().map(|&index| block_key(chunk, index)).collect();
        let values = self.db.batched_multi_get_cf_opt(cf, &keys, true, &block_read_options(count, tier));
        if tier == ReadTier::Memory && values.iter().any(Result::is_err) {
            // Visit all or nothing: the caller reads the whole range again from the disk, which
            // also reports any other error.
            return Err(StorageError::NotInMemory);
        }
        for (index, value) in indices.into_iter().zip(values) {
            if visit(index, value.map_err(engine)?.as_deref()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn block_indices(&self, chunk: ChunkId) -> Result<Vec<u32>, StorageError> {
        let cf = self.cf(CF_BLOCKS)?;
        let start = block_key(chunk, 0);
        let mut opts = ReadOptions::default();
        if let Some(next) = chunk.0.checked_add(1) {
            opts.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item.map_err(engine)?;
            match parse_block_key(&key) {
                Some((c, index)) if c == chunk => out.push(index),
                _ => break,
            }
        }
        Ok(out)
    }

    fn commit(&self, batch: StoreBatch) -> Result<(), StorageError> {
        let meta = self.cf(CF_META)?;
        let blocks = self.cf(CF_BLOCKS)?;
        // Sized up front: a batch of 1 MiB of blocks otherwise grows its buffer by doubling,
        // copying everything it holds each time (perf: ~5% of a chain write's CPU).
        let mut wb = WriteBatch::with_capacity_bytes(batch.encoded_len_estimate());
        for op in batch.ops {
            match op {
                StoreOp::PutMeta(chunk, m) => wb.put_cf(meta, meta_key(chunk), m.encode()),
                StoreOp::DeleteMeta(chunk) => wb.delete_cf(meta, meta_key(chunk)),
                StoreOp::PutBlock(chunk, index, value) => wb.put_cf(blocks, block_key(chunk, index), value),
                StoreOp::DeleteBlock(chunk, index) => wb.delete_cf(blocks, block_key(chunk, index)),
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(batch.logging == Logging::Unlogged);
        self.db.write_opt(wb, &opts).map_err(engine)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(engine)
    }

    fn persist(&self) -> Result<(), StorageError> {
        self.flush(true)
    }

    fn start_persist(&self) -> Result<(), StorageError> {
        self.flush(false)
    }

    fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for name in [CF_META, CF_BLOCKS] {
            let Ok(cf) = self.cf(name) else { continue };
            for property in ["rocksdb.total-sst-files-size", "rocksdb.total-blob-file-size"] {
                total += self.db.property_int_value_cf(cf, property).ok().flatten().unwrap_or(0);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_CACHE_TEST_BYTES: usize = 1 << 20;

    fn meta() -> ChunkMeta {
        ChunkMeta {
            version: crate::ids::ChunkVersion(3),
            length_bytes: 4 * 65_536,
            chunk_size_bytes: 64 << 20,
            block_size_bytes: 65_536,
            corrupt: false,
            installing: false,
        }
    }

    #[test]
    fn enospc_from_rocksdb_is_a_full_disk() {
        let wal = "IO error: No space left on device: While appending to file: /d/000008.log: No space left on device";
        assert!(matches!(engine_error(wal.into()), StorageError::DiskFull(m) if m == wal));
        let error = engine_error(wal.into()).to_string();
        assert!(error.starts_with("disk full: IO error"), "{error}");
        assert!(error.ends_with("once the disk has 64 MiB free"), "{error}");
        assert!(matches!(engine_error("IO error: Input/output error".into()), StorageError::Engine(_)));
    }

    #[test]
    fn rocks_store_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), IoMode::Direct, BLOCK_CACHE_TEST_BYTES).expect("open");
        super::super::tests::conformance(&store);
    }

    #[test]
    fn rocks_store_conformance_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), IoMode::Buffered, 0).expect("open");
        assert!(!store.direct_io());
        super::super::tests::conformance(&store);
    }

    /// A memory-only read answers from the memtable and from blocks a small read cached, and
    /// refuses (NotInMemory, visiting nothing) what only the blob files on disk hold.
    #[test]
    fn memory_reads_answer_only_what_memory_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), IoMode::Direct, BLOCK_CACHE_TEST_BYTES).expect("open");
        let value = |index: u32| vec![index as u8 ^ 0x3c; 65_540];
        let visit_from = |first: u32, count: u32| {
            let mut seen = Vec::new();
            let result = store.visit_blocks_from(ChunkId(5), first, count, ReadTier::Memory, &mut |index, v| {
                seen.push((index, v.map(<[u8]>::to_vec)));
                std::ops::ControlFlow::Continue(())
            });
            (result, seen)
        };
        let mut batch = StoreBatch::default();
        for index in 0..4 {
            batch.put_block(ChunkId(5), index, value(index));
        }
        batch.put_meta(ChunkId(5), meta());
        store.commit(batch).expect("commit");
        // In the memtable.
        let (result, seen) = visit_from(1, 2);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, vec![(1, Some(value(1))), (2, Some(value(2)))]);
        assert_eq!(store.meta_from(ChunkId(5), ReadTier::Memory).expect("meta"), Some(meta()));

        for cf in [CF_BLOCKS, CF_META] {
            store.db.flush_cf(store.cf(cf).expect("cf")).expect("flush");
        }
        // Flushed to a blob file and never read: only on disk.
        let (result, seen) = visit_from(1, 2);
        assert!(matches!(result, Err(StorageError::NotInMemory)), "{result:?}");
        assert!(seen.is_empty(), "visited {} blocks of a refused read", seen.len());
        // A small read from the disk caches its block; the other stays on disk.
        assert_eq!(store.blocks(ChunkId(5), 1, 1).expect("blocks"), vec![Some(value(1))]);
        let (result, seen) = visit_from(1, 1);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(seen, vec![(1, Some(value(1)))]);
        assert!(matches!(visit_from(1, 2).0, Err(StorageError::NotInMemory)));
        // A block never stored is known absent from memory (the filters and index are cached).
        let (result, seen) = visit_from(9, 1);
        assert!(result.is_ok() || matches!(result, Err(StorageError::NotInMemory)), "{result:?}");
        assert!(seen.is_empty() || seen == vec![(9, None)], "{seen:?}");
    }

    /// Blocks flushed to blob files (written with O_DIRECT where allowed) read back the same
    /// after a reopen, in either mode, through a multi-block read and through the cache.
    #[test]
    fn flushed_blocks_survive_reopen_in_both_io_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let value = |index: u32| vec![index as u8 ^ 0x5a; 65_540];
        {
            let store = RocksStore::open(dir.path(), IoMode::Direct, BLOCK_CACHE_TEST_BYTES).expect("open");
            assert!(store.direct_io(), "a temp dir on ext4 (or tmpfs since Linux 6.6) takes O_DIRECT");
            let mut batch = StoreBatch::default();
            for index in 0..20 {
                batch.put_block(ChunkId(9), index, value(index));
            }
            batch.put_block(ChunkId(9), 40, vec![7; 100]);
            store.commit(batch).expect("commit");
            store.sync().expect("sync");
            let cf = store.cf(CF_BLOCKS).expect("cf");
            store.db.flush_cf(cf).expect("flush");
        }
        for io in [IoMode::Direct, IoMode::Buffered, IoMode::Direct] {
            let store = RocksStore::open(dir.path(), io, BLOCK_CACHE_TEST_BYTES).expect("reopen");
            let read = store.blocks(ChunkId(9), 0, 21).expect("blocks");
            for (index, got) in read.iter().enumerate().take(20) {
                assert_eq!(got.as_deref(), Some(&value(index as u32)[..]), "block {index} in {io:?}");
            }
            assert_eq!(read[20], None);
            for _ in 0..2 {
                assert_eq!(store.block(ChunkId(9), 3).expect("block"), Some(value(3)));
                assert_eq!(store.blocks(ChunkId(9), 40, 1).expect("blocks"), vec![Some(vec![7; 100])]);
            }
        }
    }

    /// What a killed process leaves on disk: a copy of the store's files taken while it runs
    /// (the WAL as written so far, the flushed files), without a close, which would flush.
    fn crash_image(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("image dir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            if entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    }

    /// A logged batch survives a killed process as soon as it is committed; an unlogged one
    /// only once persisted, and then its blocks and metadata together.
    #[test]
    fn unlogged_batches_survive_a_kill_only_once_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (live, before, after) = (dir.path().join("live"), dir.path().join("before"), dir.path().join("after"));
        let value = |index: u32| vec![index as u8 ^ 0x77; 65_540];
        let store = RocksStore::open(&live, IoMode::Direct, 0).expect("open");
        let mut logged = StoreBatch::default();
        logged.put_block(ChunkId(1), 0, value(0));
        logged.put_meta(ChunkId(1), meta());
        store.commit(logged).expect("commit logged");
        let mut unlogged = StoreBatch::with_logging(Logging::Unlogged);
        for index in 0..4 {
            unlogged.put_block(ChunkId(2), index, value(index));
        }
        unlogged.put_meta(ChunkId(2), meta());
        store.commit(unlogged).expect("commit unlogged");
        assert_eq!(store.blocks(ChunkId(2), 0, 1).expect("read"), vec![Some(value(0))], "readable at once");
        crash_image(&live, &before);
        store.persist().expect("persist");
        crash_image(&live, &after);

        let image = RocksStore::open(&before, IoMode::Direct, 0).expect("open image before persist");
        assert_eq!(image.meta(ChunkId(1)).expect("meta"), Some(meta()), "the logged batch is in the WAL");
        assert_eq!(image.blocks(ChunkId(1), 0, 1).expect("read"), vec![Some(value(0))]);
        assert_eq!(image.meta(ChunkId(2)).expect("meta"), None, "the unlogged batch died with the process");
        assert_eq!(image.block_indices(ChunkId(2)).expect("indices"), Vec::<u32>::new());
        drop(image);

        let image = RocksStore::open(&after, IoMode::Direct, 0).expect("open image after persist");
        assert_eq!(image.meta(ChunkId(1)).expect("meta"), Some(meta()));
        assert_eq!(image.meta(ChunkId(2)).expect("meta"), Some(meta()), "persisted: metadata too");
        let blocks = image.blocks(ChunkId(2), 0, 4).expect("read");
        for (index, got) in blocks.iter().enumerate() {
            assert_eq!(got.as_deref(), Some(&value(index as u32)[..]), "block {index}");
        }
    }
}
