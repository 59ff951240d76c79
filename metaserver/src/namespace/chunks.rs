//! The chunk map in the state machine: which chunks hold a regular file's data, at which version,
//! on which chunkservers; what must still be deleted or truncated on chunkservers.
//!
//! # Contract
//! - `ns_chunks` (inode ‖ chunk index → [`Chunk`]) and its reverse index `ns_chunk_ids` (chunk id
//!   → [`ChunkPlace`]) always agree. Chunk ids come from a counter in `ns_meta` (first 1) and are
//!   never reused.
//! - `apply` never talks to chunkservers and never chooses servers: placement, version bumps on
//!   replicas and deletions are done by the node that proposes (placement) or by the leader
//!   (everything that calls chunkservers), and arrive here as facts inside commands.
//! - A chunk that leaves the map (truncation, or the reclaim of a removed file) goes to `ns_gc`
//!   with its version and replicas in the same command, so the leader can delete it later —
//!   the map never forgets a chunk it has not queued for deletion.
//! - A truncation that cuts through a chunk raises the chunk's version in the map at once and
//!   records a [`PendingTruncate`]: replicas keep the old version until the leader has cut them,
//!   so no client can read or write the chunk's old bytes past the new end in between — not
//!   even if the leader dies before cutting them (its successor finds the pending record).

use cairn_coordinator::rsm::store::StateRead;

use super::apply::{kill_suid_on_write, Apply};
use super::command::Reply;
use super::errno::Errno;
use super::keys::{self, CHUNKS, CHUNK_IDS, GC, META, OPEN_WRITE, RECLAIM, TRUNCATES};
use super::rows::{self, decode, encode, Fail, Res};
use super::types::{
    Chunk, ChunkId, ChunkPlace, ChunkserverId, FileKind, GcChunk, Inode, InodeId, PendingTruncate, Replica, SessionId,
};
use crate::limits::{CHUNKS_PER_READ_MAX, FILE_SIZE_BYTES_MAX};

/// The chunk at `index` of `ino`, if allocated.
pub fn chunk(state: &dyn StateRead, ino: InodeId, index: u64) -> Res<Option<Chunk>> {
    match state.get(CHUNKS, &keys::chunk_key(ino, index))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("chunk", &bytes)?)),
    }
}

/// Where chunk `id` belongs, if it is in the map.
pub fn place(state: &dyn StateRead, id: ChunkId) -> Res<Option<ChunkPlace>> {
    match state.get(CHUNK_IDS, &id.0.to_be_bytes())? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("chunk place", &bytes)?)),
    }
}

/// The truncation still pending on chunk `index` of `ino`.
pub fn pending_truncate(state: &dyn StateRead, ino: InodeId, index: u64) -> Res<Option<PendingTruncate>> {
    match state.get(TRUNCATES, &keys::chunk_key(ino, index))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("pending truncate", &bytes)?)),
    }
}

/// The next chunk id the map will allocate (every id below it has been allocated).
pub fn next_chunk_id(state: &dyn StateRead) -> Res<ChunkId> {
    match state.get(META, keys::META_NEXT_CHUNK)? {
        Some(bytes) => Ok(ChunkId(decode("next chunk", &bytes)?)),
        None => Ok(ChunkId(1)),
    }
}

/// What GetChunks answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMap {
    pub chunk_size_bytes: u64,
    pub size: u64,
    /// (index, chunk), ascending.
    pub chunks: Vec<(u64, Chunk)>,
}

/// The allocated chunks of regular file `ino` in `[first, first + count)` (`count` 0: to the
/// end; capped at `CHUNKS_PER_READ_MAX`). ENOENT, EISDIR, EINVAL for other types.
pub fn chunk_map(state: &dyn StateRead, ino: InodeId, first: u64, count: u32) -> Res<ChunkMap> {
    let inode = rows::existing(state, ino)?;
    regular(&inode)?;
    let params = rows::fs_params(state)?.ok_or(Fail::Errno(Errno::NotConn))?;
    let count = match count {
        0 => CHUNKS_PER_READ_MAX,
        n => n.min(CHUNKS_PER_READ_MAX),
    };
    let start = keys::chunk_key(ino, first);
    let end = match first.checked_add(u64::from(count)) {
        Some(last) => keys::chunk_key(ino, last),
        None => keys::id_range(ino.0).1,
    };
    let mut rows = Vec::new();
    state.scan(CHUNKS, &start, Some(&end), false, &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        true
    })?;
    let mut chunks = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let Some((_, index)) = keys::split_chunk_key(&k) else { continue };
        chunks.push((index, decode("chunk", &v)?));
    }
    Ok(ChunkMap { chunk_size_bytes: params.chunk_size_bytes, size: inode.size, chunks })
}

