//! The chunk engine: chunk operations on top of a [`ChunkStore`].
//!
//! # What it promises
//! * Each operation (one write message, a truncate, a delete, a version update) commits as one
//!   atomic store batch: a crash leaves the chunk as it was before or after, never torn.
//! * Writes read and rewrite only the blocks a range touches partially; whole blocks are
//!   written without reading. Holes (never-written ranges) are not stored and read as zeros.
//! * Every block read — for a client read, a partial overwrite, a truncate or a scrub — is
//!   verified against its stored CRC; a mismatch is [`ChunkError::Corrupt`] naming the block.
//! * No stored block starts at or beyond the chunk's length (truncate removes them), so the
//!   blocks of a chunk are exactly `0 .. blocks_for_length(length)`, and deleting a chunk needs
//!   no scan.
//! * Version rules: an operation carrying a version older than the stored one fails with
//!   [`ChunkError::StaleVersion`]; a newer one with [`ChunkError::StaleReplica`] (this replica
//!   missed a version bump). Only `update_version` raises a version.
//!
//! # What it assumes
//! Operations on one chunk are serialised by a striped lock here; callers may call from any
//! thread. Everything is synchronous: async callers use `spawn_blocking`.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};

use crate::block::{decode_block, decode_block_with_crc, encode_block, validate_block_size, Geometry};
use crate::error::ChunkError;
use crate::ids::{ChunkId, ChunkVersion};
use crate::limits::{CHUNK_SIZE_DEFAULT_BYTES, LIST_CHUNKS_MAX, READ_MESSAGE_BYTES, WRITE_MESSAGE_BYTES_MAX};
use crate::space::Space;
use crate::storage::{ChunkMeta, ChunkStore, Logging, ReadTier, StorageError, StoreBatch};

/// Chunks hashed onto this many locks; two chunks sharing a stripe merely serialise.
const LOCK_STRIPES: usize = 256;

/// What a write message applies to (from the write stream's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTarget {
    pub chunk: ChunkId,
    pub version: ChunkVersion,
    /// Create the chunk if it does not exist.
    pub create: bool,
    /// Size of a created chunk; 0 means the default (64 MiB).
    pub chunk_size_bytes: u64,
}

/// A chunk as `stat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStat {
    pub meta: ChunkMeta,
    pub blake3: Option<[u8; 32]>,
}

pub struct ChunkEngine {
    store: Arc<dyn ChunkStore>,
    space: Arc<Space>,
    block_size_bytes: u32,
    locks: Vec<RwLock<()>>,
    installing: Mutex<HashSet<ChunkId>>,
}

impl std::fmt::Debug for ChunkEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEngine").field("block_size_bytes", &self.block_size_bytes).finish()
    }
}

fn check_version(chunk: ChunkId, stored: ChunkVersion, requested: ChunkVersion) -> Result<(), ChunkError> {
    if requested < stored {
        return Err(ChunkError::StaleVersion { chunk, requested, stored });
    }
    if requested > stored {
        return Err(ChunkError::StaleReplica { chunk, requested, stored });
    }
    Ok(())
}

fn geometry(meta: &ChunkMeta) -> Result<Geometry, ChunkError> {
    Ok(Geometry::new(meta.chunk_size_bytes, meta.block_size_bytes)?)
}

/// Whether a block holds only zeros (stored as a hole).
fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

fn verified(chunk: ChunkId, index: u32, value: &[u8], block_size_bytes: u32) -> Result<&[u8], ChunkError> {
    decode_block(value, block_size_bytes).map_err(|source| ChunkError::Corrupt { chunk, block: index, source })
}

/// A verified read: the chunk's metadata, the bytes, and their CRC-32.
#[derive(Debug)]
pub struct ReadPiece {
    pub meta: ChunkMeta,
    pub data: Vec<u8>,
    pub crc32: u32,
}

