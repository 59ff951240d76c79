//! `apply` for each namespace change. Deterministic: everything comes from the stored state and
//! the command (including its `now`); nothing from the clock, randomness or the environment.
//!
//! Each operation checks everything first and fails with an errno before changing anything it
//! cannot undo; all changes go through one [`Tx`], committed only on success.

use cairn_coordinator::rsm::store::StateRead;

use super::command::{Command, Op, OpenFlags, RenameFlags, Reply, SetAttr, TimeSet, XattrMode};
use super::errno::Errno;
use super::keys::{self, DENTRIES, INODES, META, OPEN, OPEN_WRITE, RECLAIM, SESSION_OPEN, XATTRS};
use super::perm::{self, MAY_EXEC, MAY_READ, MAY_WRITE};
use super::rows::{self, check_name, decode, encode, is_dot_or_dotdot, Fail, Res};
use super::tx::Tx;
use super::types::{
    Caller, Dentry, FileKind, FsParams, Inode, InodeId, Reclaim, Replica, SessionId, Timespec, Usage, MODE_BITS,
    S_ISGID, S_ISUID, S_IXGRP,
};
use super::xattr;
use crate::limits::{
    CHUNK_SIZES_BYTES, FILE_SIZE_BYTES_MAX, NLINK_MAX, REPLICATION_FACTOR_MAX, SYMLINK_TARGET_BYTES_MAX,
};

/// One command being applied: its transaction, caller, time and log index.
pub(crate) struct Apply<'a> {
    pub tx: Tx<'a>,
    caller: &'a Caller,
    now: Timespec,
    log_index: u64,
    usage: Usage,
    /// Inodes whose locks this command changed (waiters there should try again).
    pub lock_changes: Vec<InodeId>,
}

impl<'a> Apply<'a> {
    pub fn new(state: &'a dyn StateRead, command: &'a Command, log_index: u64) -> Res<Self> {
        let usage = rows::usage(state)?;
        Ok(Apply {
            tx: Tx::new(state),
            caller: &command.caller,
            now: command.now,
            log_index,
            usage,
            lock_changes: Vec::new(),
        })
    }

