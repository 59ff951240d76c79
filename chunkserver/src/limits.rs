//! Every bound of the chunkserver, in one place, with compile-time checks of how they relate.
//!
//! Queues, streams, batches and timeouts all have a limit named here so that overload shows up
//! as back-pressure or a clear error, never as unbounded memory growth.

use std::time::Duration;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

// ---- Chunk geometry ----

/// Default chunk size (DESIGN.md: 64 MiB by default).
pub const CHUNK_SIZE_DEFAULT_BYTES: u64 = 64 * MIB;
/// The other chunk size a filesystem may choose at creation.
pub const CHUNK_SIZE_LARGE_BYTES: u64 = 128 * MIB;
/// Block size of new chunks unless configured otherwise. Chosen by `cairn-chunkserver
/// bench-blocks` and the mount's fio runs with each size; see docs/chunkserver.md ("Block size").
pub const BLOCK_SIZE_DEFAULT_BYTES: u32 = 32 * KIB as u32;
/// Smallest configurable block size.
pub const BLOCK_SIZE_MIN_BYTES: u32 = 4 * KIB as u32;
/// Largest configurable block size.
pub const BLOCK_SIZE_MAX_BYTES: u32 = 4 * MIB as u32;
/// Stored block values shorter than this stay in the LSM; longer ones go to blob files.
pub const BLOB_MIN_BYTES: u64 = 4 * KIB;
/// Target size of one RocksDB blob file.
pub const BLOB_FILE_BYTES: u64 = 256 * MIB;
/// Memtable size of the block column family (values live there until flushed to blob files).
pub const BLOCK_MEMTABLE_BYTES: usize = 64 * MIB as usize;
/// Default size of the cache of block values read by small reads (`--block-cache`).
pub const BLOCK_CACHE_DEFAULT_BYTES: u64 = 256 * MIB;
/// Reads of at most this many blocks fill the block cache; longer (streaming) reads do not.
pub const CACHED_READ_BLOCKS_MAX: u32 = 2;
/// Reads of at most this many bytes are first tried from memory on the async worker that
/// received them (memtables and the blocks small reads cached), before a blocking thread reads
/// the disk. Two blocks of the former 64 KiB default; kept when the default became 32 KiB, as
/// measured.
pub const MEMORY_READ_BYTES_MAX: u64 = 128 * KIB;

// Every block size is a power of two between the bounds, so it divides both chunk sizes.
const _: () = assert!(BLOCK_SIZE_DEFAULT_BYTES.is_power_of_two());
const _: () = assert!(BLOCK_SIZE_MIN_BYTES <= BLOCK_SIZE_DEFAULT_BYTES);
const _: () = assert!(BLOCK_SIZE_DEFAULT_BYTES <= BLOCK_SIZE_MAX_BYTES);
const _: () = assert!(CHUNK_SIZE_DEFAULT_BYTES.is_multiple_of(BLOCK_SIZE_MAX_BYTES as u64));
const _: () = assert!(CHUNK_SIZE_LARGE_BYTES.is_multiple_of(CHUNK_SIZE_DEFAULT_BYTES));
const _: () = assert!(BLOB_MIN_BYTES <= BLOCK_SIZE_MIN_BYTES as u64);
// Block indices are u32.
const _: () = assert!(CHUNK_SIZE_LARGE_BYTES / (BLOCK_SIZE_MIN_BYTES as u64) < u32::MAX as u64);

// ---- RPC ----

