//! Commands replicated through the Raft log, and what `apply` answers.
//!
//! A command is bincode of [`Command`]: the caller's credentials, the time chosen by the node
//! that proposed it (`now`: the client's timestamp when it sent one, else the proposing node's
//! clock — never the applying replica's), and the operation. Every replica applies the same
//! bytes, so every replica stores the same times. The answer is bincode of [`Outcome`].

use serde::{Deserialize, Serialize};

use super::errno::Errno;
use super::types::{
    Caller, Chunk, ChunkId, ChunkserverId, FileKind, FsParams, Inode, InodeId, LockKind, LockOwner, Replica, SessionId,
    Timespec,
};

/// What an open asks for; the permission check and `O_TRUNC` follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub truncate: bool,
}

/// A time to set with `utimens`: the proposer's `now` (`UTIME_NOW`) or a given time.
/// `UTIME_OMIT` is the absence of a [`TimeSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// The attribute changes of one setattr; `None` leaves an attribute alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// The change comes through a handle opened for writing (`ftruncate`): truncation then
    /// needs no write permission, as on Linux.
    pub through_write_handle: bool,
}

/// `setxattr` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// `XATTR_CREATE`: fail with EEXIST if it exists.
    Create,
    /// `XATTR_REPLACE`: fail with ENODATA if it does not exist.
    Replace,
}