/// The bytes of `inode`'s size that lie in written chunks (for `st_blocks`): each chunk in the
/// map that a committed write reached counts up to the file's end; a missing chunk (a hole of a
/// whole chunk) and a `fresh` one (allocated, nothing committed to it yet) count nothing. Zero
/// for anything but a non-empty regular file.
pub fn allocated_bytes(state: &dyn StateRead, inode: &Inode) -> Res<u64> {
    if !has_allocation(inode) {
        return Ok(0);
    }
    allocated_bytes_in(state, inode, chunk_size_bytes(state)?)
}

/// [`allocated_bytes`] with the file system's chunk size already read (a listing reads it once).
pub fn allocated_bytes_in(state: &dyn StateRead, inode: &Inode, chunk_size: u64) -> Res<u64> {
    if !has_allocation(inode) {
        return Ok(0);
    }
    let start = keys::chunk_key(inode.ino, 0);
    let end = keys::chunk_key(inode.ino, inode.size.div_ceil(chunk_size));
    let mut written = Vec::new();
    state.scan(CHUNKS, &start, Some(&end), false, &mut |k, v| {
        if let Some((_, index)) = keys::split_chunk_key(k) {
            written.push((index, v.to_vec()));
        }
        true
    })?;
    let mut total = 0u64;
    for (index, value) in written {
        let c: Chunk = decode("chunk", &value)?;
        if !c.fresh {
            let offset = index.saturating_mul(chunk_size);
            total = total.saturating_add(chunk_size.min(inode.size.saturating_sub(offset)));
        }
    }
    Ok(total)
}

/// Only a non-empty regular file can have chunks below its end.
fn has_allocation(inode: &Inode) -> bool {
    inode.kind == FileKind::Regular && inode.size > 0
}

/// The file system's chunk size (ENOTCONN before Format).
pub fn chunk_size_bytes(state: &dyn StateRead) -> Res<u64> {
    Ok(rows::fs_params(state)?.ok_or(Fail::Errno(Errno::NotConn))?.chunk_size_bytes)
}

/// One row of the whole map, for the leader's scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub ino: InodeId,
    pub index: u64,
    pub chunk: Chunk,
}

/// Up to `limit` chunks of the map after `(ino, index)` (`None`: from the start), in key order.
pub fn map_page(state: &dyn StateRead, after: Option<(InodeId, u64)>, limit: usize) -> Res<Vec<MapEntry>> {
    let start = match after {
        None => Vec::new(),
        Some((ino, index)) => {
            let mut k = keys::chunk_key(ino, index);
            k.push(0);
            k
        }
    };
    let mut rows = Vec::new();
    state.scan(CHUNKS, &start, None, false, &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        rows.len() < limit
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let Some((ino, index)) = keys::split_chunk_key(&k) else { continue };
        out.push(MapEntry { ino, index, chunk: decode("chunk", &v)? });
    }
    Ok(out)
}

/// Up to `limit` chunks queued for deletion, by id.
pub fn gc_queue(state: &dyn StateRead, limit: usize) -> Res<Vec<(ChunkId, GcChunk)>> {
    let mut rows = Vec::new();
    state.scan(GC, &[], None, false, &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        rows.len() < limit
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let Some(id) = keys::decode_u64(&k) else { continue };
        out.push((ChunkId(id), decode("gc chunk", &v)?));
    }
    Ok(out)
}

/// Whether chunk `id` waits in the deletion queue.
pub fn in_gc_queue(state: &dyn StateRead, id: ChunkId) -> Res<bool> {
    Ok(state.get(GC, &id.0.to_be_bytes())?.is_some())
}

