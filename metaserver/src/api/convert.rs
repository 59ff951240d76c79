//! Conversions between `cairn.meta.v1` messages and namespace types, in one place.

use cairn_proto::meta as pb;
use tonic::Status;

use crate::chunks::{FsckChunk, FsckReport};
use crate::limits::CALLER_GROUPS_MAX;
use crate::namespace::locks::len_of;
use crate::namespace::{
    Caller, Chunk, ChunkserverId, FileKind, Inode, LockKind, OpenFlags, PosixLock, RenameFlags, Replica, TimeSet,
    Timespec, XattrMode,
};

pub fn caller(cred: Option<pb::Credentials>) -> Result<Caller, Status> {
    let cred = cred.ok_or_else(|| Status::invalid_argument("missing credentials"))?;
    if cred.groups.len() > CALLER_GROUPS_MAX {
        return Err(Status::invalid_argument(format!("more than {CALLER_GROUPS_MAX} supplementary groups")));
    }
    Ok(Caller { uid: cred.uid, gid: cred.gid, groups: cred.groups })
}

pub fn time(t: Option<pb::Timespec>) -> Result<Option<Timespec>, Status> {
    match t {
        None => Ok(None),
        Some(t) if t.nsec >= 1_000_000_000 => Err(Status::invalid_argument("nsec must be below 1e9")),
        Some(t) => Ok(Some(Timespec::new(t.sec, t.nsec))),
    }
}

pub fn timespec(t: Timespec) -> pb::Timespec {
    pb::Timespec { sec: t.sec, nsec: t.nsec }
}

pub fn file_type(kind: FileKind) -> pb::FileType {
    match kind {
        FileKind::Regular => pb::FileType::Regular,
        FileKind::Directory => pb::FileType::Directory,
        FileKind::Symlink => pb::FileType::Symlink,
        FileKind::Fifo => pb::FileType::Fifo,
        FileKind::Socket => pb::FileType::Socket,
        FileKind::CharDevice => pb::FileType::CharDevice,
        FileKind::BlockDevice => pb::FileType::BlockDevice,
    }
}

pub fn file_kind(value: i32) -> Result<FileKind, Status> {
    match pb::FileType::try_from(value) {
        Ok(pb::FileType::Regular) => Ok(FileKind::Regular),
        Ok(pb::FileType::Directory) => Ok(FileKind::Directory),
        Ok(pb::FileType::Symlink) => Ok(FileKind::Symlink),
        Ok(pb::FileType::Fifo) => Ok(FileKind::Fifo),
        Ok(pb::FileType::Socket) => Ok(FileKind::Socket),
        Ok(pb::FileType::CharDevice) => Ok(FileKind::CharDevice),
        Ok(pb::FileType::BlockDevice) => Ok(FileKind::BlockDevice),
        Ok(pb::FileType::Unspecified) | Err(_) => Err(Status::invalid_argument("unknown file type")),
    }
}

pub fn attr(inode: &Inode) -> pb::Attr {
    pb::Attr {
        ino: inode.ino.0,
        r#type: file_type(inode.kind) as i32,
        mode: inode.st_mode(),
        uid: inode.uid,
        gid: inode.gid,
        size: inode.size,
        nlink: inode.nlink,
        rdev: inode.rdev,
        atime: Some(timespec(inode.atime)),
        mtime: Some(timespec(inode.mtime)),
        ctime: Some(timespec(inode.ctime)),
        generation: inode.generation,
        open_handles: inode.open_handles,
        allocated_bytes: None,
    }
}

/// [`attr`] with the allocated bytes that `st_blocks` reports.
pub fn attr_allocated(inode: &Inode, allocated_bytes: u64) -> pb::Attr {
    pb::Attr { allocated_bytes: Some(allocated_bytes), ..attr(inode) }
}

pub fn open_flags(mode: Option<pb::OpenMode>) -> OpenFlags {
    let mode = mode.unwrap_or_default();
    OpenFlags { read: mode.read, write: mode.write, truncate: mode.truncate }
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// renameat2 flags; unknown bits are EINVAL in the namespace (as on Linux), so they map to an
/// impossible combination.
pub fn rename_flags(flags: u32) -> RenameFlags {
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
        return RenameFlags { noreplace: true, exchange: true };
    }
    RenameFlags { noreplace: flags & RENAME_NOREPLACE != 0, exchange: flags & RENAME_EXCHANGE != 0 }
}

