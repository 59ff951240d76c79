//! Bounds of the metaserver, in one place. Every request, queue and table entry that can grow
//! has its limit here; the relations between them are checked at compile time.

use std::time::Duration;

/// Longest file name (one path component), as on Linux (`NAME_MAX`).
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target (`PATH_MAX` minus the terminating NUL).
pub const SYMLINK_TARGET_BYTES_MAX: usize = 4095;
/// Longest extended-attribute name, as on Linux (`XATTR_NAME_MAX`).
pub const XATTR_NAME_BYTES_MAX: usize = 255;
/// Largest extended-attribute value, as on Linux (`XATTR_SIZE_MAX`).
pub const XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Total bytes of names and values of one inode's extended attributes.
pub const XATTR_INODE_BYTES_MAX: usize = 1024 * 1024;
/// Most hard links to one inode (and subdirectories of one directory), as ext4's `EXT4_LINK_MAX`.
pub const NLINK_MAX: u32 = 65_000;
/// Largest file size the namespace records (2^63 - 1, the largest `off_t`).
pub const FILE_SIZE_BYTES_MAX: u64 = i64::MAX as u64;
/// Most supplementary groups a caller may present (Linux's `NGROUPS_MAX`).
pub const CALLER_GROUPS_MAX: usize = 65_536;
/// Most entries one readdir page returns (more only when hash cookies collide, see `keys.rs`).
pub const READDIR_ENTRIES_MAX: u32 = 4096;
/// Entries per readdir page when the request does not say.
pub const READDIR_ENTRIES_DEFAULT: u32 = 512;
/// Largest gRPC message the metaserver accepts or sends.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Deadline of one client request inside the server (propose or read barrier plus the read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the bootstrapping node retries formatting while no leader is elected yet.
pub const FORMAT_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// Allowed chunk sizes of a filesystem (DESIGN.md: 64 MiB by default, 128 MiB selectable).
pub const CHUNK_SIZES_BYTES: [u64; 2] = [64 << 20, 128 << 20];
/// Largest replication factor a filesystem may ask for.
pub const REPLICATION_FACTOR_MAX: u32 = 16;

/// Shortest session lease a client may ask for: long enough to ride out a leader election.
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(2);
/// Longest session lease: a dead client's locks are released at most this long after it died.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(300);
/// Longest client name or host name stored with a session (longer ones are cut).
pub const SESSION_LABEL_CHARS_MAX: usize = 256;
/// How often the leader checks session deadlines.
pub const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Most sessions one `ExpireSessions` command ends.
pub const SESSION_EXPIRE_BATCH_MAX: usize = 256;
/// Most lock ranges (POSIX) or flock holders on one inode; beyond that a grant answers ENOLCK.
pub const LOCKS_PER_INODE_MAX: usize = 4096;
/// Lock-change notifications buffered per node for blocked lock waiters; a waiter that falls
/// further behind simply retries its grant.
pub const LOCK_NOTIFY_CHANNEL_MAX: usize = 1024;
/// Longest a blocking lock request waits inside the server before answering EINTR (the client
/// asks again); its own gRPC deadline may end it sooner.
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(600);

const _: () = assert!(SESSION_TTL_MIN.as_millis() > 2 * SESSION_CHECK_INTERVAL.as_millis());
const _: () = assert!(SESSION_TTL_MIN.as_millis() <= SESSION_TTL_MAX.as_millis());
const _: () = assert!(READDIR_ENTRIES_DEFAULT <= READDIR_ENTRIES_MAX);
const _: () = assert!(XATTR_VALUE_BYTES_MAX + XATTR_NAME_BYTES_MAX <= XATTR_INODE_BYTES_MAX);
const _: () = assert!(XATTR_INODE_BYTES_MAX < GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(SYMLINK_TARGET_BYTES_MAX < GRPC_MESSAGE_BYTES_MAX);
