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
/// Most chunk entries one GetChunks answers (256 GiB of a file with 64 MiB chunks).
pub const CHUNKS_PER_READ_MAX: u32 = 4096;
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

/// Pause before reading the chunkserver registry again after its watch ended.
pub const REGISTRY_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Most chunkservers the registry view holds (entries beyond are ignored).
pub const REGISTRY_SERVERS_MAX: usize = 10_000;
/// Deadline of one call to a chunkserver (stat, version update, truncate, delete, list page).
pub const CHUNK_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for connecting to a chunkserver.
pub const CHUNK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one copy of a whole chunk from a peer (healing).
pub const CHUNK_COPY_TIMEOUT: Duration = Duration::from_secs(300);
/// Chunkserver channels the leader keeps open at most.
pub const CHUNK_CHANNELS_MAX: usize = 4096;
/// How often the leader works through pending truncations, the deletion queue and healing.
pub const CHUNK_WORK_INTERVAL: Duration = Duration::from_millis(500);
/// Most pending truncations, queued deletions or reclaimed inodes handled per round.
pub const CHUNK_WORK_BATCH_MAX: usize = 256;
/// Rows removed from the leader's work queues (`ns_reclaim`, `ns_gc`, `ns_truncates`) between
/// two compactions of those tables (which drop the deletion tombstones the queue scans would
/// step over).
pub const QUEUE_COMPACT_AFTER_DELETIONS: usize = 1024;
/// Chunk-map rows read per page by the leader's scans (healing, fsck, orphan scan).
pub const CHUNK_MAP_PAGE_ROWS: usize = 4096;
/// Chunks listed per ListChunks page in the orphan scan.
pub const LIST_CHUNKS_PAGE: u32 = 10_000;
/// Chunks the healer re-replicates per round (the rate limit: at most this many per
/// `CHUNK_WORK_INTERVAL`), and how many copies run at once.
pub const HEAL_CHUNKS_PER_ROUND: usize = 8;
pub const HEAL_CONCURRENCY: usize = 4;
/// Longest time healing goes without walking the chunk map while nothing prompts a walk (no
/// change of live chunkservers, no replica set changed by the leader, nothing left to heal).
pub const HEAL_IDLE_WALK_INTERVAL: Duration = Duration::from_secs(10);
/// At most one "too few chunkservers with room" warning per interval.
pub const SPACE_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Chunkserver calls in flight at once in deletion and truncation rounds.
pub const CHUNK_CALLS_CONCURRENCY: usize = 16;
/// Default pause between two orphan scans of every chunkserver's inventory.
pub const ORPHAN_SCAN_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Chunks Fsck lists per category when the request does not say, and at most.
pub const FSCK_LIST_DEFAULT: u32 = 100;
pub const FSCK_LIST_MAX: u32 = 10_000;
/// Orphans remembered from the last scan (for Fsck).
pub const ORPHANS_REMEMBERED_MAX: usize = 10_000;

const _: () = assert!(HEAL_CONCURRENCY <= HEAL_CHUNKS_PER_ROUND);
const _: () = assert!(FSCK_LIST_DEFAULT <= FSCK_LIST_MAX);

/// Most handles one CloseMany may close (one Raft entry; a client sends a few dozen).
pub const CLOSE_MANY_HANDLES_MAX: usize = 4096;