/// setxattr flags; `None` for invalid combinations (EINVAL).
pub fn xattr_mode(flags: u32) -> Option<XattrMode> {
    match flags {
        0 => Some(XattrMode::Any),
        XATTR_CREATE => Some(XattrMode::Create),
        XATTR_REPLACE => Some(XattrMode::Replace),
        _ => None,
    }
}

pub fn time_set(t: Option<pb::TimeSet>) -> Result<Option<TimeSet>, Status> {
    match t.and_then(|t| t.value) {
        None => Ok(None),
        Some(pb::time_set::Value::Now(true)) => Ok(Some(TimeSet::Now)),
        Some(pb::time_set::Value::Now(false)) => Ok(None),
        Some(pb::time_set::Value::At(at)) => Ok(time(Some(at))?.map(TimeSet::At)),
    }
}

/// A lock type; `None` for an unspecified or unknown one (answered with EINVAL).
pub fn lock_kind(t: i32) -> Option<LockKind> {
    match pb::LockType::try_from(t).ok()? {
        pb::LockType::Shared => Some(LockKind::Shared),
        pb::LockType::Exclusive => Some(LockKind::Exclusive),
        pb::LockType::Unlock => Some(LockKind::Unlock),
        pb::LockType::Unspecified => None,
    }
}

pub fn lock_type(kind: LockKind) -> pb::LockType {
    match kind {
        LockKind::Shared => pb::LockType::Shared,
        LockKind::Exclusive => pb::LockType::Exclusive,
        LockKind::Unlock => pb::LockType::Unlock,
    }
}

pub fn lock(l: &PosixLock) -> pb::Lock {
    pb::Lock {
        r#type: lock_type(l.kind) as i32,
        start: l.start,
        len: len_of(l.start, l.end),
        pid: l.pid,
        session: l.owner.session.0,
        owner: l.owner.owner,
        fencing_token: l.token,
    }
}

pub fn replica(r: &Replica) -> pb::ChunkReplica {
    pb::ChunkReplica { chunkserver_id: r.server.0, address: r.addr.clone() }
}

/// A chunk as clients see it: replicas on servers that are not live are left out.
pub fn chunk_entry(index: u64, c: &Chunk, live: impl Fn(ChunkserverId) -> bool) -> pb::ChunkEntry {
    pb::ChunkEntry {
        index,
        chunk_id: c.id.0,
        version: c.version,
        replicas: c.replicas.iter().filter(|r| live(r.server)).map(replica).collect(),
        fresh: c.fresh,
    }
}

fn fsck_chunk(c: &FsckChunk) -> pb::FsckChunk {
    pb::FsckChunk {
        chunk_id: c.chunk.0,
        ino: c.ino.0,
        index: c.index,
        version: c.version,
        replicas: c.replicas.iter().map(replica).collect(),
    }
}

pub fn fsck(r: &FsckReport) -> pb::FsckResponse {
    pb::FsckResponse {
        errno: 0,
        chunks: r.chunks,
        under_replicated_count: r.under_replicated_count,
        unavailable_count: r.unavailable_count,
        orphan_count: r.orphan_count,
        under_replicated: r.under_replicated.iter().map(fsck_chunk).collect(),
        unavailable: r.unavailable.iter().map(fsck_chunk).collect(),
        orphans: r.orphans.iter().map(fsck_chunk).collect(),
        chunkservers: r.chunkservers.iter().map(replica).collect(),
        space: r
            .space
            .iter()
            .map(|&(chunkserver_id, capacity_bytes, free_bytes)| pb::ChunkserverSpace {
                chunkserver_id,
                capacity_bytes,
                free_bytes,
            })
            .collect(),
        chunk_size_bytes: r.chunk_size_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_like_linux() {
        assert_eq!(rename_flags(0), RenameFlags::default());
        assert!(rename_flags(RENAME_NOREPLACE).noreplace);
        assert!(rename_flags(RENAME_EXCHANGE).exchange);
        let bogus = rename_flags(8);
        assert!(bogus.noreplace && bogus.exchange);
        assert_eq!(xattr_mode(3), None);
        assert_eq!(xattr_mode(XATTR_CREATE), Some(XattrMode::Create));
        for kind in [FileKind::Regular, FileKind::Directory, FileKind::Symlink, FileKind::Fifo, FileKind::Socket] {
            assert_eq!(file_kind(file_type(kind) as i32).expect("kind"), kind);
        }
        assert!(file_kind(0).is_err());
        assert!(caller(None).is_err());
        assert!(time(Some(pb::Timespec { sec: 1, nsec: 1_000_000_000 })).is_err());
    }
}
