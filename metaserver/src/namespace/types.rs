//! The namespace's domain types: ids, inodes, callers, times, and the filesystem parameters.
//! Values are stored with bincode; field order is the on-disk format (append-only changes).

use serde::{Deserialize, Serialize};

/// An inode number. Numbers are allocated from a counter and never reused, so the pair
/// (inode, generation) is unique forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct InodeId(pub u64);

impl InodeId {
    /// The root directory, created by `Format`.
    pub const ROOT: InodeId = InodeId(1);
}

impl std::fmt::Display for InodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A client session (a mount), allocated by `OpenSession` from a counter (never reused, never
/// 0). Open handles and file locks belong to one; its close or expiry releases them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A session as stored in `ns_sessions`. Its deadline is not stored: expiry is decided by the
/// leader's countdown (see `crate::sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    /// The lease TTL granted (the requested one, clamped to the limits).
    pub ttl_ms: u64,
    /// Who opened it, for operators: client name, host and process id.
    pub client_name: String,
    pub host: String,
    pub pid: u32,
    /// The proposer's time of the `OpenSession` command.
    pub opened: Timespec,
}

/// Who holds a lock: a session and, inside it, the owner the client names (FUSE's
/// `lock_owner` for POSIX locks, the open file's owner for flock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct LockOwner {
    pub session: SessionId,
    pub owner: u64,
}

/// The type of a lock request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// `F_RDLCK` / `LOCK_SH`.
    Shared,
    /// `F_WRLCK` / `LOCK_EX`.
    Exclusive,
    /// `F_UNLCK` / `LOCK_UN`.
    Unlock,
}

/// The end of a byte range that runs to the end of the file (any length, `l_len == 0`).
pub const LOCK_END_EOF: u64 = u64::MAX;

/// A held POSIX byte-range lock: `[start, end)`, `end == LOCK_END_EOF` for "to EOF".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixLock {
    pub owner: LockOwner,
    pub start: u64,
    pub end: u64,
    /// `Shared` or `Exclusive` (never `Unlock`).
    pub kind: LockKind,
    /// The process that asked, reported by F_GETLK.
    pub pid: u32,
    /// The fencing token of the grant that created this range.
    pub token: u64,
}

/// A held flock lock (whole file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlockLock {
    pub owner: LockOwner,
    /// `Shared` or `Exclusive`.
    pub kind: LockKind,
    pub pid: u32,
    pub token: u64,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub const fn new(sec: i64, nsec: u32) -> Self {
        Timespec { sec, nsec }
    }

    /// The wall clock now. Only proposers call this, never `apply`.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
    }
}

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The `S_IFMT` bits of this type.
    pub const fn format_bits(self) -> u32 {
        match self {
            FileKind::Fifo => 0o010000,
            FileKind::CharDevice => 0o020000,
            FileKind::Directory => 0o040000,
            FileKind::BlockDevice => 0o060000,
            FileKind::Regular => 0o100000,
            FileKind::Symlink => 0o120000,
            FileKind::Socket => 0o140000,
        }
    }
}

pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_ISVTX: u32 = 0o1000;
pub const S_IXGRP: u32 = 0o0010;
/// Permission bits plus setuid, setgid and sticky.
pub const MODE_BITS: u32 = 0o7777;

/// An inode with its POSIX attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission, setuid, setgid and sticky bits (`MODE_BITS`); the type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// The Raft log index that created the inode.
    pub generation: u64,
    /// For a directory, its parent (what `..` names; the root is its own parent). Zero for
    /// other types, which may have many parents.
    pub parent: InodeId,
    /// A symlink's target; empty for other types.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Open handles over all sessions. An inode whose `nlink` drops to zero stays until this
    /// drops to zero too.
    pub open_handles: u32,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// `st_mode`: type and permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind.format_bits() | (self.mode & MODE_BITS)
    }
}

/// Who asks: the credentials a permission check uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    pub const fn root() -> Caller {
        Caller { uid: 0, gid: 0, groups: Vec::new() }
    }

    pub fn user(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, groups: Vec::new() }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller belongs to `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// Parameters fixed when the filesystem is formatted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsParams {
    pub chunk_size_bytes: u64,
    pub replication_factor: u32,
    /// When the filesystem was formatted (the proposer's clock).
    pub created: Timespec,
    /// Log index of the format command: distinguishes two filesystems with equal parameters.
    pub fs_generation: u64,
}

/// Usage counters kept by `apply`, for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Live inodes, including unlinked ones still open.
    pub inodes: u64,
    /// Sum of the sizes of regular files.
    pub bytes: u64,
}

/// A directory entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    pub ino: InodeId,
    pub kind: FileKind,
}

/// An inode waiting for its chunks to be reclaimed (phase 2 deletes them on chunkservers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    pub size: u64,
    /// Log index of the command that removed the inode.
    pub removed_at: u64,
}

/// A chunk's id, allocated from a counter in `ns_meta` (never 0, never reused), so a chunk id
/// on a chunkserver names at most one chunk of the filesystem, forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct ChunkId(pub u64);

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A chunkserver's id in the coordinator registry (`/cairn/chunkservers/<id>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct ChunkserverId(pub u64);

impl std::fmt::Display for ChunkserverId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One replica of a chunk: the chunkserver and the address of its chunk service, as the
/// registry said when the replica was placed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    pub server: ChunkserverId,
    pub addr: String,
}

/// A chunk of a regular file as stored in `ns_chunks` (key: inode ‖ chunk index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub id: ChunkId,
    /// Every replica in `replicas` holds this version (or, while a truncation of the chunk is
    /// pending, gets it once truncated).
    pub version: u64,
    /// In chain order; the first is the primary for writes.
    pub replicas: Vec<Replica>,
    /// No write to the chunk has been committed yet, so replicas may not have it.
    pub fresh: bool,
    /// Log index of the command that allocated it.
    pub allocated_at: u64,
}

/// Where a chunk id belongs (`ns_chunk_ids`: chunk id → this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlace {
    pub ino: InodeId,
    pub index: u64,
}

/// A chunk gone from the map whose replicas the leader must delete (`ns_gc`: chunk id → this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcChunk {
    pub version: u64,
    pub replicas: Vec<Replica>,
}

/// A truncation the leader still has to carry out on a chunk's replicas (`ns_truncates`:
/// inode ‖ chunk index → this). The map already holds `to_version`; replicas still at a version
/// in `[from_version, to_version)` are cut to `length_bytes`, then raised to `to_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTruncate {
    pub chunk: ChunkId,
    pub from_version: u64,
    pub to_version: u64,
    pub length_bytes: u64,
}