impl ChunkEngine {
    /// Opens the engine over `store`: removes chunks whose copy from a peer was interrupted by
    /// a crash, and counts stored bytes for the space check. `block_size_bytes` applies to
    /// chunks created from now on.
    pub fn open(
        store: Arc<dyn ChunkStore>,
        space: Arc<Space>,
        block_size_bytes: u32,
    ) -> Result<ChunkEngine, ChunkError> {
        validate_block_size(block_size_bytes)?;
        let engine = ChunkEngine {
            store,
            space,
            block_size_bytes,
            locks: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            installing: Mutex::new(HashSet::new()),
        };
        let mut stored = 0u64;
        let mut after = ChunkId(0);
        loop {
            let page = engine.store.metas(after, LIST_CHUNKS_MAX as usize)?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            for (chunk, meta) in page {
                if meta.installing {
                    tracing::warn!(%chunk, "removing a chunk whose copy from a peer was interrupted");
                    engine.store.commit(delete_batch(chunk, &meta)?)?;
                } else {
                    stored += meta.length_bytes;
                }
            }
        }
        engine.space.set_stored_bytes(stored);
        Ok(engine)
    }

    pub fn block_size_bytes(&self) -> u32 {
        self.block_size_bytes
    }

    pub fn space(&self) -> &Space {
        &self.space
    }

    fn lock(&self, chunk: ChunkId) -> &RwLock<()> {
        // Fibonacci hashing spreads sequential ids over the stripes.
        let hash = chunk.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
        &self.locks[hash as usize % LOCK_STRIPES]
    }

