//! The fuser adapter: each kernel request is handed to a Tokio task, which calls `Core` and
//! replies from there, so a slow request (a lock wait, a chunk write) never holds up others.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_proto::meta::{Attr, StatFsResponse, TimeSet};
use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle as Runtime;

use super::attr::{credentials, timespec, type_from_mode};
use super::core::{lock_end, Core};
use super::signals;
use crate::limits::{
    FUSE_BLKSIZE_BYTES, FUSE_LOCK_SIGNAL_POLL, FUSE_MAX_BACKGROUND, FUSE_MAX_READAHEAD_BYTES, FUSE_MAX_WRITE_BYTES,
};

/// Capacity reported by statfs: the metaserver does not track free space, so the filesystem
/// reports a nominal 1 PiB of which the used bytes are taken.
const STATFS_NOMINAL_BYTES: u64 = 1 << 50;
const STATFS_NOMINAL_INODES: u64 = 1 << 32;
const STATFS_FRSIZE_BYTES: u64 = 4096;

/// Total and free blocks (of `STATFS_FRSIZE_BYTES`) for statfs: the live chunkservers' capacity
/// and free space divided by the replication factor (what files can still take), or — when the
/// metaserver knows no chunkserver capacity — a nominal size minus the bytes used.
fn statfs_blocks(s: &StatFsResponse) -> (u64, u64) {
    if s.chunkserver_capacity_bytes > 0 {
        let copies = u64::from(s.replication_factor.max(1));
        let blocks = s.chunkserver_capacity_bytes / copies / STATFS_FRSIZE_BYTES;
        let free = (s.chunkserver_free_bytes / copies / STATFS_FRSIZE_BYTES).min(blocks);
        return (blocks, free);
    }
    let blocks = STATFS_NOMINAL_BYTES / STATFS_FRSIZE_BYTES;
    let used = s.bytes_used.div_ceil(STATFS_FRSIZE_BYTES).min(blocks);
    (blocks, blocks - used)
}

pub struct CairnFs {
    core: Arc<Core>,
    rt: Runtime,
    attr_ttl: Duration,
    entry_ttl: Duration,
}

impl CairnFs {
    pub fn new(core: Arc<Core>, rt: Runtime, attr_ttl: Duration, entry_ttl: Duration) -> CairnFs {
        CairnFs { core, rt, attr_ttl, entry_ttl }
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(f);
    }

