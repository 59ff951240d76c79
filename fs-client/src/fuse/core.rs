//! The filesystem's logic: every FUSE operation as an async function over the metaserver and
//! the chunkservers, returning the errno the kernel gets. `fs.rs` adapts these to fuser's
//! callbacks; nothing here knows about FUSE replies.
//!
//! State kept by the client (everything else lives on the metaserver):
//! * the session id (renewed by heartbeat, re-opened with its handles when it expired);
//! * open handles (fh → inode, access mode), so a re-opened session re-opens them;
//! * per inode with open handles: the write buffer, the write being flushed in the background,
//!   a chunk map cache, a readahead window, and the (mtime, size) last seen at open/close for
//!   close-to-open page-cache reuse.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::meta::*;
use fuser::Errno;
use tokio::task::JoinHandle;

use super::attr::{file_attr, now, suid_killed};
use super::cache::{LocalCache, CAPABILITY_XATTR};
use super::chunkio::{ChunkIo, ChunkIoError};
use super::closer::Closer;
use super::layout::{split_range, ChunkSpan, WriteBuffer};
use super::meta::{Client, MetaClient};
use super::rope::Rope;
use crate::limits::{
    CHUNK_MAP_BATCH, CHUNK_READ_RETRY_BACKOFF_MAX, CHUNK_READ_RETRY_BACKOFF_MIN, CHUNK_STALE_BACKOFF_MAX,
    CHUNK_STALE_BACKOFF_MIN, CHUNK_WRITE_ATTEMPTS, CLOSE_BATCH_WINDOW, READAHEAD_BYTES, READDIR_BATCH, SESSION_TTL_MS,
    WRITE_BUFFER_BYTES_MAX, WRITE_FLUSHES_IN_FLIGHT,
};

pub type OpResult<T> = Result<T, Errno>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kernel's OFFSET_MAX: a lock range that ends there runs to the end of the file.
pub const OFFSET_MAX: u64 = i64::MAX as u64;

#[derive(Debug, Clone, Copy)]
pub struct Handle {
    pub ino: u64,
    pub read: bool,
    pub write: bool,
    pub dir: bool,
    /// For a directory handle: the offset at which its listing ended, if it did.
    pub listing_end: Option<u64>,
}

struct InFlight {
    /// The file range the flush covers.
    start: u64,
    end: u64,
    task: JoinHandle<OpResult<Flushed>>,
}

/// Outcome of a flush, applied to the inode's state by whoever awaits it.
#[derive(Debug, Default)]
struct Flushed {
    size: u64,
    entries: Vec<ChunkEntry>,
    /// Written with `sync` (durable on every replica), else only applied by every replica.
    synced: bool,
    /// The attributes after the attribute change the commit carried, if it carried one.
    changed: Option<Attr>,
}

/// Data read for a window, and chunk entries found stale on the way (index → new entry).
struct Fetched {
    data: Rope,
    refreshed: Vec<(u64, Option<ChunkEntry>)>,
}

struct Prefetch {
    start: u64,
    len: u64,
    task: JoinHandle<OpResult<Fetched>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // A prefetch nobody will use (the file changed, or the reader moved) stops fetching.
        self.task.abort();
    }
}

#[derive(Default)]
struct FileIo {
    buf: WriteBuffer,
    /// Flushes being written, oldest first; they never overlap each other.
    inflight: VecDeque<InFlight>,
    /// Chunk map cache: index → entry, or None for a known hole.
    chunks: HashMap<u64, Option<ChunkEntry>>,
    /// The file size as committed on the metaserver, as far as this client knows.
    size: u64,
    readahead: Option<(u64, Rope)>,
    /// The next readahead window, being fetched.
    prefetch: Option<Prefetch>,
    last_read_end: u64,
    /// Bumped by every change, so a read that dropped the lock knows its data may be stale.
    generation: u64,
    cred: Credentials,
    /// The first chunk allocated by this client's `Create` of the file, for the first flush
    /// to write without an `AllocateChunk` round. Every settle drops what it did not use, so a
    /// truncation or a reopen never writes through an entry that may have been cut away.
    first_chunk: Option<ChunkEntry>,
    /// Chunks written without `sync` since the last fsync of the file (index → entry): fsync
    /// syncs their chains. Kept across closes, dropped with the inode's record.
    unsynced: HashMap<u64, ChunkEntry>,
}

pub struct Inode {
    ino: u64,
    /// End of the data written through this client and not yet known to be on the server:
    /// reported sizes are at least this.
    pending_end: AtomicU64,
    /// The caller of a write the kernel flagged FUSE_WRITE_KILL_SUIDGID (it lacks CAP_FSETID)
    /// that is not known to be committed: reported modes drop setuid/setgid as that commit will.
    kill_suid: Mutex<Option<Credentials>>,
    io: tokio::sync::Mutex<FileIo>,
    /// (mtime sec, mtime nsec, size) when this client last opened or wrote the file.
    seen: Mutex<Option<(i64, u32, u64)>>,
}

pub struct Core {
    pub meta: MetaClient,
    chunks: ChunkIo,
    session: AtomicU64,
    session_ttl_ms: AtomicU64,
    /// Held while a session is checked or replaced, so concurrent EBADFs replace it once.
    renewing: tokio::sync::Mutex<()>,
    chunk_size: AtomicU64,
    inodes: Mutex<HashMap<u64, Arc<Inode>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// (inode, lock owner) pairs that took a POSIX lock here: only they need a ReleaseOwner.
    lock_owners: Mutex<HashSet<(u64, u64)>>,
    /// Directory inode → parent, learnt from lookups, for readdir's "..".
    parents: Mutex<HashMap<u64, u64>>,
    /// Attributes answered without a round trip (see cache.rs).
    cache: LocalCache,
    /// Released handles not yet closed on the metaserver.
    closer: Closer,
}

fn root_cred() -> Credentials {
    Credentials { uid: 0, gid: 0, groups: Vec::new() }
}