    fn write_guard(&self, chunk: ChunkId) -> std::sync::RwLockWriteGuard<'_, ()> {
        // The guarded value is `()`: a panic elsewhere cannot leave it inconsistent.
        self.lock(chunk).write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_guard(&self, chunk: ChunkId) -> std::sync::RwLockReadGuard<'_, ()> {
        self.lock(chunk).read().unwrap_or_else(|p| p.into_inner())
    }

    fn check_not_installing(&self, chunk: ChunkId) -> Result<(), ChunkError> {
        if self.installing.lock().unwrap_or_else(|p| p.into_inner()).contains(&chunk) {
            return Err(ChunkError::Busy { chunk });
        }
        Ok(())
    }

    /// The chunk's metadata, hiding chunks still being installed.
    fn live_meta(&self, chunk: ChunkId) -> Result<Option<ChunkMeta>, ChunkError> {
        self.live_meta_from(chunk, ReadTier::Any)
    }

    fn live_meta_from(&self, chunk: ChunkId, tier: ReadTier) -> Result<Option<ChunkMeta>, ChunkError> {
        Ok(self.store.meta_from(chunk, tier)?.filter(|m| !m.installing))
    }

    fn existing(&self, chunk: ChunkId) -> Result<ChunkMeta, ChunkError> {
        self.live_meta(chunk)?.ok_or(ChunkError::NotFound { chunk })
    }

    fn new_meta(&self, target: &WriteTarget) -> Result<ChunkMeta, ChunkError> {
        let chunk_size_bytes =
            if target.chunk_size_bytes == 0 { CHUNK_SIZE_DEFAULT_BYTES } else { target.chunk_size_bytes };
        Geometry::new(chunk_size_bytes, self.block_size_bytes)?;
        Ok(ChunkMeta {
            version: target.version,
            length_bytes: 0,
            chunk_size_bytes,
            block_size_bytes: self.block_size_bytes,
            corrupt: false,
            installing: false,
        })
    }

    /// Checks a write stream's header before any data is applied or forwarded, so that a write
    /// refused for its version or a missing chunk changes nothing anywhere.
    pub fn check_write(&self, target: &WriteTarget) -> Result<(), ChunkError> {
        if target.chunk.0 == 0 {
            return Err(ChunkError::InvalidArgument("chunk id 0 is reserved".into()));
        }
        self.check_not_installing(target.chunk)?;
        match self.live_meta(target.chunk)? {
            Some(meta) => check_version(target.chunk, meta.version, target.version),
            None if target.create => self.new_meta(target).map(drop),
            None => Err(ChunkError::NotFound { chunk: target.chunk }),
        }
    }

    /// Writes `data` at `offset` (one write message) and returns the chunk's new metadata.
    pub fn write(&self, target: &WriteTarget, offset: u64, data: &[u8]) -> Result<ChunkMeta, ChunkError> {
        self.write_many(target, &[(offset, data)], Logging::Logged)
    }

    /// Writes several pieces (consecutive messages of one stream, in order) in one store commit:
    /// all of them or none. A block touched by several pieces is read and rewritten once, with
    /// the later pieces' bytes over the earlier ones'. Returns the chunk's new metadata.
    /// `Logging::Unlogged` writes are lost with the process until [`ChunkEngine::persist`].
    pub fn write_many(
        &self,
        target: &WriteTarget,
        pieces: &[(u64, &[u8])],
        logging: Logging,
    ) -> Result<ChunkMeta, ChunkError> {
        let chunk = target.chunk;
        if let Some((_, data)) = pieces.iter().find(|(_, data)| data.len() > WRITE_MESSAGE_BYTES_MAX) {
            return Err(ChunkError::TooLarge { len: data.len(), max: WRITE_MESSAGE_BYTES_MAX });
        }
        if chunk.0 == 0 {
            return Err(ChunkError::InvalidArgument("chunk id 0 is reserved".into()));
        }
        let _guard = self.write_guard(chunk);
        self.check_not_installing(chunk)?;
        let mut meta = match self.live_meta(chunk)? {
            Some(meta) => {
                check_version(chunk, meta.version, target.version)?;
                meta
            }
            None if target.create => self.new_meta(target)?,
            None => return Err(ChunkError::NotFound { chunk }),
        };
        let geometry = geometry(&meta)?;
        let old_length = meta.length_bytes;
        let mut new_length = old_length;
        let mut written = 0u64;
        for &(offset, data) in pieces {
            let len = data.len() as u64;
            if !geometry.contains(offset, len) {
                return Err(ChunkError::OutOfRange { chunk, offset, len, chunk_size_bytes: geometry.chunk_size_bytes });
            }
            if len > 0 {
                new_length = new_length.max(offset + len);
            }
            written += len;
        }
        self.space.check_write(written, new_length - old_length)?;

        // The touched blocks in their new state; whole-block pieces are borrowed, not copied.
        let mut blocks: BTreeMap<u32, Cow<'_, [u8]>> = BTreeMap::new();
        for &(offset, data) in pieces {
            for span in geometry.spans(offset, data.len() as u64) {
                let piece = &data[span.start_in_range..span.start_in_range + span.len];
                if span.is_whole_block(&geometry) {
                    blocks.insert(span.index, Cow::Borrowed(piece));
                    continue;
                }
                // Read-modify-write of a partially covered block. Stored data shorter than the
                // span's end is padded with zeros (it was a hole there).
                let block = match blocks.entry(span.index) {
                    Entry::Occupied(entry) => entry.into_mut().to_mut(),
                    Entry::Vacant(entry) => {
                        let stored = match self.store.block(chunk, span.index)? {
                            Some(value) => verified(chunk, span.index, &value, geometry.block_size_bytes)?.to_vec(),
                            None => Vec::new(),
                        };
                        entry.insert(Cow::Owned(stored)).to_mut()
                    }
                };
                if block.len() < span.end_in_block() {
                    block.resize(span.end_in_block(), 0);
                }
                block[span.start_in_block..span.end_in_block()].copy_from_slice(piece);
            }
        }
        let mut batch = StoreBatch::with_logging(logging);
        for (index, block) in blocks {
            // A block that is now all zeros becomes a hole (reads give zeros up to the length):
            // zeros written over data — fallocate's PUNCH_HOLE, a zeroed region of an image —
            // free the block's space instead of storing 64 KiB of zeros three times.
            if is_zero(&block) {
                batch.delete_block(chunk, index);
            } else {
                batch.put_block(chunk, index, encode_block(&block));
            }
        }
        meta.length_bytes = new_length;
        batch.put_meta(chunk, meta);
        self.store.commit(batch)?;
        self.space.record_length_change(old_length, new_length);
        Ok(meta)
    }

    /// Reads `[offset, offset + len)`, cut at the chunk's length, verifying every block it
    /// touches. With `version`, the chunk must be at exactly that version.
    pub fn read(
        &self,
        chunk: ChunkId,
        version: Option<ChunkVersion>,
        offset: u64,
        len: u64,
    ) -> Result<(ChunkMeta, Vec<u8>), ChunkError> {
        self.read_with_crc(chunk, version, offset, len).map(|piece| (piece.meta, piece.data))
    }

    /// [`ChunkEngine::read`], also returning the CRC-32 of the bytes read. Whole stored blocks
    /// contribute their verified checksums (combined, not recomputed) and are copied once,
    /// straight from the store's buffers.
    pub fn read_with_crc(
        &self,
        chunk: ChunkId,
        version: Option<ChunkVersion>,
        offset: u64,
        len: u64,
    ) -> Result<ReadPiece, ChunkError> {
        let _guard = self.read_guard(chunk);
        self.read_from(chunk, version, offset, len, ReadTier::Any)
    }

    /// [`ChunkEngine::read_with_crc`] if it can be answered from memory without waiting (no
    /// disk read, no writer of the chunk holding it), else `None`: a small read of cached
    /// blocks then runs on the async worker that received it, without a hand-off to a
    /// blocking thread and back.
    pub fn read_from_memory(
        &self,
        chunk: ChunkId,
        version: Option<ChunkVersion>,
        offset: u64,
        len: u64,
    ) -> Result<Option<ReadPiece>, ChunkError> {
        let Ok(_guard) = self.lock(chunk).try_read() else { return Ok(None) };
        match self.read_from(chunk, version, offset, len, ReadTier::Memory) {
            Err(ChunkError::Storage(StorageError::NotInMemory)) => Ok(None),
            other => other.map(Some),
        }
    }

    fn read_from(
        &self,
        chunk: ChunkId,
        version: Option<ChunkVersion>,
        offset: u64,
        len: u64,
        tier: ReadTier,
    ) -> Result<ReadPiece, ChunkError> {
        let meta = self.live_meta_from(chunk, tier)?.ok_or(ChunkError::NotFound { chunk })?;
        if let Some(version) = version {
            check_version(chunk, meta.version, version)?;
        }
        let geometry = geometry(&meta)?;
        if !geometry.contains(offset, len) {
            return Err(ChunkError::OutOfRange { chunk, offset, len, chunk_size_bytes: geometry.chunk_size_bytes });
        }
        let end = (offset + len).min(meta.length_bytes);
        if offset >= end {
            return Ok(ReadPiece { meta, data: Vec::new(), crc32: crc32fast::hash(&[]) });
        }
        if end - offset > WRITE_MESSAGE_BYTES_MAX as u64 {
            return Err(ChunkError::TooLarge { len: (end - offset) as usize, max: WRITE_MESSAGE_BYTES_MAX });
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut crc = crc32fast::Hasher::new();
        let first = geometry.block_of(offset);
        let last = geometry.block_of(end - 1);
        let mut spans = geometry.spans(offset, end - offset);
        let mut failure = None;
        self.store.visit_blocks_from(chunk, first, last - first + 1, tier, &mut |index, value| {
            let Some(span) = spans.next() else { return ControlFlow::Break(()) };
            let mut stored = 0;
            if let Some(value) = value {
                let (block_crc, data) = match decode_block_with_crc(value, geometry.block_size_bytes) {
                    Ok(block) => block,
                    Err(source) => {
                        failure = Some(ChunkError::Corrupt { chunk, block: index, source });
                        return ControlFlow::Break(());
                    }
                };
                let stored_end = span.end_in_block().min(data.len());
                if stored_end > span.start_in_block {
                    let bytes = &data[span.start_in_block..stored_end];
                    out.extend_from_slice(bytes);
                    if bytes.len() == data.len() {
                        crc.combine(&crc32fast::Hasher::new_with_initial_len(block_crc, data.len() as u64));
                    } else {
                        crc.update(bytes);
                    }
                    stored = bytes.len();
                }
            }
            // The rest of the span lies past the block's stored data: zeros.
            let at = out.len();
            out.resize(at + (span.len - stored), 0);
            crc.update(&out[at..]);
            ControlFlow::Continue(())
        })?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        debug_assert_eq!(out.len() as u64, end - offset);
        Ok(ReadPiece { meta, data: out, crc32: crc.finalize() })
    }

    /// Sets the chunk's length. Shrinking drops the blocks past the end and trims the block
    /// the new end falls into, so growing again later reads zeros there.
    pub fn truncate(&self, chunk: ChunkId, version: ChunkVersion, length_bytes: u64) -> Result<ChunkMeta, ChunkError> {
        let _guard = self.write_guard(chunk);
        self.check_not_installing(chunk)?;
        let mut meta = self.existing(chunk)?;
        check_version(chunk, meta.version, version)?;
        let geometry = geometry(&meta)?;
        if length_bytes > geometry.chunk_size_bytes {
            return Err(ChunkError::OutOfRange {
                chunk,
                offset: 0,
                len: length_bytes,
                chunk_size_bytes: geometry.chunk_size_bytes,
            });
        }
        let old_length = meta.length_bytes;
        let mut batch = StoreBatch::default();
        if length_bytes < old_length {
            let keep = geometry.blocks_for_length(length_bytes);
            for index in keep..geometry.blocks_for_length(old_length) {
                batch.delete_block(chunk, index);
            }
            let tail = length_bytes % u64::from(geometry.block_size_bytes);
            if tail != 0 {
                let index = keep - 1;
                if let Some(value) = self.store.block(chunk, index)? {
                    let data = verified(chunk, index, &value, geometry.block_size_bytes)?;
                    if data.len() as u64 > tail {
                        batch.put_block(chunk, index, encode_block(&data[..tail as usize]));
                    }
                }
            }
        } else {
            self.space.check_write(0, length_bytes - old_length)?;
        }
        meta.length_bytes = length_bytes;
        batch.put_meta(chunk, meta);
        self.store.commit(batch)?;
        self.space.record_length_change(old_length, length_bytes);
        Ok(meta)
    }

    /// Deletes the chunk; `Ok(false)` if it did not exist. With `version`, refuses when this
    /// replica holds a newer version (the request is stale).
    pub fn delete(&self, chunk: ChunkId, version: Option<ChunkVersion>) -> Result<bool, ChunkError> {
        let _guard = self.write_guard(chunk);
        self.check_not_installing(chunk)?;
        let Some(meta) = self.live_meta(chunk)? else { return Ok(false) };
        if let Some(requested) = version {
            if requested < meta.version {
                return Err(ChunkError::StaleVersion { chunk, requested, stored: meta.version });
            }
        }
        self.store.commit(delete_batch(chunk, &meta)?)?;
        self.space.record_length_change(meta.length_bytes, 0);
        Ok(true)
    }

    /// The chunk's metadata and, with `digest`, the blake3 digest of bytes `[0, length)`
    /// (reading and verifying every block under one read lock, so the digest is of one state).
    pub fn stat(&self, chunk: ChunkId, digest: bool) -> Result<ChunkStat, ChunkError> {
        if !digest {
            return Ok(ChunkStat { meta: self.existing(chunk)?, blake3: None });
        }
        let _guard = self.read_guard(chunk);
        let meta = self.existing(chunk)?;
        let geometry = geometry(&meta)?;
        let mut hasher = blake3::Hasher::new();
        let blocks_per_step = (READ_MESSAGE_BYTES as u64 / u64::from(geometry.block_size_bytes)).max(1) as u32;
        let total_blocks = geometry.blocks_for_length(meta.length_bytes);
        let zeros = vec![0u8; geometry.block_size_bytes as usize];
        let mut index = 0;
        while index < total_blocks {
            let count = blocks_per_step.min(total_blocks - index);
            for (i, value) in self.store.blocks(chunk, index, count)?.into_iter().enumerate() {
                let block_index = index + i as u32;
                let block_len =
                    (meta.length_bytes - geometry.block_start(block_index)).min(u64::from(geometry.block_size_bytes));
                let block_len = block_len as usize;
                match value {
                    Some(value) => {
                        let data = verified(chunk, block_index, &value, geometry.block_size_bytes)?;
                        let n = data.len().min(block_len);
                        hasher.update(&data[..n]);
                        hasher.update(&zeros[..block_len - n]);
                    }
                    None => {
                        hasher.update(&zeros[..block_len]);
                    }
                }
            }
            index += count;
        }
        Ok(ChunkStat { meta, blake3: Some(*hasher.finalize().as_bytes()) })
    }

    /// Up to `limit` chunks with ids greater than `start_after`, and whether more follow.
    pub fn list(&self, start_after: ChunkId, limit: u32) -> Result<(Vec<(ChunkId, ChunkMeta)>, bool), ChunkError> {
        let limit = if limit == 0 { LIST_CHUNKS_MAX } else { limit.min(LIST_CHUNKS_MAX) } as usize;
        let mut page = self.store.metas(start_after, limit + 1)?;
        let more = page.len() > limit;
        page.truncate(limit);
        page.retain(|(_, meta)| !meta.installing);
        Ok((page, more))
    }

    /// Raises the chunk's version from `expected` to `new`.
    pub fn update_version(
        &self,
        chunk: ChunkId,
        expected: ChunkVersion,
        new: ChunkVersion,
    ) -> Result<ChunkMeta, ChunkError> {
        if new <= expected {
            return Err(ChunkError::InvalidArgument(format!("new version {new} is not above {expected}")));
        }
        let _guard = self.write_guard(chunk);
        self.check_not_installing(chunk)?;
        let mut meta = self.existing(chunk)?;
        if meta.version == new {
            // Idempotent: a retried update that already applied succeeds.
            return Ok(meta);
        }
        check_version(chunk, meta.version, expected)?;
        meta.version = new;
        let mut batch = StoreBatch::default();
        batch.put_meta(chunk, meta);
        self.store.commit(batch)?;
        Ok(meta)
    }

    /// Records that a block of the chunk failed its checksum. Returns whether the flag was
    /// newly set.
    pub fn mark_corrupt(&self, chunk: ChunkId) -> Result<bool, ChunkError> {
        let _guard = self.write_guard(chunk);
        let Some(mut meta) = self.live_meta(chunk)? else { return Ok(false) };
        if meta.corrupt {
            return Ok(false);
        }
        meta.corrupt = true;
        let mut batch = StoreBatch::default();
        batch.put_meta(chunk, meta);
        self.store.commit(batch)?;
        Ok(true)
    }

    /// Makes every applied change durable (fsyncs the write-ahead log).
    pub fn sync(&self) -> Result<(), ChunkError> {
        Ok(self.store.sync()?)
    }

    /// Makes every applied change durable, unlogged writes included (flushes the store's
    /// memory tables to its files).
    pub fn persist(&self) -> Result<(), ChunkError> {
        Ok(self.store.persist()?)
    }

    /// Starts persisting what is applied so far without waiting (see
    /// [`ChunkStore::start_persist`]).
    pub fn start_persist(&self) -> Result<(), ChunkError> {
        Ok(self.store.start_persist()?)
    }

    /// Starts installing a copy of `chunk` received from a peer, replacing any local copy. The
    /// chunk is invisible (reads: not found; writes: busy) until [`Installer::finish`].
    pub fn begin_install(self: &Arc<Self>, chunk: ChunkId, chunk_size_bytes: u64) -> Result<Installer, ChunkError> {
        if chunk.0 == 0 {
            return Err(ChunkError::InvalidArgument("chunk id 0 is reserved".into()));
        }
        let geometry = Geometry::new(chunk_size_bytes, self.block_size_bytes)?;
        if !self.installing.lock().unwrap_or_else(|p| p.into_inner()).insert(chunk) {
            return Err(ChunkError::Busy { chunk });
        }
        let installer = Installer {
            engine: self.clone(),
            chunk,
            geometry,
            pending: Vec::new(),
            next_block: 0,
            committed_bytes: 0,
            finished: false,
        };
        let _guard = self.write_guard(chunk);
        let mut batch = StoreBatch::default();
        if let Some(old) = self.store.meta(chunk)? {
            batch = delete_batch(chunk, &old)?;
            self.space.record_length_change(old.length_bytes, 0);
        }
        batch.put_meta(chunk, installer.meta(ChunkVersion(0), true));
        self.store.commit(batch)?;
        Ok(installer)
    }
}