    /// Runs a lock request (`set`) and answers it. A blocking wait may last for ever, so its
    /// caller must stay killable: a signal pending for it ends the wait with EINTR (see
    /// signals.rs).
    fn spawn_lock<F>(&self, req: &Request, sleep: bool, reply: ReplyEmpty, set: F)
    where
        F: std::future::Future<Output = Result<(), Errno>> + Send + 'static,
    {
        let caller = req.pid();
        self.spawn(async move {
            let result = if sleep {
                tokio::select! {
                    // A grant that is ready wins over a signal seen in the same poll.
                    biased;
                    r = set => r,
                    () = signals::interrupted(caller, FUSE_LOCK_SIGNAL_POLL) => Err(Errno::EINTR),
                }
            } else {
                set.await
            };
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

fn cred_of(req: &Request) -> cairn_proto::meta::Credentials {
    credentials(req.uid(), req.gid(), req.pid())
}

/// Whether directory handle `fh`'s listing already ended at `offset`: then the kernel's READDIR
/// there (the one after the last entries, which every listing ends with) is answered empty
/// without asking the metaserver. POSIX leaves unspecified whether entries added after the
/// open or the last rewind show up. Offset 0 is a rewind: it always asks, and forgets the end.
fn listing_ended(core: &Core, fh: FileHandle, offset: u64) -> bool {
    if offset == 0 {
        core.set_listing_end(fh.0, None);
        return false;
    }
    core.listing_end(fh.0) == Some(offset)
}

/// The offset the kernel asks at after a READDIR that started at `offset` and last added the
/// entry with `cookie` (0: none of the metaserver's): past ".." (2) at least.
fn next_offset(offset: u64, cookie: u64) -> u64 {
    cookie.max(offset).max(2)
}

/// What a READDIRPLUS answer says about "." and "..": the inode number and the type are all the
/// kernel uses of them.
fn dot_attr(ino: INodeNo) -> fuser::FileAttr {
    fuser::FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: FUSE_BLKSIZE_BYTES,
        flags: 0,
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    use cairn_proto::meta::time_set::Value;
    t.map(|t| TimeSet {
        value: Some(match t {
            TimeOrNow::Now => Value::Now(true),
            TimeOrNow::SpecificTime(at) => Value::At(timespec(at)),
        }),
    })
}

#[derive(Clone, Copy)]
struct Ttls {
    attr: Duration,
    entry: Duration,
}

impl Ttls {
    fn entry(self, core: &Core, reply: ReplyEntry, attr: &Attr) {
        let fa = core.kernel_attr(attr);
        reply.entry_with_ttls(&self.attr, &self.entry, &fa, Generation(attr.generation));
    }
}

impl CairnFs {
    fn ttls(&self) -> Ttls {
        Ttls { attr: self.attr_ttl, entry: self.entry_ttl }
    }
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Not FUSE_ATOMIC_O_TRUNC: with it the kernel sets the size to 0 and drops the cached
        // pages on every open with O_TRUNC, before it checks write access for O_RDONLY|O_TRUNC.
        // A running program's own binary then vanishes under it (SIGBUS) although the open
        // fails with ETXTBSY. Without it the kernel checks first and truncates with a setattr.
        let wanted = [
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            // The superblock gets SB_NOSEC: the kernel asks for security.capability (a GETXATTR
            // round trip) before the first write after the file's attributes were fetched, not
            // before every write. The filesystem drops setuid/setgid itself: the metaserver
            // does when it commits a write, truncate or chown by a caller other than root.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        for flag in wanted {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!(?flag, "kernel lacks a FUSE capability");
            }
        }
        let _ = config.set_max_write(FUSE_MAX_WRITE_BYTES);
        let _ = config.set_max_readahead(FUSE_MAX_READAHEAD_BYTES);
        let _ = config.set_max_background(FUSE_MAX_BACKGROUND);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (core, cred, name, ttls) = (self.core.clone(), cred_of(req), name_bytes(name), self.ttls());
        self.spawn(async move {
            match core.lookup(cred, parent.0, name).await {
                Ok(attr) => ttls.entry(&core, reply, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.core.forget(ino.0);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.getattr_cached(cred, ino.0).await {
                Ok((attr, ttl)) => reply.attr(&ttl, &core.kernel_attr(&attr)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (core, cred, ttl) = (self.core.clone(), cred_of(req), self.attr_ttl);
        let (atime, mtime) = (time_set(atime), time_set(mtime));
        self.spawn(async move {
            let mode = mode.map(|m| m & 0o7777);
            match core.setattr(cred, ino.0, fh.map(|f| f.0), mode, uid, gid, size, atime, mtime).await {
                Ok(attr) => reply.attr(&ttl, &core.kernel_attr(&attr)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.readlink(cred, ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let (core, cred, name, ttls) = (self.core.clone(), cred_of(req), name_bytes(name), self.ttls());
        self.spawn(async move {
            let kind = type_from_mode(mode);
            match core.mknod(cred, parent.0, name, kind, mode, umask, u64::from(rdev)).await {
                Ok(attr) => ttls.entry(&core, reply, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (core, cred, name, ttls) = (self.core.clone(), cred_of(req), name_bytes(name), self.ttls());
        self.spawn(async move {
            match core.mkdir(cred, parent.0, name, mode, umask).await {
                Ok(attr) => ttls.entry(&core, reply, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, cred, name) = (self.core.clone(), cred_of(req), name_bytes(name));
        self.spawn(async move {
            match core.unlink(cred, parent.0, name, false).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, cred, name) = (self.core.clone(), cred_of(req), name_bytes(name));
        self.spawn(async move {
            match core.unlink(cred, parent.0, name, true).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (core, cred, ttls) = (self.core.clone(), cred_of(req), self.ttls());
        let (name, target) = (name_bytes(link_name), target.as_os_str().as_bytes().to_vec());
        self.spawn(async move {
            match core.symlink(cred, parent.0, name, target).await {
                Ok(attr) => ttls.entry(&core, reply, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        self.spawn(async move {
            match core.rename(cred, parent.0, name, newparent.0, newname, flags.bits()).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (core, cred, name, ttls) = (self.core.clone(), cred_of(req), name_bytes(newname), self.ttls());
        self.spawn(async move {
            match core.link(cred, ino.0, newparent.0, name).await {
                Ok(attr) => ttls.entry(&core, reply, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.open(cred, ino.0, flags.0).await {
                Ok((fh, _attr, keep_cache)) => {
                    let flags = if keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                    reply.opened(FileHandle(fh), flags);
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.read(ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let cred = cred_of(req);
        let kill_suid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        if let Some(n) = self.core.try_write_now(&cred, ino.0, offset, data, kill_suid) {
            return reply.written(n);
        }
        let (core, data) = (self.core.clone(), data.to_vec());
        self.spawn(async move {
            match core.write(cred, ino.0, offset, &data, kill_suid).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.flush(ino.0, lock_owner.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.release(fh.0, lock_owner.map(|o| o.0)).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let core = self.core.clone();
        self.spawn(async move {
            match core.fsync(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            // Opening a directory checks that it is one, and that it may be read.
            match core.getattr(cred, ino.0).await {
                Ok(attr) if attr.r#type != cairn_proto::meta::FileType::Directory as i32 => reply.error(Errno::ENOTDIR),
                Ok(_) => reply.opened(FileHandle(core.opendir(ino.0)), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if listing_ended(&self.core, fh, offset) {
            return reply.ok();
        }
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            if offset == 0 && reply.add(ino, 1, fuser::FileType::Directory, ".") {
                return reply.ok();
            }
            if offset <= 1 && reply.add(INodeNo(core.parent_of(ino.0)), 2, fuser::FileType::Directory, "..") {
                return reply.ok();
            }
            let mut cookie = if offset <= 2 { 0 } else { offset };
            loop {
                let r = match core.readdir(cred.clone(), ino.0, cookie, false).await {
                    Ok(r) => r,
                    Err(e) => return reply.error(e),
                };
                for e in &r.entries {
                    let kind = super::attr::file_type(e.r#type);
                    if reply.add(INodeNo(e.ino), e.cookie, kind, OsStr::from_bytes(&e.name)) {
                        return reply.ok();
                    }
                    cookie = e.cookie;
                }
                if r.eof || r.entries.is_empty() {
                    core.set_listing_end(fh.0, Some(next_offset(offset, cookie)));
                    return reply.ok();
                }
            }
        });
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        if listing_ended(&self.core, fh, offset) {
            return reply.ok();
        }
        let (core, cred, ttls) = (self.core.clone(), cred_of(req), self.ttls());
        self.spawn(async move {
            // The kernel links neither "." nor ".." into its caches from a READDIRPLUS answer
            // (fs/fuse/readdir.c, `fuse_direntplus_link`): only their inode numbers and types
            // reach getdents, so their attributes cost no metaserver call.
            if offset == 0 && reply.add(ino, 1, ".", &Duration::ZERO, &dot_attr(ino), Generation(0)) {
                return reply.ok();
            }
            let parent = INodeNo(core.parent_of(ino.0));
            if offset <= 1 && reply.add(parent, 2, "..", &Duration::ZERO, &dot_attr(parent), Generation(0)) {
                return reply.ok();
            }
            let mut cookie = if offset <= 2 { 0 } else { offset };
            loop {
                let r = match core.readdir(cred.clone(), ino.0, cookie, true).await {
                    Ok(r) => r,
                    Err(e) => return reply.error(e),
                };
                for e in &r.entries {
                    let Some(attr) = &e.attr else { continue };
                    let fa = core.kernel_attr(attr);
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(e.ino), e.cookie, name, &ttls.entry, &fa, Generation(attr.generation)) {
                        return reply.ok();
                    }
                    cookie = e.cookie;
                }
                if r.eof || r.entries.is_empty() {
                    core.set_listing_end(fh.0, Some(next_offset(offset, cookie)));
                    return reply.ok();
                }
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory changes are committed on a majority of metaservers before they are answered.
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.statfs(cred).await {
                Ok(s) => {
                    let (blocks, free) = statfs_blocks(&s);
                    let files = STATFS_NOMINAL_INODES.max(s.inodes_used);
                    let name_max = if s.name_bytes_max > 0 { s.name_bytes_max } else { 255 };
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        files,
                        files - s.inodes_used,
                        FUSE_BLKSIZE_BYTES,
                        name_max,
                        STATFS_FRSIZE_BYTES as u32,
                    );
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (core, cred, name, value) = (self.core.clone(), cred_of(req), name_bytes(name), value.to_vec());
        self.spawn(async move {
            match core.setxattr(cred, ino.0, name, value, flags as u32).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // The kernel asks for security.capability before every write to a file: answered here
        // when the file is known to have none, without a hand-off to the async runtime.
        if self.core.knows_no_caps(ino.0, name.as_bytes()) {
            return reply.error(Errno::ENODATA);
        }
        let (core, cred, name) = (self.core.clone(), cred_of(req), name_bytes(name));
        self.spawn(async move {
            match core.getxattr(cred, ino.0, name).await {
                Ok(v) => xattr_reply(reply, &v, size),
                Err(e) => reply.error(e),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.listxattr(cred, ino.0).await {
                Ok(v) => xattr_reply(reply, &v, size),
                Err(e) => reply.error(e),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (core, cred, name) = (self.core.clone(), cred_of(req), name_bytes(name));
        self.spawn(async move {
            match core.removexattr(cred, ino.0, name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.access(cred, ino.0, mask.bits() as u32).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (core, cred, name, ttl) = (self.core.clone(), cred_of(req), name_bytes(name), self.entry_ttl);
        self.spawn(async move {
            match core.create(cred, parent.0, name, mode, umask, flags).await {
                Ok((fh, attr)) => {
                    let fa = core.kernel_attr(&attr);
                    reply.created(&ttl, &fa, Generation(attr.generation), FileHandle(fh), FopenFlags::empty());
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.getlk(cred, ino.0, lock_owner.0, start, end, typ).await {
                Ok(Some(c)) => {
                    let typ = if c.r#type == cairn_proto::meta::LockType::Shared as i32 {
                        libc::F_RDLCK
                    } else {
                        libc::F_WRLCK
                    };
                    reply.locked(c.start, lock_end(c.start, c.len), typ, c.pid);
                }
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn_lock(req, sleep, reply, async move {
            core.setlk(cred, ino.0, lock_owner.0, start, end, typ, pid, sleep).await
        });
    }

    fn flock(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn_lock(req, sleep, reply, async move { core.flock(cred, ino.0, lock_owner.0, typ, pid, sleep).await });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.fallocate(cred, ino.0, fh.0, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let core = self.core.clone();
        self.spawn(async move {
            if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
                // The kernel answers SEEK_SET/CUR/END itself.
                return reply.error(Errno::EINVAL);
            }
            let Ok(offset) = u64::try_from(offset) else { return reply.error(Errno::ENXIO) };
            match core.lseek(ino.0, offset, whence).await {
                Ok(o) => reply.offset(o as i64),
                Err(e) => reply.error(e),
            }
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctls (isatty probes with TCGETS and expects ENOTTY).
        reply.error(Errno::ENOTTY);
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let (core, cred) = (self.core.clone(), cred_of(req));
        self.spawn(async move {
            match core.copy_file_range(cred, ino_in.0, offset_in, ino_out.0, offset_out, len).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }
}

fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statfs_counts_live_capacity_once_per_copy() {
        let s = StatFsResponse {
            replication_factor: 3,
            chunkserver_capacity_bytes: 3 * 1024 * STATFS_FRSIZE_BYTES,
            chunkserver_free_bytes: 3 * 1000 * STATFS_FRSIZE_BYTES,
            bytes_used: 5,
            ..Default::default()
        };
        assert_eq!(statfs_blocks(&s), (1024, 1000));
    }

    #[test]
    fn statfs_without_known_capacity_is_nominal_minus_used() {
        let s = StatFsResponse { bytes_used: STATFS_FRSIZE_BYTES + 1, ..Default::default() };
        let blocks = STATFS_NOMINAL_BYTES / STATFS_FRSIZE_BYTES;
        assert_eq!(statfs_blocks(&s), (blocks, blocks - 2));
    }
}