impl Core {
    /// `attr_ttl`: the attribute TTL the kernel is given, which also bounds how old what the
    /// client answers from its own cache may be.
    pub fn new(meta: MetaClient, attr_ttl: Duration) -> Arc<Core> {
        Arc::new(Core {
            meta,
            chunks: ChunkIo::default(),
            session: AtomicU64::new(0),
            session_ttl_ms: AtomicU64::new(SESSION_TTL_MS),
            renewing: tokio::sync::Mutex::new(()),
            chunk_size: AtomicU64::new(64 * 1024 * 1024),
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            lock_owners: Mutex::new(HashSet::new()),
            parents: Mutex::new(HashMap::new()),
            cache: LocalCache::new(attr_ttl),
            closer: Closer::default(),
        })
    }

    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Relaxed)
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size.load(Ordering::Relaxed)
    }

    // ---- session ---------------------------------------------------------------------------

    /// Opens the mount's session and learns the filesystem's chunk size.
    pub async fn start(&self) -> OpResult<()> {
        let request = StatFsRequest { cred: Some(root_cred()) };
        let fs = self.meta.rpc("statfs", request, |mut c, r| async move { c.stat_fs(r).await }).await?;
        if fs.chunk_size_bytes > 0 {
            self.chunk_size.store(fs.chunk_size_bytes, Ordering::Relaxed);
        }
        self.open_session().await
    }

    async fn open_session(&self) -> OpResult<()> {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        let request = OpenSessionRequest {
            cred: Some(root_cred()),
            time: Some(now()),
            client_name: "cairn mount".to_owned(),
            host,
            pid: std::process::id(),
            ttl_ms: SESSION_TTL_MS,
        };
        let r = self.meta.rpc("open_session", request, |mut c, r| async move { c.open_session(r).await }).await?;
        self.session.store(r.session, Ordering::Relaxed);
        self.meta.set_session(r.session);
        self.session_ttl_ms.store(r.ttl_ms.max(1000), Ordering::Relaxed);
        tracing::info!(session = r.session, ttl_ms = r.ttl_ms, "session open");
        Ok(())
    }

    /// Renews the session every third of its TTL; re-opens it (and every open handle) when
    /// the metaserver says it expired. Runs until the task is dropped.
    pub async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            let period = Duration::from_millis(self.session_ttl_ms.load(Ordering::Relaxed) / 3);
            tokio::time::sleep(period).await;
            // Renews the lease, or replaces an expired session.
            self.renew_if_expired(self.session()).await;
        }
    }

    async fn reopen_handles(&self) {
        let handles: Vec<Handle> = lock(&self.handles).values().copied().filter(|h| !h.dir).collect();
        let session = self.session();
        for h in handles {
            let request = OpenRequest {
                cred: Some(root_cred()),
                time: Some(now()),
                ino: h.ino,
                session,
                open: Some(OpenMode { read: h.read, write: h.write, truncate: false }),
            };
            let r = self.meta.rpc("open", request, |mut c, r| async move { c.open(r).await }).await;
            if let Err(e) = r {
                tracing::warn!(ino = h.ino, error = ?e, "could not re-open a handle in the new session");
            }
        }
    }

    /// Runs `f` with the current session; if it answers EBADF because the session expired
    /// (a long outage), opens a new session (re-opening the handles) and runs `f` once more.
    async fn with_session<T, F, Fut>(&self, mut f: F) -> OpResult<T>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = OpResult<T>>,
    {
        let session = self.session();
        match f(session).await {
            Err(e) if e == Errno::EBADF && self.renew_if_expired(session).await => f(self.session()).await,
            other => other,
        }
    }

    /// Whether `seen` has been replaced by a live session (checking with a heartbeat, and
    /// opening a new session when the metaserver says `seen` expired).
    async fn renew_if_expired(&self, seen: u64) -> bool {
        let _one_at_a_time = self.renewing.lock().await;
        if self.session() != seen {
            return true;
        }
        let request = HeartbeatRequest { session: seen };
        match self.meta.rpc("heartbeat", request, |mut c, r| async move { c.heartbeat(r).await }).await {
            Err(e) if e == Errno::EBADF => {
                tracing::warn!(session = seen, "session expired; opening a new one and re-opening handles");
                if self.open_session().await.is_err() {
                    return false;
                }
                self.reopen_handles().await;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(session = seen, error = ?e, "heartbeat failed");
                false
            }
        }
    }

    pub async fn close_session(&self) {
        let request = CloseSessionRequest { cred: Some(root_cred()), time: Some(now()), session: self.session() };
        let r = self.meta.rpc("close_session", request, |mut c, r| async move { c.close_session(r).await }).await;
        if let Err(e) = r {
            tracing::warn!(error = ?e, "could not close the session (it will expire)");
        }
    }

    // ---- inode state -----------------------------------------------------------------------

    fn inode(&self, ino: u64) -> Arc<Inode> {
        lock(&self.inodes)
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(Inode {
                    ino,
                    pending_end: AtomicU64::new(0),
                    kill_suid: Mutex::new(None),
                    io: tokio::sync::Mutex::new(FileIo::default()),
                    seen: Mutex::new(None),
                })
            })
            .clone()
    }

    /// The size to report for a file: the server's, or more when local writes extend it.
    pub fn local_size(&self, attr: &Attr) -> u64 {
        self.local_size_mode(attr).0
    }

    /// The attributes to give the kernel: the server's, changed as this client's writes that
    /// are not committed yet will change them (a larger size; setuid/setgid dropped).
    pub fn kernel_attr(&self, attr: &Attr) -> fuser::FileAttr {
        let (size, mode) = self.local_size_mode(attr);
        let mut fa = file_attr(attr, size);
        fa.perm = (mode & 0o7777) as u16;
        fa
    }

    fn local_size_mode(&self, attr: &Attr) -> (u64, u32) {
        if attr.r#type != FileType::Regular as i32 {
            return (attr.size, attr.mode);
        }
        let inodes = lock(&self.inodes);
        let Some(inode) = inodes.get(&attr.ino) else {
            return (attr.size, attr.mode);
        };
        let size = attr.size.max(inode.pending_end.load(Ordering::Relaxed));
        let mode = match lock(&inode.kill_suid).as_ref() {
            Some(writer) => suid_killed(attr.mode, writer.gid == attr.gid || writer.groups.contains(&attr.gid)),
            None => attr.mode,
        };
        (size, mode)
    }

    /// The kernel learns directory entry `name` in `parent` with `attr`.
    fn remember_entry(&self, attr: &Attr, parent: u64, name: &[u8]) {
        if attr.r#type == FileType::Directory as i32 {
            lock(&self.parents).insert(attr.ino, parent);
            self.cache.note_dir_name(parent, name, attr.ino);
        }
    }

    pub fn parent_of(&self, ino: u64) -> u64 {
        lock(&self.parents).get(&ino).copied().unwrap_or(ino)
    }

    pub fn forget(&self, ino: u64) {
        lock(&self.parents).remove(&ino);
        self.cache.forget(ino);
    }

    /// Directory `dir` changed through this client (`ok`: the change succeeded; else it may
    /// have happened): its attributes are fetched again in the background for the GETATTR the
    /// kernel sends before its next use of the directory (see cache.rs).
    fn dir_changed(self: &Arc<Self>, dir: u64, ok: bool) {
        if let Some(tx) = self.cache.dir_changed(dir, ok) {
            let core = self.clone();
            tokio::spawn(async move {
                let attr = core.getattr(root_cred(), dir).await.ok();
                let _ = tx.send(Some(attr));
            });
        }
    }

    /// Directory `dir` changed through this client by a call sent at `sent`: its attributes as
    /// the answer gave them (`attr`) or, without them, fetched again in the background.
    fn dir_changed_to(self: &Arc<Self>, dir: u64, ok: bool, attr: Option<Attr>, sent: Instant) {
        match attr {
            Some(attr) if ok => self.cache.dir_known(dir, attr, sent),
            _ => self.dir_changed(dir, ok),
        }
    }

    /// An entry was added to `dir` (or the call failed) by a call sent at `sent`.
    fn entry_added(self: &Arc<Self>, dir: u64, r: &OpResult<EntryResponse>, sent: Instant) {
        let known = r.as_ref().ok().and_then(|r| r.parent_attr);
        self.dir_changed_to(dir, r.is_ok(), known, sent);
    }

    /// getattr for the kernel, with the TTL to give it: a directory's attributes fetched after
    /// this client's last change of it come from the cache, with what is left of their TTL.
    pub async fn getattr_cached(&self, cred: Credentials, ino: u64) -> OpResult<(Attr, Duration)> {
        if let Some((sent, mut fetch)) = self.cache.dir_attr(ino) {
            let attr = match fetch.wait_for(Option::is_some).await {
                Ok(fetched) => (*fetched).flatten(),
                Err(_) => None,
            };
            if let (Some(attr), Some(ttl)) = (attr, self.cache.remaining(sent)) {
                return Ok((attr, ttl));
            }
        }
        Ok((self.getattr(cred, ino).await?, self.cache.ttl()))
    }

    // ---- namespace -------------------------------------------------------------------------

    pub async fn lookup(&self, cred: Credentials, parent: u64, name: Vec<u8>) -> OpResult<Attr> {
        let request = LookupRequest { cred: Some(cred), parent, name: name.clone() };
        let r = self.meta.rpc("lookup", request, |mut c, r| async move { c.lookup(r).await }).await?;
        let attr = r.attr.ok_or(Errno::EIO)?;
        self.remember_entry(&attr, parent, &name);
        Ok(attr)
    }

    pub async fn getattr(&self, cred: Credentials, ino: u64) -> OpResult<Attr> {
        let request = GetAttrRequest { cred: Some(cred), ino };
        let r = self.meta.rpc("getattr", request, |mut c, r| async move { c.get_attr(r).await }).await?;
        r.attr.ok_or(Errno::EIO)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn setattr(
        &self,
        cred: Credentials,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
    ) -> OpResult<Attr> {
        let through_write_handle = fh.and_then(|fh| lock(&self.handles).get(&fh).copied()).is_some_and(|h| h.write);
        // A truncate first writes out what is buffered, so the buffer cannot resurrect bytes
        // beyond the new size; the inode stays locked until the new size is in place. Times
        // and mode likewise: the commit of buffered data sets mtime (and clears setuid/setgid),
        // so committing it after `futimens`/`chmod` would undo them (tar -x sets mtimes on
        // open files before closing them).
        // Without a size, the change rides on the commit of what is buffered (one Raft write
        // instead of two) when there is something to commit.
        let inode = if size.is_some() {
            Some(self.inode(ino))
        } else if mtime.is_some() || mode.is_some() {
            lock(&self.inodes).get(&ino).cloned()
        } else {
            None
        };
        let mut io = match &inode {
            Some(inode) => {
                let mut io = inode.io.lock().await;
                if size.is_none() {
                    let change = AttrChange { mode, uid, gid, atime, mtime };
                    if let Some(attr) = self.settle_changing(inode, &mut io, change).await? {
                        self.cache.dir_changed(ino, false);
                        return Ok(attr);
                    }
                } else {
                    self.settle(inode, &mut io).await?;
                }
                Some(io)
            }
            None => None,
        };
        let request = SetAttrRequest {
            cred: Some(cred),
            time: Some(now()),
            ino,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            through_write_handle,
        };
        let r = self.meta.rpc("setattr", request, |mut c, r| async move { c.set_attr(r).await }).await;
        self.cache.dir_changed(ino, false);
        let attr = r?.attr.ok_or(Errno::EIO)?;
        if let (Some(inode), Some(io), Some(_)) = (&inode, io.as_mut(), size) {
            io.size = attr.size;
            io.chunks.clear();
            io.readahead = None;
            io.prefetch = None;
            io.generation += 1;
            inode.pending_end.store(0, Ordering::Relaxed);
            *lock(&inode.seen) = Some(seen_of(&attr));
        }
        Ok(attr)
    }

    pub async fn readlink(&self, cred: Credentials, ino: u64) -> OpResult<Vec<u8>> {
        let request = ReadlinkRequest { cred: Some(cred), ino };
        let r = self.meta.rpc("readlink", request, |mut c, r| async move { c.readlink(r).await }).await?;
        Ok(r.target)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        self: &Arc<Self>,
        cred: Credentials,
        parent: u64,
        name: Vec<u8>,
        kind: FileType,
        mode: u32,
        umask: u32,
        rdev: u64,
    ) -> OpResult<Attr> {
        let request =
            MknodRequest { cred: Some(cred), time: Some(now()), parent, name, r#type: kind as i32, mode, umask, rdev };
        let sent = Instant::now();
        let r = self.meta.rpc("mknod", request, |mut c, r| async move { c.mknod(r).await }).await;
        self.entry_added(parent, &r, sent);
        r?.attr.ok_or(Errno::EIO)
    }

    pub async fn mkdir(
        self: &Arc<Self>,
        cred: Credentials,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    ) -> OpResult<Attr> {
        let request = MkdirRequest { cred: Some(cred), time: Some(now()), parent, name: name.clone(), mode, umask };
        let sent = Instant::now();
        let r = self.meta.rpc("mkdir", request, |mut c, r| async move { c.mkdir(r).await }).await;
        self.entry_added(parent, &r, sent);
        let attr = r?.attr.ok_or(Errno::EIO)?;
        self.remember_entry(&attr, parent, &name);
        Ok(attr)
    }

    pub async fn unlink(self: &Arc<Self>, cred: Credentials, parent: u64, name: Vec<u8>, dir: bool) -> OpResult<()> {
        let request = RemoveRequest { cred: Some(cred), time: Some(now()), parent, name };
        let sent = Instant::now();
        let r = if dir {
            let r = self.meta.rpc("rmdir", request, |mut c, r| async move { c.rmdir(r).await }).await;
            // The removed directory (its inode is not named here) lost its links.
            self.cache.all_dirs_changed();
            r
        } else {
            self.meta.rpc("unlink", request, |mut c, r| async move { c.unlink(r).await }).await
        };
        let known = r.as_ref().ok().and_then(|r| r.parent_attr);
        self.dir_changed_to(parent, r.is_ok(), known, sent);
        r.map(|_| ())
    }

    pub async fn symlink(
        self: &Arc<Self>,
        cred: Credentials,
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    ) -> OpResult<Attr> {
        let request = SymlinkRequest { cred: Some(cred), time: Some(now()), parent, name, target };
        let sent = Instant::now();
        let r = self.meta.rpc("symlink", request, |mut c, r| async move { c.symlink(r).await }).await;
        self.entry_added(parent, &r, sent);
        r?.attr.ok_or(Errno::EIO)
    }

    pub async fn rename(
        self: &Arc<Self>,
        cred: Credentials,
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
    ) -> OpResult<()> {
        // A directory moved, replaced or exchanged changes its ctime, nlink or "..", and the
        // request does not name its inode: if either name may be a directory, forget them all.
        let (moved, target) = (self.cache.dir_named(parent, &name), self.cache.dir_named(new_parent, &new_name));
        let request = RenameRequest {
            cred: Some(cred),
            time: Some(now()),
            parent,
            name: name.clone(),
            new_parent,
            new_name: new_name.clone(),
            flags,
        };
        let sent = Instant::now();
        let r = self.meta.rpc("rename", request, |mut c, r| async move { c.rename(r).await }).await;
        if moved.is_some() || target.is_some() {
            self.cache.all_dirs_changed();
        }
        if r.is_ok() {
            // The kernel now knows them under the other names.
            if let Some(ino) = moved {
                self.cache.note_dir_name(new_parent, &new_name, ino);
            }
            if let (Some(ino), true) = (target, flags & libc::RENAME_EXCHANGE != 0) {
                self.cache.note_dir_name(parent, &name, ino);
            }
        }
        let (known, new_known) = match &r {
            Ok(r) => (r.parent_attr, r.new_parent_attr),
            Err(_) => (None, None),
        };
        self.dir_changed_to(parent, r.is_ok(), known, sent);
        if new_parent != parent {
            self.dir_changed_to(new_parent, r.is_ok(), new_known, sent);
        }
        r.map(|_| ())
    }

    pub async fn link(
        self: &Arc<Self>,
        cred: Credentials,
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
    ) -> OpResult<Attr> {
        let request = LinkRequest { cred: Some(cred), time: Some(now()), ino, new_parent, new_name };
        let sent = Instant::now();
        let r = self.meta.rpc("link", request, |mut c, r| async move { c.link(r).await }).await;
        self.entry_added(new_parent, &r, sent);
        r?.attr.ok_or(Errno::EIO)
    }

    // ---- xattrs, access, statfs ------------------------------------------------------------

    pub async fn setxattr(
        &self,
        cred: Credentials,
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    ) -> OpResult<()> {
        let request = SetXattrRequest { cred: Some(cred), time: Some(now()), ino, name, value, flags };
        let r = self.meta.rpc("setxattr", request, |mut c, r| async move { c.set_xattr(r).await }).await;
        self.cache.xattrs_changed(ino);
        self.cache.dir_changed(ino, false);
        r.map(|_| ())
    }

    /// getxattr; the kernel asks for `security.capability` before every write(2), so its
    /// absence is answered from the cache when known (see cache.rs).
    /// Whether `name` is security.capability and `ino` is known to have none.
    pub fn knows_no_caps(&self, ino: u64, name: &[u8]) -> bool {
        name == CAPABILITY_XATTR && self.cache.knows_no_caps(ino)
    }

    pub async fn getxattr(&self, cred: Credentials, ino: u64, name: Vec<u8>) -> OpResult<Vec<u8>> {
        let capability = name == CAPABILITY_XATTR;
        if self.knows_no_caps(ino, &name) {
            return Err(Errno::ENODATA);
        }
        let (sent, changes) = (Instant::now(), self.cache.xattr_changes());
        let request = GetXattrRequest { cred: Some(cred), ino, name };
        let r = self.meta.rpc("getxattr", request, |mut c, r| async move { c.get_xattr(r).await }).await;
        if capability && r.as_ref().is_err_and(|e| *e == Errno::ENODATA) && self.cache.xattr_changes() == changes {
            self.cache.note_no_caps(ino, sent);
        }
        Ok(r?.value)
    }

    pub async fn listxattr(&self, cred: Credentials, ino: u64) -> OpResult<Vec<u8>> {
        let request = ListXattrRequest { cred: Some(cred), ino };
        let r = self.meta.rpc("listxattr", request, |mut c, r| async move { c.list_xattr(r).await }).await?;
        let mut out = Vec::new();
        for name in r.names {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub async fn removexattr(&self, cred: Credentials, ino: u64, name: Vec<u8>) -> OpResult<()> {
        let request = RemoveXattrRequest { cred: Some(cred), time: Some(now()), ino, name };
        let r = self.meta.rpc("removexattr", request, |mut c, r| async move { c.remove_xattr(r).await }).await;
        self.cache.xattrs_changed(ino);
        self.cache.dir_changed(ino, false);
        r.map(|_| ())
    }

    pub async fn access(&self, cred: Credentials, ino: u64, mask: u32) -> OpResult<()> {
        let request = AccessRequest { cred: Some(cred), ino, mask };
        self.meta.rpc("access", request, |mut c, r| async move { c.access(r).await }).await?;
        Ok(())
    }

    pub async fn statfs(&self, cred: Credentials) -> OpResult<StatFsResponse> {
        let request = StatFsRequest { cred: Some(cred) };
        self.meta.rpc("statfs", request, |mut c, r| async move { c.stat_fs(r).await }).await
    }

    // ---- directories -----------------------------------------------------------------------

    pub fn opendir(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino, read: true, write: false, dir: true, listing_end: None });
        fh
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// The offset at which directory handle `fh`'s listing ended, if it did since its open or
    /// last rewind.
    pub fn listing_end(&self, fh: u64) -> Option<u64> {
        lock(&self.handles).get(&fh).and_then(|h| h.listing_end)
    }

    pub fn set_listing_end(&self, fh: u64, end: Option<u64>) {
        if let Some(h) = lock(&self.handles).get_mut(&fh) {
            h.listing_end = end;
        }
    }

    /// Entries after `cookie` (0: from the start; the server's cookies are above 2).
    pub async fn readdir(&self, cred: Credentials, ino: u64, cookie: u64, plus: bool) -> OpResult<ReadDirResponse> {
        let request = ReadDirRequest { cred: Some(cred), ino, cookie, limit: READDIR_BATCH, plus };
        let r = self.meta.rpc("readdir", request, |mut c, r| async move { c.read_dir(r).await }).await?;
        for e in &r.entries {
            if let Some(a) = &e.attr {
                self.remember_entry(a, ino, &e.name);
            }
        }
        Ok(r)
    }

    // ---- open, create, close ---------------------------------------------------------------

    fn add_handle(&self, ino: u64, flags: i32) -> u64 {
        let (read, write) = access_mode(flags);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino, read, write, dir: false, listing_end: None });
        fh
    }

    /// Opens a file; the answer says whether the kernel may keep its cached pages (the file is
    /// unchanged since this client last saw it). O_TRUNC never arrives here: the mount does not
    /// ask for FUSE_ATOMIC_O_TRUNC (see `init`), so the kernel truncates with a setattr.
    pub async fn open(&self, cred: Credentials, ino: u64, flags: i32) -> OpResult<(u64, Attr, bool)> {
        let (read, write) = access_mode(flags);
        let inode = self.inode(ino);
        let mut io = inode.io.lock().await;
        let r = self
            .with_session(|session| {
                let request = OpenRequest {
                    cred: Some(cred.clone()),
                    time: Some(now()),
                    ino,
                    session,
                    open: Some(OpenMode { read, write, truncate: false }),
                };
                self.meta.rpc("open", request, |mut c, r| async move { c.open(r).await })
            })
            .await?;
        let attr = r.attr.ok_or(Errno::EIO)?;
        let keep_cache = self.note_open(&inode, &mut io, &attr, false);
        io.cred = cred;
        Ok((self.add_handle(ino, flags), attr, keep_cache))
    }

    /// Close-to-open: a fresh chunk map and size at each open; cached pages stay only if the
    /// file's (mtime, size) is what this client last saw.
    fn note_open(&self, inode: &Inode, io: &mut FileIo, attr: &Attr, truncated: bool) -> bool {
        io.first_chunk = None;
        let pending = inode.pending_end.load(Ordering::Relaxed) > 0 || !io.buf.is_empty() || !io.inflight.is_empty();
        let seen = seen_of(attr);
        let mut last = lock(&inode.seen);
        let keep = !truncated && (pending || *last == Some(seen));
        *last = Some(seen);
        if !pending {
            io.size = attr.size;
            io.chunks.clear();
            io.readahead = None;
            io.prefetch = None;
            io.generation += 1;
        } else {
            io.size = io.size.max(attr.size);
        }
        if truncated {
            io.size = attr.size;
            io.chunks.clear();
            io.readahead = None;
            io.prefetch = None;
            inode.pending_end.store(0, Ordering::Relaxed);
        }
        keep
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        self: &Arc<Self>,
        cred: Credentials,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> OpResult<(u64, Attr)> {
        let (read, write) = access_mode(flags);
        let sent = Instant::now();
        let r = self
            .with_session(|session| {
                let request = CreateRequest {
                    cred: Some(cred.clone()),
                    time: Some(now()),
                    parent,
                    name: name.clone(),
                    mode,
                    umask,
                    exclusive: flags & libc::O_EXCL != 0,
                    session,
                    open: Some(OpenMode { read, write, truncate: flags & libc::O_TRUNC != 0 }),
                    // The first flush writes with it instead of an AllocateChunk round. Until
                    // then no replica has the chunk: reads of it find zeros (`read_span`).
                    allocate_first_chunk: true,
                };
                self.meta.rpc("create", request, |mut c, r| async move { c.create(r).await })
            })
            .await;
        // Opening an existing file leaves the directory as it was; a create answers the
        // directory's new attributes (older servers do not: then they are fetched).
        match &r {
            Ok(r) if !r.created => {}
            Ok(CreateResponse { parent_attr: Some(dir), .. }) => self.cache.dir_known(parent, *dir, sent),
            _ => self.dir_changed(parent, r.is_ok()),
        }
        let r = r?;
        let attr = r.attr.ok_or(Errno::EIO)?;
        if r.created {
            // A new file has no xattrs (the kernel asks before the first write).
            self.cache.note_no_caps(attr.ino, sent);
        }
        let inode = self.inode(attr.ino);
        let mut io = inode.io.lock().await;
        self.note_open(&inode, &mut io, &attr, flags & libc::O_TRUNC != 0 || r.created);
        io.cred = cred;
        if r.created {
            io.first_chunk = r.first_chunk.filter(|c| c.index == 0);
        }
        Ok((self.add_handle(attr.ino, flags), attr))
    }

    /// flush(2) of a handle (each close): writes out buffered data and drops the POSIX locks
    /// of the closing owner.
    pub async fn flush(&self, ino: u64, owner: u64) -> OpResult<()> {
        let result = self.write_back(ino).await;
        if lock(&self.lock_owners).remove(&(ino, owner)) {
            self.release_owner(ino, owner, true, false).await;
        }
        result
    }

    pub async fn release(self: &Arc<Self>, fh: u64, flock_owner: Option<u64>) -> OpResult<()> {
        let Some(handle) = lock(&self.handles).remove(&fh) else { return Err(Errno::EBADF) };
        let ino = handle.ino;
        let result = self.write_back(ino).await;
        if let Some(owner) = flock_owner {
            if lock(&self.lock_owners).remove(&(ino, owner)) {
                self.release_owner(ino, owner, true, true).await;
            }
        }
        self.close_later(ClosedHandle {
            ino,
            open: Some(OpenMode { read: handle.read, write: handle.write, truncate: false }),
        });
        // The last handle of the inode: drop its state (what it saw stays for keep_cache).
        let still_open = lock(&self.handles).values().any(|h| h.ino == ino);
        if !still_open {
            let inode = self.inode(ino);
            let mut io = inode.io.lock().await;
            if io.buf.is_empty() && io.inflight.is_empty() {
                inode.pending_end.store(0, Ordering::Relaxed);
                *lock(&inode.kill_suid) = None;
                // The next open fetches a fresh chunk map anyway: free the memory now. The
                // inode's entry itself stays (small), with what it saw for keep_cache.
                io.chunks = HashMap::new();
                io.readahead = None;
                io.prefetch = None;
            }
        }
        result
    }

    /// Queues the close of a released handle (see closer.rs).
    fn close_later(self: &Arc<Self>, handle: ClosedHandle) {
        if self.closer.push(handle) {
            let core = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CLOSE_BATCH_WINDOW).await;
                core.send_closes().await;
            });
        }
    }

    /// Sends the batch of queued closes this send was started for (see `Closer::take`).
    async fn send_closes(&self) {
        loop {
            let (handles, more) = self.closer.take();
            if handles.is_empty() {
                return;
            }
            let count = handles.len();
            let request =
                CloseManyRequest { cred: Some(root_cred()), time: Some(now()), session: self.session(), handles };
            let r = self.meta.rpc("close_many", request, |mut c, r| async move { c.close_many(r).await }).await;
            if let Err(e) = r {
                // The handles stay counted until the session ends or expires.
                tracing::warn!(count, error = ?e, "closing handles failed");
            }
            if !more {
                return;
            }
        }
    }

    async fn release_owner(&self, ino: u64, owner: u64, posix: bool, flock: bool) {
        let request = ReleaseOwnerRequest {
            cred: Some(root_cred()),
            time: Some(now()),
            ino,
            session: self.session(),
            owner,
            posix,
            flock,
        };
        let r = self.meta.rpc("release_owner", request, |mut c, r| async move { c.release_owner(r).await }).await;
        if let Err(e) = r {
            tracing::warn!(ino, owner, error = ?e, "releasing locks failed");
        }
    }

    // ---- data path -------------------------------------------------------------------------

    /// A write(2) of `data` at `offset`; `kill_suid`: the kernel flagged it
    /// FUSE_WRITE_KILL_SUIDGID (its caller lacks CAP_FSETID; with FUSE_HANDLE_KILLPRIV_V2 the
    /// kernel leaves dropping setuid/setgid to the filesystem, and the metaserver drops them
    /// when it commits a write by a caller other than root).
    pub async fn write(
        self: &Arc<Self>,
        cred: Credentials,
        ino: u64,
        offset: u64,
        data: &[u8],
        kill_suid: bool,
    ) -> OpResult<u32> {
        let inode = self.inode(ino);
        let mut io = inode.io.lock().await;
        buffer_write(&inode, &mut io, cred, offset, data, kill_suid);
        if io.buf.bytes() >= WRITE_BUFFER_BYTES_MAX {
            self.start_flush(&inode, &mut io).await?;
        }
        Ok(data.len() as u32)
    }

    /// [`Core::write`] done on the caller's thread when it needs no waiting: the file's I/O
    /// state is free and the buffer stays below the size that sends it. `None` otherwise (the
    /// caller then runs `write`). A FUSE write answered here skips the hand-off to the async
    /// runtime, whose thread wake-up was most of a buffered write's 180 µs on this VM.
    pub fn try_write_now(
        &self,
        cred: &Credentials,
        ino: u64,
        offset: u64,
        data: &[u8],
        kill_suid: bool,
    ) -> Option<u32> {
        let inode = self.inode(ino);
        let mut io = inode.io.try_lock().ok()?;
        if io.buf.bytes() + data.len() as u64 >= WRITE_BUFFER_BYTES_MAX {
            return None;
        }
        buffer_write(&inode, &mut io, cred.clone(), offset, data, kill_suid);
        Some(data.len() as u32)
    }

    /// Sends the buffer in the background. Up to WRITE_FLUSHES_IN_FLIGHT flushes run at once
    /// (a sequential writer streams continuously); one that overlaps a flush in flight waits
    /// for it, so a later write to the same bytes never lands before an earlier one.
    async fn start_flush(self: &Arc<Self>, inode: &Inode, io: &mut FileIo) -> OpResult<()> {
        if io.buf.is_empty() {
            return Ok(());
        }
        let (start, end) = (io.buf.start(), io.buf.end());
        if io.inflight.iter().any(|f| f.start < end && start < f.end) {
            self.await_inflight(io).await?;
        }
        while io.inflight.len() >= WRITE_FLUSHES_IN_FLIGHT {
            self.await_oldest(io).await?;
        }
        let pieces = io.buf.take_by_chunk(self.chunk_size());
        let first = if pieces.contains_key(&0) { io.first_chunk.take() } else { None };
        let core = self.clone();
        let cred = io.cred.clone();
        let ino = inode.ino;
        // Not synced: every replica has applied the data when the flush ends (it survives a
        // killed server process); fsync makes it durable.
        let task = tokio::spawn(async move { core.write_out(cred, ino, pieces, end, first, false, None).await });
        io.inflight.push_back(InFlight { start, end, task });
        Ok(())
    }

    async fn await_oldest(&self, io: &mut FileIo) -> OpResult<()> {
        if let Some(f) = io.inflight.pop_front() {
            let flushed = f.task.await.unwrap_or(Err(Errno::EIO))?;
            apply_flushed(io, flushed);
        }
        Ok(())
    }

    /// Waits for every flush in flight; the first error is returned after all have ended.
    async fn await_inflight(&self, io: &mut FileIo) -> OpResult<()> {
        let mut result = Ok(());
        while !io.inflight.is_empty() {
            if let Err(e) = self.await_oldest(io).await {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Everything written through this client is on every replica and committed.
    async fn settle(&self, inode: &Inode, io: &mut FileIo) -> OpResult<()> {
        self.settle_with(inode, io, false).await
    }

    /// `settle`; with `durable`, the final write is synced and so is every chain that took
    /// unsynced writes of the file since its last fsync.
    async fn settle_with(&self, inode: &Inode, io: &mut FileIo, durable: bool) -> OpResult<()> {
        let result = self.settle_buffer(inode, io, durable, None).await;
        // Only the flush right after the create may use the chunk it allocated: later, a
        // truncation or another client may have cut it away.
        io.first_chunk = None;
        result?;
        if durable {
            self.sync_unsynced(io, inode.ino).await?;
        }
        Ok(())
    }

    /// `settle`, with `change` made by the final commit: the attributes after it, or `None`
    /// when there was nothing to commit or the combined change failed (then the data is
    /// committed alone, and the caller makes the change by itself, which reports why it fails).
    async fn settle_changing(&self, inode: &Inode, io: &mut FileIo, change: AttrChange) -> OpResult<Option<Attr>> {
        let result = self.settle_buffer(inode, io, false, Some(change)).await;
        io.first_chunk = None;
        result
    }

    async fn settle_buffer(
        &self,
        inode: &Inode,
        io: &mut FileIo,
        sync: bool,
        change: Option<AttrChange>,
    ) -> OpResult<Option<Attr>> {
        self.await_inflight(io).await?;
        if io.buf.is_empty() {
            // Every write is committed, and with it what it dropped.
            *lock(&inode.kill_suid) = None;
            return Ok(None);
        }
        let end = io.buf.end();
        let pieces = io.buf.take_by_chunk(self.chunk_size());
        let first = if pieces.contains_key(&0) { io.first_chunk.take() } else { None };
        let mut flushed = self.write_out(io.cred.clone(), inode.ino, pieces, end, first, sync, change).await?;
        let changed = flushed.changed.take();
        apply_flushed(io, flushed);
        // Everything written is committed, by a commit that dropped setuid/setgid if needed.
        *lock(&inode.kill_suid) = None;
        if let Some(seen) = lock(&inode.seen).as_mut() {
            // Our own writes do not invalidate our own page cache.
            seen.2 = io.size;
        }
        Ok(changed)
    }

    /// fsync: a header-only `sync` write through the chain of every chunk that took unsynced
    /// writes (the chunkserver then fsyncs its store on every replica). Chunks whose sync
    /// failed stay listed for the next fsync.
    async fn sync_unsynced(&self, io: &mut FileIo, ino: u64) -> OpResult<()> {
        if io.unsynced.is_empty() {
            return Ok(());
        }
        let cred = io.cred.clone();
        let pending: Vec<ChunkEntry> = std::mem::take(&mut io.unsynced).into_values().collect();
        let syncs = pending.into_iter().map(|entry| {
            let cred = cred.clone();
            async move {
                let r = self.sync_chunk(&cred, ino, entry.clone()).await;
                (entry, r)
            }
        });
        let mut result = Ok(());
        for (entry, r) in futures::future::join_all(syncs).await {
            if let Err(e) = r {
                io.unsynced.insert(entry.index, entry);
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Syncs one chunk's chain. A chunk that is gone or replaced (a truncation) has nothing
    /// left to sync; a moved version is synced at the new version; a failed replica is
    /// reported and the remaining chain synced.
    async fn sync_chunk(&self, cred: &Credentials, ino: u64, mut entry: ChunkEntry) -> OpResult<()> {
        let deadline = tokio::time::Instant::now() + self.meta.timeout();
        let mut attempts = 0;
        let mut stale = Backoff::new(CHUNK_STALE_BACKOFF_MIN, CHUNK_STALE_BACKOFF_MAX);
        loop {
            let failed = match self.chunks.write(&entry, self.chunk_size(), &[], true).await {
                Ok(()) => return Ok(()),
                Err(ChunkIoError::Chain { failed, message, .. }) => {
                    tracing::warn!(ino, index = entry.index, chunk_id = entry.chunk_id, %failed, %message, "chain sync failed");
                    Some(failed)
                }
                Err(ChunkIoError::Stale { message }) => {
                    tracing::debug!(ino, index = entry.index, chunk_id = entry.chunk_id, %message, "stale chunk version on sync");
                    None
                }
                Err(e @ ChunkIoError::NoSpace { .. }) => {
                    tracing::warn!(ino, index = entry.index, error = %e, "chunk sync refused");
                    return Err(Errno::ENOSPC);
                }
                Err(e) => {
                    tracing::warn!(ino, index = entry.index, error = %e, "chunk sync failed");
                    return Err(Errno::EIO);
                }
            };
            if failed.is_some() {
                attempts += 1;
            }
            if attempts >= CHUNK_WRITE_ATTEMPTS || tokio::time::Instant::now() >= deadline {
                return Err(Errno::EIO);
            }
            let current = self.current_entry(cred, ino, entry.index).await?;
            entry = match current {
                Some(c) if same_version(&c, &entry) => match failed {
                    Some(failed) => self.report_failure(cred, ino, &entry, vec![failed], false).await?,
                    None => {
                        // A repair between its version bump and its commit: wait for it.
                        stale.wait().await;
                        c
                    }
                },
                Some(c) if c.chunk_id == entry.chunk_id => c,
                // Cut away or replaced: the data written there is gone anyway.
                _ => return Ok(()),
            };
        }
    }

    /// The chunk entry at `index` as the metaserver has it now (None: a hole).
    async fn current_entry(&self, cred: &Credentials, ino: u64, index: u64) -> OpResult<Option<ChunkEntry>> {
        let request = GetChunksRequest { cred: Some(cred.clone()), ino, first_index: index, count: 1 };
        let r = self.meta.rpc("get_chunks", request, |mut c, r| async move { c.get_chunks(r).await }).await?;
        Ok(r.chunks.into_iter().find(|c| c.index == index))
    }

    /// fsync(2)/fdatasync(2): everything written through this client is durable on every
    /// replica and the size committed.
    pub async fn fsync(&self, ino: u64) -> OpResult<()> {
        let Some(inode) = lock(&self.inodes).get(&ino).cloned() else { return Ok(()) };
        let mut io = inode.io.lock().await;
        self.settle_with(&inode, &mut io, true).await
    }

    /// close/flush: everything written through this client is on every replica (applied,
    /// not necessarily synced) and the size committed.
    pub async fn write_back(&self, ino: u64) -> OpResult<()> {
        let Some(inode) = lock(&self.inodes).get(&ino).cloned() else { return Ok(()) };
        let mut io = inode.io.lock().await;
        self.settle(&inode, &mut io).await
    }

    /// Writes buffered pieces to their chunks (in parallel) and commits the new size, with
    /// `change` when given (falling back to the commit alone if the combined change fails).
    #[allow(clippy::too_many_arguments)]
    async fn write_out(
        &self,
        cred: Credentials,
        ino: u64,
        pieces: BTreeMap<u64, Vec<(u64, Bytes)>>,
        end: u64,
        mut first: Option<ChunkEntry>,
        sync: bool,
        change: Option<AttrChange>,
    ) -> OpResult<Flushed> {
        let started = Instant::now();
        let bytes: usize = pieces.values().flatten().map(|(_, d)| d.len()).sum();
        let writes = pieces.iter().map(|(index, pieces)| {
            let known = if *index == 0 { first.take() } else { None };
            self.write_chunk(cred.clone(), ino, *index, pieces, known, sync)
        });
        let entries = futures::future::try_join_all(writes).await?;
        let written = started.elapsed();
        let chunk_indexes: Vec<u64> = pieces.keys().copied().collect();
        let commit = |then_set: Option<AttrChange>| {
            let (cred, chunk_indexes) = (cred.clone(), chunk_indexes.clone());
            self.with_session(move |session| {
                let request = CommitWriteRequest {
                    cred: Some(cred.clone()),
                    time: Some(now()),
                    ino,
                    session,
                    size: end,
                    chunk_indexes: chunk_indexes.clone(),
                    then_set,
                };
                self.meta.rpc("commit_write", request, |mut c, r| async move { c.commit_write(r).await })
            })
        };
        let (r, changed) = match change {
            None => (commit(None).await?, false),
            Some(change) => match commit(Some(change)).await {
                Ok(r) => (r, true),
                Err(e) => {
                    tracing::debug!(ino, errno = ?e, "commit with an attribute change failed; committing alone");
                    (commit(None).await?, false)
                }
            },
        };
        let attr = r.attr.ok_or(Errno::EIO)?;
        // The commit made the chunks written no longer fresh (they exist on every replica).
        let entries = entries.into_iter().map(|e| ChunkEntry { fresh: false, ..e }).collect();
        tracing::debug!(
            ino,
            bytes,
            chunks_ms = written.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "flushed"
        );
        let size = attr.size;
        Ok(Flushed { size, entries, synced: sync, changed: changed.then_some(attr) })
    }

    async fn allocate(&self, cred: &Credentials, ino: u64, index: u64) -> OpResult<ChunkEntry> {
        let r = self
            .with_session(|session| {
                let request = AllocateChunkRequest { cred: Some(cred.clone()), time: Some(now()), ino, session, index };
                self.meta.rpc("allocate_chunk", request, |mut c, r| async move { c.allocate_chunk(r).await })
            })
            .await?;
        r.chunk.ok_or(Errno::EIO)
    }

    /// One chunk's pieces through its chain (`known`: the entry, when the create allocated
    /// it; else `AllocateChunk`); a failed replica is reported and the write is retried with
    /// the chain the metaserver answers.
    async fn write_chunk(
        &self,
        cred: Credentials,
        ino: u64,
        index: u64,
        pieces: &[(u64, Bytes)],
        known: Option<ChunkEntry>,
        sync: bool,
    ) -> OpResult<ChunkEntry> {
        let mut entry = match known {
            Some(entry) => entry,
            None => self.allocate(&cred, ino, index).await?,
        };
        let deadline = tokio::time::Instant::now() + self.meta.timeout();
        let mut attempts = 0;
        let mut stale = Backoff::new(CHUNK_STALE_BACKOFF_MIN, CHUNK_STALE_BACKOFF_MAX);
        loop {
            match self.chunks.write(&entry, self.chunk_size(), pieces, sync).await {
                Ok(()) => return Ok(entry),
                Err(ChunkIoError::Chain { primary, failed, message }) => {
                    attempts += 1;
                    tracing::warn!(ino, index, chunk_id = entry.chunk_id, %primary, %failed, %message, "chain write failed");
                    if attempts >= CHUNK_WRITE_ATTEMPTS || tokio::time::Instant::now() >= deadline {
                        return Err(Errno::EIO);
                    }
                    entry = self.report_failure(&cred, ino, &entry, vec![failed], false).await?;
                }
                Err(ChunkIoError::Stale { message }) => {
                    // The chunk's version moved on (a repair or a concurrent writer's report):
                    // nothing failed, write again with the current entry.
                    tracing::debug!(ino, index, chunk_id = entry.chunk_id, %message, "stale chunk version; refetching");
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Errno::EIO);
                    }
                    let current = self.allocate(&cred, ino, index).await?;
                    if same_version(&current, &entry) {
                        // The replicas are ahead of the map: a repair is between its version
                        // bump and its commit. Wait for it (until the operation timeout).
                        stale.wait().await;
                    } else {
                        attempts += 1;
                        if attempts >= CHUNK_WRITE_ATTEMPTS {
                            return Err(Errno::EIO);
                        }
                    }
                    entry = current;
                }
                Err(e @ ChunkIoError::NoSpace { .. }) => {
                    // A full disk is not a failed replica: dropping it from the chain would
                    // only shed redundancy. The application gets ENOSPC, as from a local disk.
                    tracing::warn!(ino, index, chunk_id = entry.chunk_id, error = %e, "chunk write refused");
                    return Err(Errno::ENOSPC);
                }
                Err(e) => {
                    tracing::warn!(ino, index, error = %e, "chunk write failed");
                    return Err(Errno::EIO);
                }
            }
        }
    }

    async fn report_failure(
        &self,
        cred: &Credentials,
        ino: u64,
        entry: &ChunkEntry,
        failed: Vec<String>,
        corrupt: bool,
    ) -> OpResult<ChunkEntry> {
        let request = ReportChunkFailureRequest {
            cred: Some(cred.clone()),
            time: Some(now()),
            ino,
            session: self.session(),
            index: entry.index,
            chunk_id: entry.chunk_id,
            version: entry.version,
            failed_addresses: failed,
            corrupt,
        };
        let r =
            self.meta.rpc("report_chunk_failure", request, |mut c, r| async move { c.report_chunk_failure(r).await });
        match r.await {
            Ok(r) => r.chunk.ok_or(Errno::EIO),
            // The version moved on (someone else reported first): fetch the entry again.
            Err(e) if e == Errno::ESTALE => self.allocate(cred, ino, entry.index).await,
            Err(e) => Err(e),
        }
    }

    /// The chunk entry at `index` (None: a hole), from the cache or the metaserver.
    async fn chunk_entry(&self, io: &mut FileIo, ino: u64, index: u64) -> OpResult<Option<ChunkEntry>> {
        if let Some(e) = io.chunks.get(&index) {
            return Ok(e.clone());
        }
        let cred = io.cred.clone();
        let request = GetChunksRequest { cred: Some(cred), ino, first_index: index, count: CHUNK_MAP_BATCH };
        let r = self.meta.rpc("get_chunks", request, |mut c, r| async move { c.get_chunks(r).await }).await?;
        let chunk_size = if r.chunk_size_bytes > 0 { r.chunk_size_bytes } else { self.chunk_size() };
        // Indexes up to the last one answered are known; so are those past the end of file.
        let last = r.chunks.iter().map(|c| c.index).max().unwrap_or(index).max(index);
        for i in index..index.saturating_add(u64::from(CHUNK_MAP_BATCH)) {
            if i <= last || i.saturating_mul(chunk_size) >= r.size {
                io.chunks.insert(i, None);
            }
        }
        for c in r.chunks {
            io.chunks.insert(c.index, Some(c));
        }
        Ok(io.chunks.get(&index).cloned().flatten())
    }

    /// Reads from the file; an answer served from the readahead window shares its memory.
    pub async fn read(self: &Arc<Self>, ino: u64, offset: u64, size: u32) -> OpResult<Bytes> {
        let inode = self.inode(ino);
        let mut io = inode.io.lock().await;
        self.settle(&inode, &mut io).await?;
        let end_of_file = io.size;
        if offset >= end_of_file || size == 0 {
            return Ok(Bytes::new());
        }
        let want = u64::from(size).min(end_of_file - offset);
        // A prefetch covering this read becomes the readahead window.
        if io.prefetch.as_ref().is_some_and(|p| p.start <= offset && offset < p.start + p.len) {
            if let Some(mut p) = io.prefetch.take() {
                if let Ok(Ok(fetched)) = (&mut p.task).await {
                    apply_refreshed(&mut io, fetched.refreshed);
                    io.readahead = Some((p.start, fetched.data));
                }
            }
        }
        if let Some((ra_offset, data)) = &io.readahead {
            if offset >= *ra_offset && offset + want <= ra_offset + data.len() as u64 {
                let from = (offset - ra_offset) as usize;
                let out = data.slice(from..from + want as usize);
                io.last_read_end = offset + want;
                self.maybe_prefetch(ino, &mut io).await;
                return Ok(out);
            }
        }
        let sequential = offset == io.last_read_end;
        let fetch = if sequential { want.max(READAHEAD_BYTES).min(end_of_file - offset) } else { want };
        let pieces = self.pieces(&mut io, ino, offset, fetch).await?;
        let generation = io.generation;
        // Random reads run in parallel; a sequential stream keeps the inode locked so the
        // reads queued behind it find the readahead window instead of fetching it again.
        let guard = if sequential {
            Some(io)
        } else {
            drop(io);
            None
        };
        let Fetched { data, refreshed } = self.fetch(ino, fetch, pieces).await?;
        let mut io = match guard {
            Some(io) => io,
            None => inode.io.lock().await,
        };
        apply_refreshed(&mut io, refreshed);
        if io.generation == generation {
            io.last_read_end = offset + want;
            if fetch > want {
                let out = data.slice(0..want as usize);
                io.readahead = Some((offset, data));
                self.maybe_prefetch(ino, &mut io).await;
                return Ok(out);
            }
        }
        Ok(data.slice(0..want as usize))
    }

    /// The chunk pieces of `[offset, offset + len)` with their entries (None: a hole).
    async fn pieces(
        &self,
        io: &mut FileIo,
        ino: u64,
        offset: u64,
        len: u64,
    ) -> OpResult<Vec<(ChunkSpan, Option<ChunkEntry>)>> {
        let mut out = Vec::new();
        for span in split_range(offset, len, self.chunk_size()) {
            out.push((span, self.chunk_entry(io, ino, span.index).await?));
        }
        Ok(out)
    }

    /// Reads the pieces in parallel, `len` bytes in all (holes and bytes past a chunk's length
    /// are zeros).
    async fn fetch(&self, ino: u64, len: u64, pieces: Vec<(ChunkSpan, Option<ChunkEntry>)>) -> OpResult<Fetched> {
        if let [(span, Some(entry))] = pieces.as_slice() {
            // The whole range inside one chunk (the usual readahead window): its read is the
            // answer, zero-filled past the chunk's length.
            let (mut data, fresh) = self.read_span(ino, entry, span.offset_in_chunk, span.len).await?;
            data.resize_zeros(len as usize);
            return Ok(Fetched { data, refreshed: fresh.map(|e| (span.index, e)).into_iter().collect() });
        }
        let reads = pieces.iter().map(|(span, entry)| async move {
            match entry {
                None => Ok((span, Rope::new(), None)),
                Some(entry) => {
                    self.read_span(ino, entry, span.offset_in_chunk, span.len).await.map(|(d, fresh)| (span, d, fresh))
                }
            }
        });
        let (mut data, mut refreshed) = (Rope::new(), Vec::new());
        for (span, mut piece, fresh) in futures::future::try_join_all(reads).await? {
            // The pieces are in order and adjacent; a short one is padded with zeros.
            data.resize_zeros(span.offset_in_range as usize);
            piece.resize_zeros(span.len as usize);
            data.append(piece);
            refreshed.extend(fresh.map(|e| (span.index, e)));
        }
        data.resize_zeros(len as usize);
        Ok(Fetched { data, refreshed })
    }

    /// Once a sequential reader is past the middle of the readahead window, the next window is
    /// fetched in the background, so reading and fetching overlap.
    async fn maybe_prefetch(self: &Arc<Self>, ino: u64, io: &mut FileIo) {
        let Some((ra_offset, data)) = &io.readahead else { return };
        let (start, half) = (ra_offset + data.len() as u64, ra_offset + data.len() as u64 / 2);
        if io.prefetch.is_some() || io.last_read_end < half || start >= io.size {
            return;
        }
        let len = READAHEAD_BYTES.min(io.size - start);
        let Ok(pieces) = self.pieces(io, ino, start, len).await else { return };
        let core = self.clone();
        let task = tokio::spawn(async move { core.fetch(ino, len, pieces).await });
        io.prefetch = Some(Prefetch { start, len, task });
    }

    /// Reads a piece of one chunk; the second value is a refreshed entry (Some(None): the
    /// chunk is gone, a hole now) when the cached one turned out stale.
    /// Reads `[offset, offset + len)` of a chunk, failing over between replicas; when every
    /// replica fails, the map may be behind: a version bump (failed write, healing) reaches the
    /// replicas before the map records it, and a leader that dies in between leaves the map
    /// behind until the new leader catches it up. So: fetch the entry again, ask the metaserver
    /// to catch the map up (a failure report naming no replica), and retry with backoff until
    /// the operation timeout. Answers the data and, when the entry changed, the new one (`None`
    /// inside: the chunk is gone, a hole).
    async fn read_span(
        &self,
        ino: u64,
        entry: &ChunkEntry,
        offset: u64,
        len: u64,
    ) -> OpResult<(Rope, Option<Option<ChunkEntry>>)> {
        let deadline = Instant::now() + self.meta.timeout();
        let mut backoff = Backoff::new(CHUNK_READ_RETRY_BACKOFF_MIN, CHUNK_READ_RETRY_BACKOFF_MAX);
        let mut current = entry.clone();
        let mut changed = false;
        loop {
            let error = match self.chunks.read(&current, offset, len).await {
                Ok(d) => return Ok((d, changed.then_some(Some(current)))),
                Err(e) => e,
            };
            let missing = matches!(error, ChunkIoError::Missing { .. });
            if missing && current.fresh {
                tracing::debug!(
                    ino,
                    chunk_id = current.chunk_id,
                    "no replica has the fresh chunk yet; checking the map"
                );
            } else {
                tracing::warn!(ino, chunk_id = current.chunk_id, version = current.version, error = %error, "chunk read failed on every replica; refreshing the chunk map");
            }
            if Instant::now() >= deadline {
                return Err(Errno::EIO);
            }
            let request = GetChunksRequest { cred: Some(root_cred()), ino, first_index: current.index, count: 1 };
            let r = self.meta.rpc("get_chunks", request, |mut c, r| async move { c.get_chunks(r).await }).await?;
            let Some(latest) = r.chunks.into_iter().find(|c| c.index == current.index) else {
                return Ok((Rope::new(), Some(None)));
            };
            if latest.chunk_id == current.chunk_id && latest.version == current.version {
                if missing && latest.fresh {
                    // Allocated ahead of its first write (a create allocates the first chunk)
                    // and no write committed yet: no replica has it, and its bytes are zeros.
                    // A committed chunk that no replica has is a failure, handled below.
                    return Ok((Rope::new(), (changed || latest != current).then_some(Some(latest))));
                }
                // Same entry, and it did not read: ask for the catch-up; its answer is the
                // entry to read with (ESTALE: the version moved on meanwhile, fetch again).
                match self.report_failure(&root_cred(), ino, &current, Vec::new(), false).await {
                    Ok(caught_up) => current = caught_up,
                    Err(e) if e == Errno::EIO || e == Errno::ESTALE => current = latest,
                    Err(e) => return Err(e),
                }
            } else {
                current = latest;
            }
            changed = true;
            backoff.wait().await;
        }
    }

    /// fallocate: mode 0 extends the file; PUNCH_HOLE|KEEP_SIZE writes zeros over the range.
    pub async fn fallocate(
        self: &Arc<Self>,
        cred: Credentials,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> OpResult<()> {
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if mode == 0 {
            // Like ext4, the file grows to cover the range and its mtime and ctime change even
            // when it does not grow: a size change to max(size, end) does both.
            self.write_back(ino).await?;
            let attr = self.getattr(cred.clone(), ino).await?;
            let size = self.local_size(&attr).max(end);
            self.setattr(cred, ino, Some(fh), None, None, None, Some(size), None, None).await?;
            return Ok(());
        }
        if mode != PUNCH {
            return Err(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let attr = self.getattr(cred.clone(), ino).await?;
        let end = end.min(self.local_size(&attr));
        if end <= offset {
            return Ok(());
        }
        // Zeros go only into chunks that hold data: a hole stays a hole (and takes no blocks),
        // which is what `cp --sparse=always` asks for with every run of zeros it skips. Buffered
        // writes are committed first, so the map says which chunks hold data.
        self.write_back(ino).await?;
        let spans = split_range(offset, end - offset, self.chunk_size());
        let mut with_data = Vec::with_capacity(spans.len());
        {
            let inode = self.inode(ino);
            let mut io = inode.io.lock().await;
            for span in spans {
                if self.chunk_entry(&mut io, ino, span.index).await?.is_some_and(|e| !e.fresh) {
                    with_data.push(span);
                }
            }
        }
        let zeros = vec![0u8; 1024 * 1024];
        for span in with_data {
            let (mut at, span_end) = (offset + span.offset_in_range, offset + span.offset_in_range + span.len);
            while at < span_end {
                let n = (span_end - at).min(zeros.len() as u64);
                self.write(cred.clone(), ino, at, &zeros[..n as usize], false).await?;
                at += n;
            }
        }
        self.write_back(ino).await
    }

    /// SEEK_DATA / SEEK_HOLE over the chunk map: a chunk that is not in the map, or that no
    /// committed write reached (`fresh`; this file's own writes are committed first), is a hole.
    pub async fn lseek(&self, ino: u64, offset: u64, whence: i32) -> OpResult<u64> {
        let inode = self.inode(ino);
        let mut io = inode.io.lock().await;
        self.settle(&inode, &mut io).await?;
        let size = io.size;
        if offset >= size {
            return Err(Errno::from_i32(libc::ENXIO));
        }
        let chunk_size = self.chunk_size();
        let last_index = (size - 1) / chunk_size;
        let mut index = offset / chunk_size;
        while index <= last_index {
            let data = self.chunk_entry(&mut io, ino, index).await?.is_some_and(|e| !e.fresh);
            match (whence, data) {
                (libc::SEEK_DATA, true) | (libc::SEEK_HOLE, false) => {
                    return Ok(offset.max(index * chunk_size).min(size))
                }
                _ => index += 1,
            }
        }
        if whence == libc::SEEK_DATA {
            Err(Errno::from_i32(libc::ENXIO))
        } else {
            Ok(size)
        }
    }

    pub async fn copy_file_range(
        self: &Arc<Self>,
        cred: Credentials,
        ino_in: u64,
        offset_in: u64,
        ino_out: u64,
        offset_out: u64,
        len: u64,
    ) -> OpResult<u32> {
        let len = len.min(WRITE_BUFFER_BYTES_MAX).min(u64::from(u32::MAX));
        let data = self.read(ino_in, offset_in, len as u32).await?;
        if data.is_empty() {
            return Ok(0);
        }
        // Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves dropping setuid/setgid to the filesystem
        // here too; the commit by a caller other than root drops them.
        let kill_suid = cred.uid != 0;
        self.write(cred, ino_out, offset_out, &data, kill_suid).await
    }

    // ---- locks -----------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub async fn getlk(
        &self,
        cred: Credentials,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> OpResult<Option<Lock>> {
        let request = GetLockRequest {
            cred: Some(cred),
            ino,
            session: self.session(),
            owner,
            r#type: lock_type(typ)? as i32,
            start,
            len: lock_len(start, end),
        };
        let r = self.meta.rpc("getlk", request, |mut c, r| async move { c.get_lock(r).await }).await?;
        Ok(r.conflict)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        cred: Credentials,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        wait: bool,
    ) -> OpResult<()> {
        let kind = lock_type(typ)?;
        let request = SetLockRequest {
            cred: Some(cred),
            time: None,
            ino,
            session: 0,
            owner,
            pid,
            r#type: kind as i32,
            start,
            len: lock_len(start, end),
            wait,
        };
        self.lock_call(ino, owner, kind, wait, request).await
    }

    /// flock(2): the open file's lock, independent of the POSIX locks of the same file (as on
    /// Linux). `owner` is the open file's, the same the kernel gives `release`.
    pub async fn flock(&self, cred: Credentials, ino: u64, owner: u64, typ: i32, pid: u32, wait: bool) -> OpResult<()> {
        let kind = lock_type(typ)?;
        let request =
            FlockRequest { cred: Some(cred), time: None, ino, session: 0, owner, pid, r#type: kind as i32, wait };
        self.lock_call(ino, owner, kind, wait, request).await
    }

    /// Sends a lock request (F_SETLK[W] or flock) until it has an answer: a blocking wait that
    /// the server ended (leader change, shutdown) is asked again.
    async fn lock_call<R: LockCall>(
        &self,
        ino: u64,
        owner: u64,
        kind: LockType,
        wait: bool,
        mut request: R,
    ) -> OpResult<()> {
        if kind != LockType::Unlock {
            // So that the close of this owner's last handle releases what it holds.
            lock(&self.lock_owners).insert((ino, owner));
        }
        loop {
            request.stamp(self.session());
            let r = if wait {
                self.meta.rpc_unbounded(R::WAIT_OP, request.clone(), R::send).await
            } else {
                self.meta.rpc(R::OP, request.clone(), R::send).await
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e == Errno::EINTR && wait => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A lock request the metaserver answers with a `LockResponse`.
trait LockCall: Clone + Send + Sync + 'static {
    const OP: &'static str;
    const WAIT_OP: &'static str;
    /// Sets the session and the time of this attempt.
    fn stamp(&mut self, session: u64);
    fn send(
        client: Client,
        request: tonic::Request<Self>,
    ) -> impl std::future::Future<Output = Result<tonic::Response<LockResponse>, tonic::Status>> + Send;
}

/// `impl LockCall` for a request type: its op names (metrics, logs) and its RPC method.
macro_rules! lock_call {
    ($request:ty, $op:literal, $wait_op:literal, $method:ident) => {
        impl LockCall for $request {
            const OP: &'static str = $op;
            const WAIT_OP: &'static str = $wait_op;
            fn stamp(&mut self, session: u64) {
                (self.session, self.time) = (session, Some(now()));
            }
            async fn send(
                mut client: Client,
                request: tonic::Request<Self>,
            ) -> Result<tonic::Response<LockResponse>, tonic::Status> {
                client.$method(request).await
            }
        }
    };
}
lock_call!(SetLockRequest, "setlk", "setlkw", set_lock);
lock_call!(FlockRequest, "flock", "flockw", flock);

fn apply_refreshed(io: &mut FileIo, refreshed: Vec<(u64, Option<ChunkEntry>)>) {
    for (index, entry) in refreshed {
        io.chunks.insert(index, entry);
    }
}

/// Takes a write into the file's buffer (it reaches the chunkservers when the buffer is sent).
fn buffer_write(inode: &Inode, io: &mut FileIo, cred: Credentials, offset: u64, data: &[u8], kill_suid: bool) {
    io.buf.write(offset, data);
    if kill_suid {
        *lock(&inode.kill_suid) = Some(cred.clone());
    }
    io.generation += 1;
    io.readahead = None;
    io.prefetch = None;
    io.cred = cred;
    inode.pending_end.fetch_max(offset + data.len() as u64, Ordering::Relaxed);
}

fn apply_flushed(io: &mut FileIo, flushed: Flushed) {
    io.size = io.size.max(flushed.size);
    for e in flushed.entries {
        if flushed.synced {
            io.unsynced.remove(&e.index);
        } else {
            io.unsynced.insert(e.index, e.clone());
        }
        io.chunks.insert(e.index, Some(e));
    }
}

/// Whether two entries of one chunk index name the same chunk at the same version.
fn same_version(a: &ChunkEntry, b: &ChunkEntry) -> bool {
    a.chunk_id == b.chunk_id && a.version == b.version
}

/// Doubling waits, from `min` up to `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, max }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

fn seen_of(attr: &Attr) -> (i64, u32, u64) {
    let m = attr.mtime.unwrap_or_default();
    (m.sec, m.nsec, attr.size)
}

/// (read, write) of open(2) flags.
pub fn access_mode(flags: i32) -> (bool, bool) {
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => (false, true),
        libc::O_RDWR => (true, true),
        _ => (true, false),
    }
}

fn lock_type(typ: i32) -> OpResult<LockType> {
    match typ {
        libc::F_RDLCK => Ok(LockType::Shared),
        libc::F_WRLCK => Ok(LockType::Exclusive),
        libc::F_UNLCK => Ok(LockType::Unlock),
        _ => Err(Errno::EINVAL),
    }
}

/// FUSE lock ranges are inclusive with OFFSET_MAX for "to the end"; the metaserver's use a
/// length with 0 for "to the end".
pub fn lock_len(start: u64, end: u64) -> u64 {
    if end >= OFFSET_MAX || end < start {
        0
    } else {
        end - start + 1
    }
}

/// The inclusive end of a metaserver lock range, for F_GETLK answers.
pub fn lock_end(start: u64, len: u64) -> u64 {
    if len == 0 {
        OFFSET_MAX
    } else {
        start.saturating_add(len - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ranges_convert_both_ways() {
        assert_eq!(lock_len(0, OFFSET_MAX), 0);
        assert_eq!(lock_len(10, 19), 10);
        assert_eq!(lock_len(5, 5), 1);
        assert_eq!(lock_end(10, 10), 19);
        assert_eq!(lock_end(7, 0), OFFSET_MAX);
        for (s, e) in [(0, 0), (3, 100), (100, OFFSET_MAX)] {
            assert_eq!(lock_end(s, lock_len(s, e)), e);
        }
    }

    #[test]
    fn open_access_modes() {
        assert_eq!(access_mode(libc::O_RDONLY), (true, false));
        assert_eq!(access_mode(libc::O_WRONLY | libc::O_APPEND), (false, true));
        assert_eq!(access_mode(libc::O_RDWR | libc::O_TRUNC), (true, true));
    }

    #[test]
    fn lock_types() {
        assert_eq!(lock_type(libc::F_RDLCK), Ok(LockType::Shared));
        assert_eq!(lock_type(libc::F_WRLCK), Ok(LockType::Exclusive));
        assert_eq!(lock_type(libc::F_UNLCK), Ok(LockType::Unlock));
        assert_eq!(lock_type(99), Err(Errno::EINVAL));
    }
}