/// The batch deleting a chunk's blocks and metadata.
fn delete_batch(chunk: ChunkId, meta: &ChunkMeta) -> Result<StoreBatch, ChunkError> {
    let geometry = geometry(meta)?;
    let mut batch = StoreBatch::default();
    for index in 0..geometry.blocks_for_length(meta.length_bytes) {
        batch.delete_block(chunk, index);
    }
    batch.delete_meta(chunk);
    Ok(batch)
}

/// An installation in progress (see [`ChunkEngine::begin_install`]). Dropping it unfinished
/// removes what was installed.
pub struct Installer {
    engine: Arc<ChunkEngine>,
    chunk: ChunkId,
    geometry: Geometry,
    /// Received bytes not yet stored (less than one block after each push).
    pending: Vec<u8>,
    next_block: u32,
    /// Bytes covered by stored (or skipped all-zero) blocks.
    committed_bytes: u64,
    finished: bool,
}

impl Installer {
    fn meta(&self, version: ChunkVersion, installing: bool) -> ChunkMeta {
        ChunkMeta {
            version,
            length_bytes: self.committed_bytes,
            chunk_size_bytes: self.geometry.chunk_size_bytes,
            block_size_bytes: self.geometry.block_size_bytes,
            corrupt: false,
            installing,
        }
    }