/// Up to `limit` pending truncations (of inode `only`, if given): (inode, index, record).
pub fn pending_truncates(
    state: &dyn StateRead,
    only: Option<InodeId>,
    limit: usize,
) -> Res<Vec<(InodeId, u64, PendingTruncate)>> {
    let (start, end) = match only {
        Some(ino) => {
            let (s, e) = keys::id_range(ino.0);
            (s, Some(e))
        }
        None => (Vec::new(), None),
    };
    let mut rows = Vec::new();
    state.scan(TRUNCATES, &start, end.as_deref(), false, &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        rows.len() < limit
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (k, v) in rows {
        let Some((ino, index)) = keys::split_chunk_key(&k) else { continue };
        out.push((ino, index, decode("pending truncate", &v)?));
    }
    Ok(out)
}

/// Whether any session has a handle open for writing on `ino`.
pub fn has_writers(state: &dyn StateRead, ino: InodeId) -> Res<bool> {
    let (start, end) = keys::id_range(ino.0);
    let mut any = false;
    state.scan(OPEN_WRITE, &start, Some(&end), false, &mut |_, _| {
        any = true;
        false
    })?;
    Ok(any)
}

fn regular(inode: &Inode) -> Res<()> {
    match inode.kind {
        FileKind::Regular => Ok(()),
        FileKind::Directory => Err(Errno::IsDir.into()),
        _ => Err(Errno::Inval.into()),
    }
}

fn distinct_servers(replicas: &[Replica]) -> bool {
    let mut ids: Vec<ChunkserverId> = replicas.iter().map(|r| r.server).collect();
    ids.sort_unstable();
    ids.windows(2).all(|w| w[0] != w[1])
}

impl Apply<'_> {
    fn chunk_size_bytes(&self) -> Res<u64> {
        chunk_size_bytes(&self.tx)
    }

    /// The regular file `ino`, which `session` has open for writing (EBADF otherwise).
    fn written_file(&self, ino: InodeId, session: SessionId) -> Res<Inode> {
        let inode = self.get(ino)?;
        regular(&inode)?;
        self.live_session(session)?;
        if self.write_handles(ino, session)? == 0 {
            return Err(Errno::BadF.into());
        }
        Ok(inode)
    }

    fn put_chunk(&mut self, ino: InodeId, index: u64, chunk: &Chunk) {
        self.tx.put(CHUNKS, keys::chunk_key(ino, index), encode(chunk));
    }

    pub(super) fn allocate_chunk(
        &mut self,
        ino: InodeId,
        session: SessionId,
        index: u64,
        placement: &[Replica],
    ) -> Res<Reply> {
        self.written_file(ino, session)?;
        let chunk_size = self.chunk_size_bytes()?;
        if index > FILE_SIZE_BYTES_MAX / chunk_size {
            return Err(Errno::FBig.into());
        }
        if let Some(existing) = chunk(&self.tx, ino, index)? {
            return Ok(Reply::Chunk { index, chunk: existing });
        }
        if placement.is_empty() {
            return Err(Errno::NoSpc.into());
        }
        if !distinct_servers(placement) {
            return Err(Errno::Inval.into());
        }
        let id = next_chunk_id(&self.tx)?;
        self.tx.put(META, keys::META_NEXT_CHUNK, encode(&(id.0 + 1)));
        let new = Chunk { id, version: 1, replicas: placement.to_vec(), fresh: true, allocated_at: self.log_index() };
        self.put_chunk(ino, index, &new);
        self.tx.put(CHUNK_IDS, id.0.to_be_bytes().to_vec(), encode(&ChunkPlace { ino, index }));
        Ok(Reply::Chunk { index, chunk: new })
    }

    pub(super) fn commit_write(
        &mut self,
        ino: InodeId,
        session: SessionId,
        size: u64,
        chunk_indexes: &[u64],
    ) -> Res<Reply> {
        let mut inode = self.written_file(ino, session)?;
        if size > FILE_SIZE_BYTES_MAX {
            return Err(Errno::FBig.into());
        }
        if size > inode.size {
            self.set_size(&mut inode, size);
        }
        for &index in chunk_indexes {
            if let Some(mut c) = chunk(&self.tx, ino, index)? {
                if c.fresh {
                    c.fresh = false;
                    self.put_chunk(ino, index, &c);
                }
            }
        }
        inode.mtime = self.now();
        inode.ctime = self.now();
        // A write by anyone without CAP_FSETID drops setuid and setgid, as Linux's
        // file_remove_privs.
        let caller = self.caller();
        if !caller.is_root() {
            kill_suid_on_write(&mut inode, caller);
        }
        self.put_inode(&inode);
        Ok(Reply::Attr(inode))
    }

    pub(super) fn set_chunk_replicas(
        &mut self,
        ino: InodeId,
        index: u64,
        id: ChunkId,
        expect_version: u64,
        version: u64,
        replicas: &[Replica],
    ) -> Res<Reply> {
        let mut c = chunk(&self.tx, ino, index)?.ok_or(Fail::Errno(Errno::NoEnt))?;
        if c.id != id {
            return Err(Errno::NoEnt.into());
        }
        if c.version != expect_version {
            return Err(Errno::Stale.into());
        }
        if version < expect_version || replicas.is_empty() || !distinct_servers(replicas) {
            return Err(Errno::Inval.into());
        }
        if pending_truncate(&self.tx, ino, index)?.is_some() {
            // The leader carries out a pending truncation before it changes replicas.
            return Err(Errno::Again.into());
        }
        c.version = version;
        c.replicas = replicas.to_vec();
        self.put_chunk(ino, index, &c);
        Ok(Reply::Chunk { index, chunk: c })
    }

    pub(super) fn chunk_truncated(
        &mut self,
        ino: InodeId,
        index: u64,
        id: ChunkId,
        to_version: u64,
        lost: &[ChunkserverId],
    ) -> Res<Reply> {
        let pending = pending_truncate(&self.tx, ino, index)?.ok_or(Fail::Errno(Errno::Stale))?;
        if pending.chunk != id || pending.to_version != to_version {
            return Err(Errno::Stale.into());
        }
        self.tx.delete(TRUNCATES, keys::chunk_key(ino, index));
        if let Some(mut c) = chunk(&self.tx, ino, index)? {
            if c.id == id && c.version == to_version && !lost.is_empty() {
                c.replicas.retain(|r| !lost.contains(&r.server));
                self.put_chunk(ino, index, &c);
            }
        }
        Ok(Reply::Done)
    }

    /// Removes chunk `index` of `ino` from the map and queues it for deletion.
    fn drop_chunk(&mut self, ino: InodeId, index: u64, c: Chunk) {
        self.tx.delete(CHUNKS, keys::chunk_key(ino, index));
        self.tx.delete(TRUNCATES, keys::chunk_key(ino, index));
        self.tx.delete(CHUNK_IDS, c.id.0.to_be_bytes().to_vec());
        self.tx.put(GC, c.id.0.to_be_bytes().to_vec(), encode(&GcChunk { version: c.version, replicas: c.replicas }));
    }

    /// Once nobody has `ino` open for writing, drops its chunks that no committed write ever
    /// reached (`fresh`). A file created for writing and closed unwritten (`touch`, an empty
    /// output file) would otherwise keep its chunk 0 for good: a map row with replicas that hold
    /// nothing, walked by healing, fsck and the orphan scan. Whatever an uncommitted write left
    /// on those replicas goes to the deletion queue with the chunk.
    pub(super) fn drop_unwritten_chunks(&mut self, ino: InodeId) -> Res<()> {
        if has_writers(&self.tx, ino)? {
            return Ok(());
        }
        for (index, c) in self.chunks_from(ino, 0)? {
            if c.fresh {
                self.drop_chunk(ino, index, c);
            }
        }
        Ok(())
    }

    /// The chunks of `ino` from index `first` on.
    fn chunks_from(&self, ino: InodeId, first: u64) -> Res<Vec<(u64, Chunk)>> {
        let start = keys::chunk_key(ino, first);
        let (_, end) = keys::id_range(ino.0);
        let mut rows = Vec::new();
        self.tx.scan(CHUNKS, &start, Some(&end), false, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let Some((_, index)) = keys::split_chunk_key(&k) else { continue };
            out.push((index, decode("chunk", &v)?));
        }
        Ok(out)
    }

    /// A regular file shrank from `old_size` to `new_size`: chunks wholly past the new end go
    /// to the deletion queue, and the chunk the new end cuts through gets a new version and a
    /// pending truncation (see the module docs). Growing changes no chunk.
    pub(super) fn truncate_chunks(&mut self, ino: InodeId, old_size: u64, new_size: u64) -> Res<()> {
        if new_size >= old_size {
            return Ok(());
        }
        let chunk_size = self.chunk_size_bytes()?;
        for (index, c) in self.chunks_from(ino, new_size.div_ceil(chunk_size))? {
            self.drop_chunk(ino, index, c);
        }
        let tail = new_size % chunk_size;
        if tail == 0 {
            return Ok(());
        }
        let index = new_size / chunk_size;
        let Some(mut c) = chunk(&self.tx, ino, index)? else { return Ok(()) };
        let pending = match pending_truncate(&self.tx, ino, index)? {
            // An earlier truncation not yet carried out: replicas may still be at its
            // `from_version`; cut them to the shorter length.
            Some(p) if p.chunk == c.id => PendingTruncate {
                chunk: c.id,
                from_version: p.from_version,
                to_version: c.version + 1,
                length_bytes: p.length_bytes.min(tail),
            },
            _ => {
                PendingTruncate { chunk: c.id, from_version: c.version, to_version: c.version + 1, length_bytes: tail }
            }
        };
        c.version = pending.to_version;
        self.put_chunk(ino, index, &c);
        self.tx.put(TRUNCATES, keys::chunk_key(ino, index), encode(&pending));
        Ok(())
    }

    pub(super) fn reclaim_inodes(&mut self, inos: &[InodeId]) -> Res<Reply> {
        for &ino in inos {
            if self.tx.get(RECLAIM, &keys::inode_key(ino))?.is_none() {
                continue;
            }
            for (index, c) in self.chunks_from(ino, 0)? {
                self.drop_chunk(ino, index, c);
            }
            self.tx.delete(RECLAIM, keys::inode_key(ino).to_vec());
        }
        Ok(Reply::Done)
    }

    pub(super) fn chunks_deleted(&mut self, ids: &[ChunkId]) -> Res<Reply> {
        for id in ids {
            self.tx.delete(GC, id.0.to_be_bytes().to_vec());
        }
        Ok(Reply::Done)
    }
}