/// `renameat2` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// A namespace change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Records the filesystem parameters and creates the root directory. Idempotent: once
    /// formatted, it answers the parameters already recorded.
    Format {
        chunk_size_bytes: u64,
        replication_factor: u32,
    },
    /// A regular file, FIFO, socket or device node (not a directory or symlink).
    Mknod {
        parent: InodeId,
        name: Vec<u8>,
        kind: FileKind,
        mode: u32,
        umask: u32,
        rdev: u64,
    },
    Mkdir {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    },
    /// `open(O_CREAT)`: creates a regular file, or with `exclusive` (O_EXCL) fails if the name
    /// exists; without it opens the existing file. Opens a handle when `session` is given.
    Create {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        exclusive: bool,
        session: Option<SessionId>,
        flags: OpenFlags,
    },
    Open {
        ino: InodeId,
        session: SessionId,
        flags: OpenFlags,
    },
    /// Closes one handle, without saying how it was opened (see `Apply::close`).
    Close {
        ino: InodeId,
        session: SessionId,
    },
    Unlink {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rmdir {
        parent: InodeId,
        name: Vec<u8>,
    },
    Link {
        ino: InodeId,
        new_parent: InodeId,
        new_name: Vec<u8>,
    },
    Symlink {
        parent: InodeId,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Rename {
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        flags: RenameFlags,
    },
    SetAttr {
        ino: InodeId,
        attr: SetAttr,
    },
    SetXattr {
        ino: InodeId,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
    },
    RemoveXattr {
        ino: InodeId,
        name: Vec<u8>,
    },
    /// Opens a client session with a lease of `ttl_ms` (clamped to the limits).
    OpenSession {
        client_name: String,
        host: String,
        pid: u32,
        ttl_ms: u64,
    },
    /// Closes a session: releases its locks and closes its open handles.
    CloseSession {
        session: SessionId,
    },
    /// Proposed by the leader when sessions' leases ran out; the same effect as closing each.
    /// Ids that no longer exist are skipped (a close may have raced the expiry).
    ExpireSessions {
        ids: Vec<SessionId>,
    },
    /// F_SETLK / F_SETLKW (one attempt): locks or unlocks `[start, start + len)` (`len` 0: to
    /// EOF) for `owner`. EAGAIN when another owner holds a conflicting lock.
    SetLock {
        ino: InodeId,
        owner: LockOwner,
        pid: u32,
        kind: LockKind,
        start: u64,
        len: u64,
    },
    /// flock(2) (one attempt): whole-file lock of `owner`. EAGAIN on conflict.
    Flock {
        ino: InodeId,
        owner: LockOwner,
        pid: u32,
        kind: LockKind,
    },
    /// Releases `owner`'s POSIX locks (`posix`, on close/flush of the owner's file) and/or
    /// flock (`flock`, on release of the open file) on `ino`.
    ReleaseOwner {
        ino: InodeId,
        owner: LockOwner,
        posix: bool,
        flock: bool,
    },
    /// The chunk at `index` of a regular file, allocated on `placement` (chosen by the proposing
    /// node from its registry view, so `apply` stays deterministic) when the index is a hole.
    /// Needs the session to have a handle open for writing (EBADF).
    AllocateChunk {
        ino: InodeId,
        session: SessionId,
        index: u64,
        placement: Vec<Replica>,
    },
    /// Written data reached the replicas: size = max(size, `size`), mtime = ctime = now, the
    /// listed chunks stop being fresh; setuid/setgid are cleared for non-root callers.
    CommitWrite {
        ino: InodeId,
        session: SessionId,
        size: u64,
        chunk_indexes: Vec<u64>,
    },
    /// Leader only: the chunk's replicas and version after the leader raised the version on
    /// the listed replicas (failure report, healing, stale replica). ESTALE unless the chunk is
    /// still `chunk` at `expect_version`.
    SetChunkReplicas {
        ino: InodeId,
        index: u64,
        chunk: ChunkId,
        expect_version: u64,
        version: u64,
        replicas: Vec<Replica>,
    },
    /// Leader only: a pending truncation was carried out; replicas on `lost` servers could not
    /// be truncated and leave the chunk's replica set.
    ChunkTruncated {
        ino: InodeId,
        index: u64,
        chunk: ChunkId,
        to_version: u64,
        lost: Vec<ChunkserverId>,
    },
    /// Leader only: moves the chunks of removed inodes (`ns_reclaim`) to the deletion queue.
    ReclaimInodes {
        inos: Vec<InodeId>,
    },
    /// Leader only: these queued chunks were deleted on their chunkservers.
    ChunksDeleted {
        chunks: Vec<ChunkId>,
    },
    /// Closes one handle opened for writing (`write`) or not. (A variant of its own rather than
    /// a field of `Close`: commands already in logs keep decoding.)
    CloseHandle {
        ino: InodeId,
        session: SessionId,
        write: bool,
    },
    /// `Create` that also allocates the file's first chunk (index 0) on `placement` (chosen
    /// by the proposing node, as for `AllocateChunk`) when this call creates the file and
    /// opens it for writing; an empty placement (no live chunkserver) creates the file only.
    /// (A variant of its own so commands already in logs keep decoding.)
    CreateWithChunk {
        parent: InodeId,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        exclusive: bool,
        session: SessionId,
        flags: OpenFlags,
        placement: Vec<Replica>,
    },
    /// `op` as a client's request `request`: applied once however often the client sends it.
    /// A retry after a lost answer (a leader killed between commit and reply, a timeout) gets
    /// the first attempt's reply instead of applying again, which would answer EEXIST to a
    /// create or ENOENT to an unlink that succeeded, or count a close twice.
    Once {
        request: RequestId,
        op: Box<Op>,
    },
    /// `CommitWrite` and then `SetAttr` of the same file in one entry, all or nothing: a
    /// futimens, fchmod or fchown of a file with buffered writes would otherwise cost two Raft
    /// writes (tar sets the mtime of every file it extracts before closing it). `attr` never
    /// changes the size. (A variant of its own so commands already in logs keep decoding.)
    CommitWriteSetAttr {
        ino: InodeId,
        session: SessionId,
        size: u64,
        chunk_indexes: Vec<u64>,
        attr: SetAttr,
    },
    /// `CloseHandle` of several handles of one session, in order: (inode, opened for
    /// writing). A handle the server no longer counts (its inode is gone, or the session holds
    /// no handle on it) is skipped. (A variant of its own so commands already in logs keep
    /// decoding.)
    CloseHandles {
        session: SessionId,
        handles: Vec<(InodeId, bool)>,
    },
}

/// A client's request, numbered within its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub session: SessionId,
    /// From 1 (0 is not a request: `apply` keeps its bookkeeping there).
    pub seq: u64,
    /// Every request of the session numbered below this one has been answered to the client,
    /// so their recorded replies can go.
    pub done_below: u64,
}