    /// Bytes received so far.
    pub fn received_bytes(&self) -> u64 {
        self.committed_bytes + self.pending.len() as u64
    }

    /// Appends the next bytes of the chunk (contiguous from offset 0).
    pub fn push(&mut self, data: &[u8]) -> Result<(), ChunkError> {
        let end = self.received_bytes() + data.len() as u64;
        if end > self.geometry.chunk_size_bytes {
            return Err(ChunkError::OutOfRange {
                chunk: self.chunk,
                offset: self.received_bytes(),
                len: data.len() as u64,
                chunk_size_bytes: self.geometry.chunk_size_bytes,
            });
        }
        self.engine.space.check_write(data.len() as u64, data.len() as u64)?;
        self.pending.extend_from_slice(data);
        let block = self.geometry.block_size_bytes as usize;
        if self.pending.len() < block {
            return Ok(());
        }
        let full = self.pending.len() / block * block;
        self.store_blocks(full)
    }

    /// Stores the first `len` pending bytes as blocks (skipping all-zero blocks, which are
    /// holes) together with the installing metadata, in one batch. Unlogged: a copy is bulk
    /// data, persisted once at the end; a crash before that leaves an installing chunk, which
    /// the next start removes.
    fn store_blocks(&mut self, len: usize) -> Result<(), ChunkError> {
        let block = self.geometry.block_size_bytes as usize;
        let mut batch = StoreBatch::with_logging(Logging::Unlogged);
        for piece in self.pending[..len].chunks(block) {
            if !is_zero(piece) {
                batch.put_block(self.chunk, self.next_block, encode_block(piece));
            }
            self.next_block += 1;
        }
        let old = self.committed_bytes;
        self.committed_bytes += len as u64;
        self.pending.drain(..len);
        batch.put_meta(self.chunk, self.meta(ChunkVersion(0), true));
        let _guard = self.engine.write_guard(self.chunk);
        self.engine.store.commit(batch)?;
        self.engine.space.record_length_change(old, self.committed_bytes);
        Ok(())
    }

    /// Stores the rest, makes the chunk visible at `version` and persists it to disk.
    pub fn finish(mut self, version: ChunkVersion) -> Result<ChunkMeta, ChunkError> {
        if !self.pending.is_empty() {
            self.store_blocks(self.pending.len())?;
        }
        let meta = self.meta(version, false);
        let mut batch = StoreBatch::with_logging(Logging::Unlogged);
        batch.put_meta(self.chunk, meta);
        {
            let _guard = self.engine.write_guard(self.chunk);
            self.engine.store.commit(batch)?;
        }
        self.engine.store.persist()?;
        self.finished = true;
        Ok(meta)
    }
}

impl Drop for Installer {
    fn drop(&mut self) {
        if !self.finished {
            let meta = self.meta(ChunkVersion(0), true);
            let _guard = self.engine.write_guard(self.chunk);
            match delete_batch(self.chunk, &meta).and_then(|b| Ok(self.engine.store.commit(b)?)) {
                Ok(()) => self.engine.space.record_length_change(self.committed_bytes, 0),
                Err(e) => tracing::warn!(chunk = %self.chunk, error = %e, "remove an interrupted chunk copy"),
            }
        }
        self.engine.installing.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.chunk);
    }
}

#[cfg(test)]
mod tests;