/// Largest data payload of one WriteChunk message.
pub const WRITE_MESSAGE_BYTES_MAX: usize = 4 * MIB as usize;
/// Data payload of one ReadChunk response message (and of each scrub / copy step).
pub const READ_MESSAGE_BYTES: usize = MIB as usize;
/// Write messages already received are applied in one store commit, up to this many messages
/// and (at least) this many bytes: small writes share a commit, large ones still pipeline.
pub const APPLY_GROUP_MESSAGES_MAX: usize = 1024;
pub const APPLY_GROUP_BYTES_MAX: usize = 4 * MIB as usize;
/// A write stream announcing at least this many bytes (`WriteHeader::stream_bytes`) is stored
/// without the write-ahead log and persisted (a memtable flush) before its answer. Below it, the
/// flush's fixed cost (table files, manifest, fsyncs) outweighs writing the bytes twice. See
/// docs/chunkserver.md ("Bulk streams").
pub const BULK_STREAM_BYTES_MIN: u64 = 8 * MIB;
/// A bulk stream starts a background flush each time it has applied this many more bytes, so
/// its disk writes overlap its receiving and the flush before its answer has little left.
pub const BULK_FLUSH_STEP_BYTES: u64 = 16 * MIB;
/// gRPC message limit: the largest payload plus room for the header.
pub const GRPC_MESSAGE_BYTES_MAX: usize = WRITE_MESSAGE_BYTES_MAX + 64 * KIB as usize;
/// HTTP/2 flow-control window per stream: how much a sender may have in flight on one stream.
pub const GRPC_STREAM_WINDOW_BYTES: u32 = 8 * MIB as u32;
/// Largest HTTP/2 frame this side accepts (h2's default is 16 KiB: 64 frames per message).
pub const GRPC_FRAME_BYTES_MAX: u32 = MIB as u32;
/// HTTP/2 flow-control window per connection.
pub const GRPC_CONNECTION_WINDOW_BYTES: u32 = 32 * MIB as u32;
/// Replicas after the primary in one chain.
pub const CHAIN_REPLICAS_MAX: usize = 8;
/// Write messages queued for the downstream replica; the upstream waits when it is full.
pub const FORWARD_QUEUE_MESSAGES_MAX: usize = 4;
/// Read response messages queued for the client.
pub const READ_QUEUE_MESSAGES_MAX: usize = 4;
/// Pieces of a read stream read from the disk ahead of the one being sent: with O_DIRECT
/// there is no kernel readahead, so the stream keeps the disk busy itself.
pub const READ_AHEAD_PIECES: usize = 2;
/// Write streams served at once; more wait for a slot.
pub const WRITE_STREAMS_MAX: usize = 64;
/// Copy-from-peer operations run at once; more wait.
pub const COPIES_MAX: usize = 2;
/// Chunks per ListChunks page.
pub const LIST_CHUNKS_MAX: u32 = 10_000;
/// Cached gRPC channels to other chunkservers.
pub const PEER_CHANNELS_MAX: usize = 1024;

const _: () = assert!(READ_MESSAGE_BYTES <= WRITE_MESSAGE_BYTES_MAX);
const _: () = assert!(GRPC_MESSAGE_BYTES_MAX > WRITE_MESSAGE_BYTES_MAX);
const _: () = assert!(GRPC_STREAM_WINDOW_BYTES as usize >= GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(GRPC_CONNECTION_WINDOW_BYTES >= GRPC_STREAM_WINDOW_BYTES);
// HTTP/2 allows frames of at most 2^24 - 1 bytes.
const _: () = assert!(GRPC_FRAME_BYTES_MAX < (1 << 24) && GRPC_FRAME_BYTES_MAX <= GRPC_STREAM_WINDOW_BYTES);

// ---- Deadlines ----

/// Connecting to another chunkserver or a coordinator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A downstream replica that accepts no data for this long has failed.
pub const FORWARD_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// An upstream that sends nothing for this long in the middle of a write stream has failed.
pub const WRITE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for the downstream acknowledgement after the last message (includes its fsync).
pub const FORWARD_FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Unary calls to another chunkserver (truncate, delete, stat along a chain).
pub const PEER_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole copy-from-peer (128 MiB at a few MiB/s is well within it).
pub const COPY_TIMEOUT: Duration = Duration::from_secs(300);
/// Unary calls to the coordinator.
pub const COORDINATOR_RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// In-flight requests get this long to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

// ---- Registration ----

/// Default registry lease TTL.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Shortest allowed registry lease TTL (etcd's minimum is 5 s by default; tests use less).
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(2);
/// How often the registry value's space figures are compared with what was last written.
pub const REGISTRY_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// The registry value is rewritten only when free space or capacity moved by a sixteenth of the
/// capacity, within these bounds: an idle cluster does not bump the coordinator's revision, and
/// a small server (`--capacity 96MiB`) still tells placement when it fills up.
pub const REGISTRY_SPACE_DELTA_MAX_BYTES: u64 = GIB;
pub const REGISTRY_SPACE_DELTA_MIN_BYTES: u64 = MIB;
pub const REGISTRY_SPACE_DELTA_FRACTION: u64 = 16;
/// First retry delay after a registration failure; doubles up to the maximum.
pub const REGISTER_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(2);

// ---- Space and scrubbing ----

/// How stale the cached free-disk figure may be.
pub const SPACE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// At most one "refusing writes: out of space" warning per interval.
pub const SPACE_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Disk space kept free by default: writes are refused rather than filling the disk.
pub const DISK_RESERVE_DEFAULT_BYTES: u64 = GIB;
/// Default scrub rate in bytes per second (0 disables the scrubber).
pub const SCRUB_RATE_DEFAULT_BYTES_PER_SEC: u64 = 32 * MIB;
/// Default pause between two scrub passes.
pub const SCRUB_INTERVAL_DEFAULT: Duration = Duration::from_secs(3600);
/// Corrupt chunks remembered in the scrub report (/status); the metric counts them all.
pub const CORRUPT_REPORT_MAX: usize = 10_000;