    /// Runs the operation; on success the changes are in `self.tx`.
    pub fn run(&mut self, op: &Op) -> Res<Reply> {
        if !matches!(op, Op::Format { .. }) && rows::fs_params(&self.tx)?.is_none() {
            return Err(Errno::NotConn.into());
        }
        let reply = match op {
            Op::Format { chunk_size_bytes, replication_factor } => {
                self.format(*chunk_size_bytes, *replication_factor)?
            }
            Op::Mknod { parent, name, kind, mode, umask, rdev } => {
                if matches!(kind, FileKind::Directory | FileKind::Symlink) {
                    return Err(Errno::Inval.into());
                }
                let parent_dir = self.creatable(*parent, name)?;
                if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) && !self.caller.is_root() {
                    return Err(Errno::Perm.into());
                }
                let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) { *rdev } else { 0 };
                Reply::Attr(self.make(parent_dir, name, *kind, mode & !umask, rdev, Vec::new())?)
            }
            Op::Mkdir { parent, name, mode, umask } => {
                let parent_dir = self.creatable(*parent, name)?;
                Reply::Attr(self.make(parent_dir, name, FileKind::Directory, mode & !umask, 0, Vec::new())?)
            }
            Op::Create { parent, name, mode, umask, exclusive, session, flags } => {
                self.create(*parent, name, mode & !umask, *exclusive, *session, *flags)?
            }
            Op::CreateWithChunk { parent, name, mode, umask, exclusive, session, flags, placement } => {
                self.create_with_chunk(*parent, name, mode & !umask, *exclusive, *session, *flags, placement)?
            }
            Op::Open { ino, session, flags } => {
                let inode = rows::existing(&self.tx, *ino)?;
                Reply::Attr(self.open(inode, *session, *flags)?)
            }
            Op::Close { ino, session } => self.close(*ino, *session, None)?,
            Op::CloseHandle { ino, session, write } => self.close(*ino, *session, Some(*write))?,
            Op::CloseHandles { session, handles } => self.close_handles(*session, handles)?,
            Op::Unlink { parent, name } => self.unlink(*parent, name)?,
            Op::Rmdir { parent, name } => self.rmdir(*parent, name)?,
            Op::Link { ino, new_parent, new_name } => self.link(*ino, *new_parent, new_name)?,
            Op::Symlink { parent, name, target } => {
                if target.is_empty() {
                    return Err(Errno::NoEnt.into());
                }
                if target.len() > SYMLINK_TARGET_BYTES_MAX {
                    return Err(Errno::NameTooLong.into());
                }
                let parent_dir = self.creatable(*parent, name)?;
                Reply::Attr(self.make(parent_dir, name, FileKind::Symlink, 0o777, 0, target.clone())?)
            }
            Op::Rename { parent, name, new_parent, new_name, flags } => {
                self.rename(*parent, name, *new_parent, new_name, *flags)?
            }
            Op::SetAttr { ino, attr } => self.setattr(*ino, attr)?,
            Op::SetXattr { ino, name, value, mode } => self.setxattr(*ino, name, value, *mode)?,
            Op::RemoveXattr { ino, name } => self.removexattr(*ino, name)?,
            Op::OpenSession { client_name, host, pid, ttl_ms } => {
                self.open_session(client_name, host, *pid, *ttl_ms)?
            }
            Op::CloseSession { session } => self.close_session(*session)?,
            Op::ExpireSessions { ids } => self.expire_sessions(ids)?,
            Op::SetLock { ino, owner, pid, kind, start, len } => {
                self.set_lock(*ino, *owner, *pid, *kind, *start, *len)?
            }
            Op::Flock { ino, owner, pid, kind } => self.flock(*ino, *owner, *pid, *kind)?,
            Op::ReleaseOwner { ino, owner, posix, flock } => {
                self.release_owner(*ino, *owner, *posix, *flock)?;
                Reply::Done
            }
            Op::AllocateChunk { ino, session, index, placement } => {
                self.allocate_chunk(*ino, *session, *index, placement)?
            }
            Op::CommitWrite { ino, session, size, chunk_indexes } => {
                self.commit_write(*ino, *session, *size, chunk_indexes)?
            }
            Op::CommitWriteSetAttr { ino, session, size, chunk_indexes, attr } => {
                // A truncation has more to do than the namespace change (see `SetAttr`).
                if attr.size.is_some() {
                    return Err(Errno::Inval.into());
                }
                self.commit_write(*ino, *session, *size, chunk_indexes)?;
                self.setattr(*ino, attr)?
            }
            Op::SetChunkReplicas { ino, index, chunk, expect_version, version, replicas } => {
                self.set_chunk_replicas(*ino, *index, *chunk, *expect_version, *version, replicas)?
            }
            Op::ChunkTruncated { ino, index, chunk, to_version, lost } => {
                self.chunk_truncated(*ino, *index, *chunk, *to_version, lost)?
            }
            Op::ReclaimInodes { inos } => self.reclaim_inodes(inos)?,
            Op::ChunksDeleted { chunks } => self.chunks_deleted(chunks)?,
            // Unwrapped before `run` (`apply_command_with_locks`); never nested.
            Op::Once { .. } => return Err(Errno::Inval.into()),
        };
        self.tx.put(META, keys::META_USAGE, encode(&self.usage));
        Ok(reply)
    }

    /// Who asks.
    pub(super) fn caller(&self) -> &Caller {
        self.caller
    }

    /// The log index of the command.
    pub(super) fn log_index(&self) -> u64 {
        self.log_index
    }

    /// The command's time (chosen by its proposer).
    pub(super) fn now(&self) -> Timespec {
        self.now
    }

    pub(super) fn put_inode(&mut self, inode: &Inode) {
        self.tx.put(INODES, keys::inode_key(inode.ino), encode(inode));
    }

    pub(super) fn get(&self, ino: InodeId) -> Res<Inode> {
        rows::existing(&self.tx, ino)
    }

    fn put_entry(&mut self, parent: InodeId, name: &[u8], entry: Dentry) {
        self.tx.put(DENTRIES, keys::dentry_key(parent, name), encode(&entry));
    }

    fn format(&mut self, chunk_size_bytes: u64, replication_factor: u32) -> Res<Reply> {
        if let Some(params) = rows::fs_params(&self.tx)? {
            return Ok(Reply::Formatted(params));
        }
        if !CHUNK_SIZES_BYTES.contains(&chunk_size_bytes)
            || replication_factor == 0
            || replication_factor > REPLICATION_FACTOR_MAX
        {
            return Err(Errno::Inval.into());
        }
        let params =
            FsParams { chunk_size_bytes, replication_factor, created: self.now, fs_generation: self.log_index };
        self.tx.put(META, keys::META_FS, encode(&params));
        self.tx.put(META, keys::META_NEXT_INODE, encode(&(InodeId::ROOT.0 + 1)));
        let root = Inode {
            ino: InodeId::ROOT,
            kind: FileKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            rdev: 0,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            generation: self.log_index,
            parent: InodeId::ROOT,
            target: Vec::new(),
            open_handles: 0,
        };
        self.put_inode(&root);
        self.usage = Usage { inodes: 1, bytes: 0 };
        Ok(Reply::Formatted(params))
    }

    /// Checks that `name` may be created in `parent`: the parent is a searchable, writable
    /// directory and the name is valid and free. Returns the parent.
    fn creatable(&self, parent: InodeId, name: &[u8]) -> Res<Inode> {
        let dir = rows::directory(&self.tx, parent)?;
        perm::check(&dir, self.caller, MAY_EXEC)?;
        if is_dot_or_dotdot(name) {
            return Err(Errno::Exist.into());
        }
        check_name(name)?;
        if rows::entry(&self.tx, parent, name)?.is_some() {
            return Err(Errno::Exist.into());
        }
        // A directory removed while still open (nlink 0) accepts no new entries.
        if dir.nlink == 0 {
            return Err(Errno::NoEnt.into());
        }
        perm::check(&dir, self.caller, MAY_WRITE)?;
        Ok(dir)
    }

    fn allocate_inode(&mut self) -> Res<InodeId> {
        let next: u64 = match self.tx.get(META, keys::META_NEXT_INODE)? {
            Some(bytes) => decode("next inode", &bytes)?,
            None => InodeId::ROOT.0 + 1,
        };
        self.tx.put(META, keys::META_NEXT_INODE, encode(&(next + 1)));
        Ok(InodeId(next))
    }

    /// Creates an inode of `kind` named `name` in `parent` (already checked by `creatable`).
    fn make(
        &mut self,
        mut parent: Inode,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u64,
        target: Vec<u8>,
    ) -> Res<Inode> {
        let is_dir = kind == FileKind::Directory;
        if is_dir && parent.nlink >= NLINK_MAX {
            return Err(Errno::MLink.into());
        }
        let mut mode = mode & MODE_BITS;
        // setgid directories: new inodes take the directory's group; subdirectories inherit
        // the setgid bit. Linux drops a requested setgid bit of a group-executable file when
        // the creator is not in that group.
        let gid = if parent.mode & S_ISGID != 0 { parent.gid } else { self.caller.gid };
        if is_dir {
            mode &= 0o1777;
            if parent.mode & S_ISGID != 0 {
                mode |= S_ISGID;
            }
        } else if mode & S_ISGID != 0 && mode & S_IXGRP != 0 && !self.caller.is_root() && !self.caller.in_group(gid) {
            mode &= !S_ISGID;
        }
        let ino = self.allocate_inode()?;
        let size = target.len() as u64;
        let inode = Inode {
            ino,
            kind,
            mode,
            uid: self.caller.uid,
            gid,
            size,
            nlink: if is_dir { 2 } else { 1 },
            rdev,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            generation: self.log_index,
            parent: if is_dir { parent.ino } else { InodeId(0) },
            target,
            open_handles: 0,
        };
        self.put_inode(&inode);
        self.put_entry(parent.ino, name, Dentry { ino, kind });
        if is_dir {
            parent.nlink += 1;
        }
        parent.mtime = self.now;
        parent.ctime = self.now;
        self.put_inode(&parent);
        self.usage.inodes += 1;
        Ok(inode)
    }

    fn create(
        &mut self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        exclusive: bool,
        session: Option<SessionId>,
        flags: OpenFlags,
    ) -> Res<Reply> {
        let dir = rows::directory(&self.tx, parent)?;
        perm::check(&dir, self.caller, MAY_EXEC)?;
        check_name(name)?;
        let existing = if is_dot_or_dotdot(name) {
            Some(Dentry { ino: InodeId(0), kind: FileKind::Directory })
        } else {
            rows::entry(&self.tx, parent, name)?
        };
        if let Some(entry) = existing {
            if exclusive {
                return Err(Errno::Exist.into());
            }
            if entry.kind == FileKind::Directory {
                return Err(Errno::IsDir.into());
            }
            let inode = self.get(entry.ino)?;
            let attr = match session {
                Some(session) => self.open(inode, session, flags)?,
                None => inode,
            };
            return Ok(Reply::Created { attr, created: false });
        }
        let dir = self.creatable(parent, name)?;
        let inode = self.make(dir, name, FileKind::Regular, mode, 0, Vec::new())?;
        // A new file's creator may open it whatever its mode (as open(O_CREAT) on Linux).
        let attr = match session {
            Some(session) => self.add_handle(inode, session, flags.write || flags.truncate)?,
            None => inode,
        };
        Ok(Reply::Created { attr, created: true })
    }

    /// `create`, then the first chunk when the file is new and open for writing here, so a
    /// small file's writer needs no `AllocateChunk` round.
    #[allow(clippy::too_many_arguments)]
    fn create_with_chunk(
        &mut self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        exclusive: bool,
        session: SessionId,
        flags: OpenFlags,
        placement: &[Replica],
    ) -> Res<Reply> {
        let Reply::Created { attr, created } = self.create(parent, name, mode, exclusive, Some(session), flags)? else {
            return Err(Fail::Errno(Errno::Io));
        };
        let first_chunk = if created && (flags.write || flags.truncate) && !placement.is_empty() {
            match self.allocate_chunk(attr.ino, session, 0, placement)? {
                Reply::Chunk { chunk, .. } => Some(chunk),
                _ => None,
            }
        } else {
            None
        };
        let parent = if created { Some(self.get(parent)?) } else { None };
        Ok(Reply::CreatedWithChunkIn { attr, created, first_chunk, parent })
    }

    fn open(&mut self, mut inode: Inode, session: SessionId, flags: OpenFlags) -> Res<Inode> {
        let write = flags.write || flags.truncate;
        if inode.is_dir() && write {
            return Err(Errno::IsDir.into());
        }
        let mut mask = 0;
        if flags.read {
            mask |= MAY_READ;
        }
        if write {
            mask |= MAY_WRITE;
        }
        perm::check(&inode, self.caller, mask)?;
        // The session is checked before anything changes (O_TRUNC frees chunks).
        self.live_session(session)?;
        if flags.truncate && inode.kind == FileKind::Regular {
            let old_size = inode.size;
            self.set_size(&mut inode, 0);
            self.truncate_chunks(inode.ino, old_size, 0)?;
            inode.mtime = self.now;
            inode.ctime = self.now;
        }
        self.add_handle(inode, session, write)
    }

    fn add_handle(&mut self, mut inode: Inode, session: SessionId, write: bool) -> Res<Inode> {
        self.live_session(session)?;
        self.tx.put(SESSION_OPEN, keys::session_inode_key(session, inode.ino), Vec::new());
        let key = keys::open_key(inode.ino, session);
        let count: u32 = match self.tx.get(OPEN, &key)? {
            Some(bytes) => decode("open count", &bytes)?,
            None => 0,
        };
        self.tx.put(OPEN, key.clone(), encode(&(count + 1)));
        if write {
            let writers = self.write_handles(inode.ino, session)?;
            self.tx.put(OPEN_WRITE, key, encode(&(writers + 1)));
        }
        inode.open_handles += 1;
        self.put_inode(&inode);
        Ok(inode)
    }

    /// How many of the session's handles on `ino` were opened for writing (at least; see
    /// `close`).
    pub(super) fn write_handles(&self, ino: InodeId, session: SessionId) -> Res<u32> {
        match self.tx.get(OPEN_WRITE, &keys::open_key(ino, session))? {
            Some(bytes) => Ok(decode("write handle count", &bytes)?),
            None => Ok(0),
        }
    }

    /// Closes one handle of `session` on `ino`. `write` says whether it was opened for
    /// writing; when the client does not say, the write count drops only when every remaining
    /// handle is a write handle, so it may stay one too high until the session's last close of
    /// the file — erring towards "a writer may be active" (healing waits, see docs).
    fn close(&mut self, ino: InodeId, session: SessionId, write: Option<bool>) -> Res<Reply> {
        self.get(ino)?;
        let key = keys::open_key(ino, session);
        let count: u32 = match self.tx.get(OPEN, &key)? {
            Some(bytes) => decode("open count", &bytes)?,
            None => return Err(Errno::BadF.into()),
        };
        let writers = self.write_handles(ino, session)?;
        let last_writer = if count <= 1 {
            // The session's last handle on the file: a session without a handle holds no locks
            // there (as a process's locks go with its last descriptor of the file).
            self.tx.delete(OPEN, key.clone());
            self.tx.delete(OPEN_WRITE, key);
            self.tx.delete(SESSION_OPEN, keys::session_inode_key(session, ino));
            self.release_session_locks(ino, session)?;
            writers > 0
        } else {
            self.tx.put(OPEN, key.clone(), encode(&(count - 1)));
            let closes_writer = match write {
                Some(w) => w,
                None => writers >= count,
            };
            if closes_writer && writers > 0 {
                if writers == 1 {
                    self.tx.delete(OPEN_WRITE, key);
                } else {
                    self.tx.put(OPEN_WRITE, key, encode(&(writers - 1)));
                }
            }
            closes_writer && writers == 1
        };
        if last_writer {
            self.drop_unwritten_chunks(ino)?;
        }
        self.drop_handles(ino, 1)?;
        Ok(Reply::Done)
    }

    /// Closes each handle in turn. `close` fails with an errno only before it changes anything,
    /// so a handle that is already gone is skipped without undoing the others.
    fn close_handles(&mut self, session: SessionId, handles: &[(InodeId, bool)]) -> Res<Reply> {
        for &(ino, write) in handles {
            match self.close(ino, session, Some(write)) {
                Ok(_) | Err(Fail::Errno(_)) => {}
                Err(e @ Fail::Store(_)) => return Err(e),
            }
        }
        Ok(Reply::Done)
    }

    /// Uncounts `count` handles of `ino`; removes the inode when that was the last handle of an
    /// unlinked file.
    pub(super) fn drop_handles(&mut self, ino: InodeId, count: u32) -> Res<()> {
        let Some(mut inode) = rows::inode(&self.tx, ino)? else {
            return Ok(());
        };
        inode.open_handles = inode.open_handles.saturating_sub(count);
        if inode.nlink == 0 && inode.open_handles == 0 {
            self.destroy(&inode)
        } else {
            self.put_inode(&inode);
            Ok(())
        }
    }

    /// Truncates or extends a regular file's recorded size, keeping the usage counter.
    pub(super) fn set_size(&mut self, inode: &mut Inode, size: u64) {
        self.usage.bytes = self.usage.bytes.saturating_sub(inode.size).saturating_add(size);
        inode.size = size;
    }

    /// Removes an inode that has neither links nor open handles, with its xattrs; a regular
    /// file's id goes to the reclaim table (phase 2 deletes its chunks).
    fn destroy(&mut self, inode: &Inode) -> Res<()> {
        assert!(inode.nlink == 0 && inode.open_handles == 0, "destroying a live inode {}", inode.ino);
        self.tx.delete(INODES, keys::inode_key(inode.ino));
        for name in xattr::names(&self.tx, inode.ino)? {
            self.tx.delete(XATTRS, keys::xattr_key(inode.ino, &name));
        }
        if inode.kind == FileKind::Regular {
            let reclaim = Reclaim { size: inode.size, removed_at: self.log_index };
            self.tx.put(RECLAIM, keys::inode_key(inode.ino), encode(&reclaim));
        }
        self.usage.inodes = self.usage.inodes.saturating_sub(1);
        if inode.kind == FileKind::Regular {
            self.usage.bytes = self.usage.bytes.saturating_sub(inode.size);
        }
        Ok(())
    }

    /// Drops one link of a non-directory (or the last of a directory, `nlink` already 0).
    fn drop_link(&mut self, mut inode: Inode) -> Res<()> {
        if inode.is_dir() {
            inode.nlink = 0;
        } else {
            inode.nlink = inode.nlink.saturating_sub(1);
        }
        inode.ctime = self.now;
        if inode.nlink == 0 && inode.open_handles == 0 {
            self.destroy(&inode)
        } else {
            self.put_inode(&inode);
            Ok(())
        }
    }

    /// Looks up `name` in `parent` for removal: checks search and write permission on the
    /// parent, then the entry, then the sticky bit. Returns (parent, victim).
    fn removable(&self, parent: InodeId, name: &[u8]) -> Res<(Inode, Inode)> {
        let dir = rows::directory(&self.tx, parent)?;
        perm::check(&dir, self.caller, MAY_EXEC)?;
        check_name(name)?;
        let entry = rows::entry(&self.tx, parent, name)?.ok_or(Fail::Errno(Errno::NoEnt))?;
        perm::check(&dir, self.caller, MAY_WRITE)?;
        let victim = self.get(entry.ino)?;
        perm::check_sticky(&dir, &victim, self.caller)?;
        Ok((dir, victim))
    }

    fn unlink(&mut self, parent: InodeId, name: &[u8]) -> Res<Reply> {
        if is_dot_or_dotdot(name) {
            rows::directory(&self.tx, parent)?;
            return Err(Errno::IsDir.into());
        }
        let (mut dir, victim) = self.removable(parent, name)?;
        if victim.is_dir() {
            return Err(Errno::IsDir.into());
        }
        self.tx.delete(DENTRIES, keys::dentry_key(parent, name));
        dir.mtime = self.now;
        dir.ctime = self.now;
        self.put_inode(&dir);
        self.drop_link(victim)?;
        Ok(Reply::Done)
    }

    fn rmdir(&mut self, parent: InodeId, name: &[u8]) -> Res<Reply> {
        if name == b"." {
            rows::directory(&self.tx, parent)?;
            return Err(Errno::Inval.into());
        }
        if name == b".." {
            rows::directory(&self.tx, parent)?;
            return Err(Errno::NotEmpty.into());
        }
        let (mut dir, victim) = self.removable(parent, name)?;
        if !victim.is_dir() {
            return Err(Errno::NotDir.into());
        }
        if !rows::is_empty_dir(&self.tx, victim.ino)? {
            return Err(Errno::NotEmpty.into());
        }
        self.tx.delete(DENTRIES, keys::dentry_key(parent, name));
        dir.nlink = dir.nlink.saturating_sub(1);
        dir.mtime = self.now;
        dir.ctime = self.now;
        self.put_inode(&dir);
        self.drop_link(victim)?;
        Ok(Reply::Done)
    }

    fn link(&mut self, ino: InodeId, new_parent: InodeId, new_name: &[u8]) -> Res<Reply> {
        let mut inode = self.get(ino)?;
        let dir = self.creatable(new_parent, new_name)?;
        if inode.is_dir() {
            return Err(Errno::Perm.into());
        }
        if inode.nlink == 0 {
            return Err(Errno::NoEnt.into());
        }
        if inode.nlink >= NLINK_MAX {
            return Err(Errno::MLink.into());
        }
        let mut dir = dir;
        self.put_entry(new_parent, new_name, Dentry { ino, kind: inode.kind });
        dir.mtime = self.now;
        dir.ctime = self.now;
        self.put_inode(&dir);
        inode.nlink += 1;
        inode.ctime = self.now;
        self.put_inode(&inode);
        Ok(Reply::Attr(inode))
    }

    /// Whether `ino` is `ancestor` or lies below it (walking `..` up to the root).
    fn is_within(&self, mut ino: InodeId, ancestor: InodeId) -> Res<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == InodeId::ROOT {
                return Ok(false);
            }
            let inode = self.get(ino)?;
            assert!(inode.is_dir(), "walked from a non-directory {ino}");
            ino = inode.parent;
        }
    }

    fn rename(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Res<Reply> {
        if flags.exchange && flags.noreplace {
            return Err(Errno::Inval.into());
        }
        let old_dir = rows::directory(&self.tx, parent)?;
        let new_dir = rows::directory(&self.tx, new_parent)?;
        perm::check(&old_dir, self.caller, MAY_EXEC)?;
        perm::check(&new_dir, self.caller, MAY_EXEC)?;
        if is_dot_or_dotdot(name) || is_dot_or_dotdot(new_name) {
            return Err(Errno::Busy.into());
        }
        check_name(name)?;
        check_name(new_name)?;
        let source_entry = rows::entry(&self.tx, parent, name)?.ok_or(Fail::Errno(Errno::NoEnt))?;
        let target_entry = rows::entry(&self.tx, new_parent, new_name)?;
        if flags.exchange && target_entry.is_none() {
            return Err(Errno::NoEnt.into());
        }
        if flags.noreplace && target_entry.is_some() {
            return Err(Errno::Exist.into());
        }
        let source = self.get(source_entry.ino)?;
        let target = match target_entry {
            Some(e) => Some(self.get(e.ino)?),
            None => None,
        };
        // Renaming onto another link of the same inode succeeds and changes nothing (POSIX).
        if target.as_ref().is_some_and(|t| t.ino == source.ino) {
            return Ok(Reply::Done);
        }
        // Loops: a directory cannot move below itself; and (rename(2)'s "trap") the target
        // cannot be an ancestor of the source.
        if source.is_dir() && self.is_within(new_parent, source.ino)? {
            return Err(Errno::Inval.into());
        }
        if let Some(t) = target.as_ref().filter(|t| t.is_dir()) {
            if self.is_within(parent, t.ino)? {
                return Err(if flags.exchange { Errno::Inval } else { Errno::NotEmpty }.into());
            }
        }
        perm::check(&old_dir, self.caller, MAY_WRITE)?;
        perm::check(&new_dir, self.caller, MAY_WRITE)?;
        perm::check_sticky(&old_dir, &source, self.caller)?;
        if let Some(t) = &target {
            perm::check_sticky(&new_dir, t, self.caller)?;
        }
        // Linux checks permissions (may_delete) before the types of source and target.
        if let Some(t) = target.as_ref().filter(|_| !flags.exchange) {
            if source.is_dir() && !t.is_dir() {
                return Err(Errno::NotDir.into());
            }
            if !source.is_dir() && t.is_dir() {
                return Err(Errno::IsDir.into());
            }
        }
        let moves_dir = parent != new_parent;
        // A directory that changes parent has its `..` rewritten: that needs write permission
        // on the directory itself.
        if moves_dir && source.is_dir() {
            perm::check(&source, self.caller, MAY_WRITE)?;
        }
        if let Some(t) = target.as_ref().filter(|t| flags.exchange && moves_dir && t.is_dir()) {
            perm::check(t, self.caller, MAY_WRITE)?;
        }
        if let Some(t) = target.as_ref().filter(|t| !flags.exchange && t.is_dir()) {
            if !rows::is_empty_dir(&self.tx, t.ino)? {
                return Err(Errno::NotEmpty.into());
            }
        }
        if moves_dir && source.is_dir() && target.as_ref().is_none_or(|t| !t.is_dir()) && new_dir.nlink >= NLINK_MAX {
            return Err(Errno::MLink.into());
        }

        if flags.exchange {
            let Some(target) = target else { return Err(Errno::NoEnt.into()) };
            self.put_entry(parent, name, Dentry { ino: target.ino, kind: target.kind });
            self.put_entry(new_parent, new_name, Dentry { ino: source.ino, kind: source.kind });
            self.reparent(source, parent, new_parent)?;
            self.reparent(target, new_parent, parent)?;
        } else {
            self.tx.delete(DENTRIES, keys::dentry_key(parent, name));
            self.put_entry(new_parent, new_name, Dentry { ino: source.ino, kind: source.kind });
            if let Some(target) = target {
                if target.is_dir() {
                    let mut nd = self.get(new_parent)?;
                    nd.nlink = nd.nlink.saturating_sub(1);
                    self.put_inode(&nd);
                }
                self.drop_link(target)?;
            }
            self.reparent(source, parent, new_parent)?;
        }
        for dir in [parent, new_parent] {
            let mut d = self.get(dir)?;
            d.mtime = self.now;
            d.ctime = self.now;
            self.put_inode(&d);
        }
        Ok(Reply::Done)
    }

    /// Records that `inode` moved from directory `from` to directory `to`: its ctime, and for a
    /// directory its `..` and both parents' link counts.
    fn reparent(&mut self, mut inode: Inode, from: InodeId, to: InodeId) -> Res<()> {
        inode.ctime = self.now;
        if inode.is_dir() && from != to {
            inode.parent = to;
            let mut old = self.get(from)?;
            old.nlink = old.nlink.saturating_sub(1);
            self.put_inode(&old);
            let mut new = self.get(to)?;
            new.nlink += 1;
            self.put_inode(&new);
        }
        self.put_inode(&inode);
        Ok(())
    }

    fn setattr(&mut self, ino: InodeId, attr: &SetAttr) -> Res<Reply> {
        let mut inode = self.get(ino)?;
        let caller = self.caller;
        // Check every requested change before making any.
        if let Some(size) = attr.size {
            if inode.is_dir() {
                return Err(Errno::IsDir.into());
            }
            if inode.kind != FileKind::Regular {
                return Err(Errno::Inval.into());
            }
            if size > FILE_SIZE_BYTES_MAX {
                return Err(Errno::FBig.into());
            }
            if !attr.through_write_handle {
                perm::check(&inode, caller, MAY_WRITE)?;
            }
        }
        if attr.mode.is_some() && !perm::owns(&inode, caller) {
            return Err(Errno::Perm.into());
        }
        if let Some(uid) = attr.uid {
            if !(caller.is_root() || (caller.uid == inode.uid && uid == inode.uid)) {
                return Err(Errno::Perm.into());
            }
        }
        if let Some(gid) = attr.gid {
            if !(caller.is_root() || (caller.uid == inode.uid && (gid == inode.gid || caller.in_group(gid)))) {
                return Err(Errno::Perm.into());
            }
        }
        let explicit_time = matches!(attr.atime, Some(TimeSet::At(_))) || matches!(attr.mtime, Some(TimeSet::At(_)));
        let time_now = matches!(attr.atime, Some(TimeSet::Now)) || matches!(attr.mtime, Some(TimeSet::Now));
        if explicit_time && !perm::owns(&inode, caller) {
            return Err(Errno::Perm.into());
        }
        if time_now && !explicit_time && !perm::owns(&inode, caller) && !perm::permits(&inode, caller, MAY_WRITE) {
            return Err(Errno::Acces.into());
        }

        let mut changed = false;
        if let Some(size) = attr.size {
            let old_size = inode.size;
            self.set_size(&mut inode, size);
            self.truncate_chunks(ino, old_size, size)?;
            inode.mtime = self.now;
            if !caller.is_root() {
                kill_suid_on_write(&mut inode, caller);
            }
            changed = true;
        }
        if let Some(mode) = attr.mode {
            let mut mode = mode & MODE_BITS;
            if !caller.is_root() && !caller.in_group(inode.gid) {
                mode &= !S_ISGID;
            }
            inode.mode = mode;
            changed = true;
        }
        if attr.uid.is_some() || attr.gid.is_some() {
            if let Some(uid) = attr.uid {
                inode.uid = uid;
            }
            if let Some(gid) = attr.gid {
                inode.gid = gid;
            }
            // Linux clears setuid (and setgid of group-executable files) on every chown of a
            // non-directory, whoever asks.
            if !inode.is_dir() {
                kill_suid(&mut inode);
            }
            changed = true;
        }
        for (set, slot) in [(attr.atime, &mut inode.atime), (attr.mtime, &mut inode.mtime)] {
            match set {
                Some(TimeSet::Now) => *slot = self.now,
                Some(TimeSet::At(t)) => *slot = t,
                None => continue,
            }
            changed = true;
        }
        if changed {
            inode.ctime = self.now;
            self.put_inode(&inode);
        }
        Ok(Reply::Attr(inode))
    }

    fn setxattr(&mut self, ino: InodeId, name: &[u8], value: &[u8], mode: XattrMode) -> Res<Reply> {
        let mut inode = self.get(ino)?;
        xattr::check_write(&inode, self.caller, name, value.len())?;
        let exists = self.tx.get(XATTRS, &keys::xattr_key(ino, name))?.is_some();
        match mode {
            XattrMode::Create if exists => return Err(Errno::Exist.into()),
            XattrMode::Replace if !exists => return Err(Errno::NoData.into()),
            _ => {}
        }
        let mut total = name.len() + value.len();
        for (other, bytes) in xattr::all(&self.tx, ino)? {
            if other != name {
                total += other.len() + bytes.len();
            }
        }
        if total > crate::limits::XATTR_INODE_BYTES_MAX {
            return Err(Errno::NoSpc.into());
        }
        self.tx.put(XATTRS, keys::xattr_key(ino, name), value.to_vec());
        inode.ctime = self.now;
        self.put_inode(&inode);
        Ok(Reply::Done)
    }

    fn removexattr(&mut self, ino: InodeId, name: &[u8]) -> Res<Reply> {
        let mut inode = self.get(ino)?;
        xattr::check_write(&inode, self.caller, name, 0)?;
        let key = keys::xattr_key(ino, name);
        if self.tx.get(XATTRS, &key)?.is_none() {
            return Err(Errno::NoData.into());
        }
        self.tx.delete(XATTRS, key);
        inode.ctime = self.now;
        self.put_inode(&inode);
        Ok(Reply::Done)
    }
}

/// Clears setuid, and setgid when the group may execute (a setgid bit without group execute
/// means mandatory locking on Linux and stays).
pub(super) fn kill_suid(inode: &mut Inode) {
    inode.mode &= !S_ISUID;
    if inode.mode & S_IXGRP != 0 {
        inode.mode &= !S_ISGID;
    }
}

/// What a write or truncate by `caller`, who lacks CAP_FSETID, drops (Linux's
/// setattr_should_drop_suidgid): setuid, and setgid when the group may execute or the caller
/// is not in the file's group.
pub(super) fn kill_suid_on_write(inode: &mut Inode, caller: &Caller) {
    let outsider = !caller.in_group(inode.gid);
    kill_suid(inode);
    if outsider {
        inode.mode &= !S_ISGID;
    }
}