impl Op {
    /// A short name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Format { .. } => "format",
            Op::Mknod { .. } => "mknod",
            Op::Mkdir { .. } => "mkdir",
            Op::Create { .. } => "create",
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Rename { .. } => "rename",
            Op::SetAttr { .. } => "setattr",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::OpenSession { .. } => "open_session",
            Op::CloseSession { .. } => "close_session",
            Op::ExpireSessions { .. } => "expire_sessions",
            Op::SetLock { .. } => "setlk",
            Op::Flock { .. } => "flock",
            Op::ReleaseOwner { .. } => "release_owner",
            Op::AllocateChunk { .. } => "allocate_chunk",
            Op::CommitWrite { .. } => "commit_write",
            Op::SetChunkReplicas { .. } => "set_chunk_replicas",
            Op::ChunkTruncated { .. } => "chunk_truncated",
            Op::ReclaimInodes { .. } => "reclaim_inodes",
            Op::ChunksDeleted { .. } => "chunks_deleted",
            Op::CloseHandle { .. } => "close",
            Op::CreateWithChunk { .. } => "create",
            Op::Once { op, .. } => op.name(),
            Op::CommitWriteSetAttr { .. } => "commit_write_setattr",
            Op::CloseHandles { .. } => "close_many",
        }
    }
}

/// One replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub caller: Caller,
    /// The time of the operation, chosen by the proposer (see the module docs).
    pub now: Timespec,
    pub op: Op,
}

/// What a successful command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// No attributes to return (unlink, rmdir, rename, close, removexattr, setxattr).
    Done,
    /// The attributes of the inode the operation created or changed.
    Attr(Inode),
    /// `Create`: the file's attributes and whether this call created it.
    Created {
        attr: Inode,
        created: bool,
    },
    Formatted(FsParams),
    /// `OpenSession`: the new session and its granted TTL.
    Session {
        id: SessionId,
        ttl_ms: u64,
    },
    /// A lock request was granted (or an unlock done): the grant's fencing token (0 for an
    /// unlock, which grants nothing).
    Locked {
        token: u64,
    },
    /// The chunk at `index` of a file.
    Chunk {
        index: u64,
        chunk: Chunk,
    },
    /// `CreateWithChunk`: as `Created`, plus the first chunk when one was allocated.
    CreatedWithChunk {
        attr: Inode,
        created: bool,
        first_chunk: Option<Chunk>,
    },
    /// `CreateWithChunk` (since replies carry the directory): as `CreatedWithChunk`, plus the
    /// parent directory's attributes after the create when this call created the file. (A
    /// variant of its own so replies already recorded for retries keep decoding.)
    CreatedWithChunkIn {
        attr: Inode,
        created: bool,
        first_chunk: Option<Chunk>,
        parent: Option<Inode>,
    },
}

/// The result of a command as replicated back to its proposer.
pub type Outcome = Result<Reply, Errno>;

/// Encodes a command for [`cairn_coordinator::rsm::Rsm::propose`].
pub fn encode_command(command: &Command) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    bincode::serialize(command).unwrap_or_default()
}

pub fn decode_command(bytes: &[u8]) -> Result<Command, bincode::Error> {
    bincode::deserialize(bytes)
}

pub fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    bincode::serialize(outcome).unwrap_or_default()
}

pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, bincode::Error> {
    bincode::deserialize(bytes)
}
