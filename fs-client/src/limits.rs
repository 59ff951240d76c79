//! Every bound the `cairn` CLI relies on, in one place.

use std::time::Duration;

// ---- dev clusters -------------------------------------------------------------------------

/// Largest dev-cluster coordinator group `cairn dev up` / [`crate::dev::Cluster`] will start.
pub const DEV_COORDINATORS_MAX: usize = 9;
/// Largest number of chunkservers in a dev cluster.
pub const DEV_CHUNKSERVERS_MAX: usize = 16;
/// Largest dev-cluster metaserver group.
pub const DEV_METASERVERS_MAX: usize = 9;

/// Dev-cluster ports are drawn at random from `DEV_PORT_MIN` up to the start of the kernel's
/// ephemeral port range, trying this many before letting the kernel choose.
pub const DEV_PORT_MIN: u16 = 10_000;
pub const DEV_PORT_PICK_ATTEMPTS: usize = 64;
/// A port this process handed out is not handed out again for this long: the first cluster's
/// servers bind their ports only after the picking ends, one after another, and a second
/// cluster started meanwhile (tests run in parallel threads) must not pick them.
pub const DEV_PORT_REUSE_AFTER: Duration = Duration::from_secs(600);

/// Default overall deadline for a dev cluster to report healthy.
pub const DEV_READY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// How often readiness is probed while waiting for a cluster.
pub const DEV_READY_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a graceful stop (SIGTERM) may take before the process is SIGKILLed.
pub const DEV_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a dev mount may take to become live (in /proc/self/mountinfo and answering stat).
pub const DEV_MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for the `stat` that proves a dev mount answers.
pub const DEV_MOUNT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a mount process may take to flush, unmount and exit after SIGTERM before it is
/// unmounted by force and SIGKILLed.
pub const DEV_MOUNT_STOP_GRACE: Duration = Duration::from_secs(15);

/// How long to wait for a SIGKILLed process to disappear.
pub const DEV_KILL_WAIT: Duration = Duration::from_secs(5);

/// How often process liveness is polled while waiting for an exit.
pub const DEV_EXIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Lines of each node's log included in a readiness failure.
pub const DEV_LOG_TAIL_LINES: usize = 30;

/// Bytes read from the end of a log to find its last lines.
pub const DEV_LOG_TAIL_BYTES_MAX: u64 = 64 * 1024;

/// Most unexpected error lines collected from all logs by one scan.
pub const DEV_LOG_ERROR_LINES_MAX: usize = 1000;

// ---- the small HTTP client ---------------------------------------------------------------

/// Largest HTTP response (headers and body) the status client reads.
pub const HTTP_RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// Deadline for one HTTP request (connect, write, read) to a node's HTTP port.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

// ---- cairn bench kv ----------------------------------------------------------------------

/// Benchmark workers that share one gRPC channel per endpoint.
pub const BENCH_CLIENTS_PER_CHANNEL: usize = 16;

/// Most concurrent benchmark workers in one run.
pub const BENCH_CLIENTS_MAX: usize = 16 * 1024;

/// Keys are formatted as 8 zero-padded decimal digits, so the key space ends at 10^8.
pub const BENCH_KEY_DIGITS: usize = 8;
pub const BENCH_KEYS_MAX: u64 = 100_000_000;
const _: () = assert!(10u64.pow(BENCH_KEY_DIGITS as u32) == BENCH_KEYS_MAX);

/// Largest value a benchmark writes: etcd's default request size limit is 1.5 MiB, and the
/// request also carries the key and framing.
pub const BENCH_VALUE_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// Deadline for one benchmark RPC.
pub const BENCH_RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline for establishing a benchmark gRPC connection.
pub const BENCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed benchmark RPC, so a dead endpoint does not turn a worker into a busy
/// loop of instant "connection refused" errors.
pub const BENCH_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Latency histogram range in microseconds (1 µs .. 60 s, 3 significant digits).
pub const BENCH_LATENCY_MAX_US: u64 = 60_000_000;
pub const BENCH_LATENCY_SIGFIG: u8 = 3;
const _: () = assert!(BENCH_LATENCY_MAX_US >= BENCH_RPC_TIMEOUT.as_micros() as u64);

// ---- cairn bench lock ----------------------------------------------------------------------

/// Deadline for one benchmark `Lock` call, which may wait behind every other contender.
pub const BENCH_LOCK_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A lock-benchmark worker's lease lives this much longer than its run (warm-up + duration),
/// so no lease expires while the run uses it.
pub const BENCH_LOCK_LEASE_TTL_MARGIN: Duration = Duration::from_secs(60);

/// Keep-alive requests queued per benchmark stream (one is in flight at a time).
pub const BENCH_KEEPALIVE_STREAM_BUFFER: usize = 4;
const _: () = assert!(BENCH_LOCK_RPC_TIMEOUT.as_micros() as u64 <= BENCH_LATENCY_MAX_US);

// ---- cairn bench meta ----------------------------------------------------------------------

/// Deadline for one metaserver benchmark RPC (a `readdir` listing is one RPC per page).
pub const BENCH_META_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest directory `bench meta` fills for its `readdir` runs.
pub const BENCH_META_READDIR_ENTRIES_MAX: usize = 1_000_000;

/// Largest readdir page asked for (the metaserver caps pages at 4096 entries itself).
pub const BENCH_META_READDIR_PAGE_MAX: u32 = 4096;

/// Largest per-worker file pool `--min-files` may ask for.
pub const BENCH_META_MIN_FILES_MAX: usize = 1_000_000;

/// Concurrent requests of the untimed set-up and clean-up (filling the `readdir` directory,
/// emptying it).
pub const BENCH_META_SETUP_TASKS: usize = 64;
const _: () = assert!(BENCH_META_RPC_TIMEOUT.as_micros() as u64 <= BENCH_LATENCY_MAX_US);

// ---- cairn mount (the FUSE client) ---------------------------------------------------------

pub const MIB: u64 = 1024 * 1024;

/// Largest FUSE write request (the kernel caps it at its max_pages; 1 MiB is the usual cap).
pub const FUSE_MAX_WRITE_BYTES: u32 = 1024 * 1024;
/// Kernel readahead per file.
pub const FUSE_MAX_READAHEAD_BYTES: u32 = 1024 * 1024;
/// FUSE requests the kernel keeps in flight in the background (readahead, async writes).
pub const FUSE_MAX_BACKGROUND: u16 = 64;
/// How often a blocking lock wait looks whether its caller has a signal to take (fuser does
/// not pass FUSE_INTERRUPT on, see `fuse/signals.rs`): the delay before Ctrl-C or SIGKILL
/// ends a process stuck in F_SETLKW or flock.
pub const FUSE_LOCK_SIGNAL_POLL: Duration = Duration::from_millis(100);
/// First read of /proc/PID/status for a caller's groups: the whole file (about 1.5 KiB) at once.
pub const PROC_STATUS_READ_BYTES: usize = 4096;
/// Threads reading /dev/fuse; each request is then handed to a Tokio task.
pub const FUSE_READER_THREADS: usize = 2;
/// st_blksize reported for every file: `cp` and friends size their buffers by it.
pub const FUSE_BLKSIZE_BYTES: u32 = 1024 * 1024;

/// Default kernel attribute and entry cache lifetimes (short: other clients change things).
pub const MOUNT_ATTR_TTL_DEFAULT_MS: u64 = 1000;
pub const MOUNT_ENTRY_TTL_DEFAULT_MS: u64 = 1000;
/// Default time an operation keeps retrying an unreachable cluster before failing with EIO.
pub const MOUNT_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// Deadline of one metaserver RPC attempt (blocking lock waits have none).
pub const META_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a metaserver call answered INTERNAL (transient quorum loss looks like that).
pub const META_INTERNAL_RETRIES: usize = 3;
/// Pause between retries of a metaserver call when every endpoint failed once.
pub const META_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Connection timeout for metaserver and chunkserver channels.
pub const MOUNT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Session lease requested from the metaserver; heartbeats go every third of the granted TTL.
pub const SESSION_TTL_MS: u64 = 30_000;

/// Buffered (unflushed) write bytes per file before a flush is started.
pub const WRITE_BUFFER_BYTES_MAX: u64 = 16 * MIB;
/// Background flushes of one file's buffer running at once (non-overlapping ranges only).
pub const WRITE_FLUSHES_IN_FLIGHT: usize = 3;
/// Bytes in one WriteChunk message (the chunkserver recommends 1 MiB, accepts up to 4 MiB).
pub const WRITE_MESSAGE_BYTES: usize = 1024 * 1024;
/// Writes of at most this many bytes in all go from the client to every replica at once
/// instead of through the chain: one network hop before the replicas write and sync instead
/// of one per replica (a small file's close). Larger writes take the chain, which sends each
/// byte out of the client once.
pub const FANOUT_WRITE_BYTES_MAX: usize = 256 * 1024;
/// Reads of at least twice this are striped over the chunk's replicas, stripes a multiple of
/// it (one chunkserver read message).
pub const READ_STRIPE_BYTES_MIN: u64 = 1024 * 1024;
/// Sequential reads fetch this much at once and serve the following reads from it.
pub const READAHEAD_BYTES: u64 = 8 * MIB;
/// Chunk map entries asked for per GetChunks.
pub const CHUNK_MAP_BATCH: u32 = 64;
/// Attempts of a chunk write with a repaired chain before the write fails with EIO.
pub const CHUNK_WRITE_ATTEMPTS: usize = 5;
/// Largest gRPC message to or from a chunkserver (4 MiB payload plus framing).
pub const CHUNK_GRPC_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;
/// Readdir entries asked for per ReadDir.
pub const READDIR_BATCH: u32 = 512;
/// How long `cairn mount` (daemon mode) waits for the mount to appear.
pub const MOUNT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// After SIGTERM unmounted (or lazily detached) the mount, how long the session may take to
/// end before the FUSE connection is aborted.
pub const UNMOUNT_GRACE: Duration = Duration::from_secs(5);
/// Deadline of one chunk write or read attempt on a replica (a whole 64 MiB chunk at a few
/// MiB/s fits).
pub const CHUNK_RPC_TIMEOUT: Duration = Duration::from_secs(60);

const _: () = assert!(WRITE_BUFFER_BYTES_MAX >= FUSE_MAX_WRITE_BYTES as u64);
const _: () = assert!(WRITE_MESSAGE_BYTES <= 4 * 1024 * 1024);

/// Backoff between attempts to read a chunk whose replicas all failed while the map catches up
/// with them (doubling from the first to the second, until the operation timeout).
pub const CHUNK_READ_RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const CHUNK_READ_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Backoff while a chunk's replicas refuse a write's version and the map still shows it: a
/// repair (healing) has bumped the replicas and not yet committed (until the operation
/// timeout; a 64 MiB copy on loopback takes well under a second).
pub const CHUNK_STALE_BACKOFF_MIN: Duration = Duration::from_millis(20);
pub const CHUNK_STALE_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// `cairn dev up` warns when its directory's disk has less free space than this: the
/// chunkservers' 1 GiB reserve plus two 64 MiB chunks' worth of room on each of three servers.
pub const DEV_DISK_WARN_BYTES: u64 = (1 << 30) + 3 * 2 * (64 << 20);

/// How long a released handle waits for others before the metaserver is told (see
/// fuse/closer.rs): a small-file loop closes a file every few milliseconds.
pub const CLOSE_BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Most handle closes in one CloseMany (the metaserver takes up to 4096).
pub const CLOSE_BATCH_HANDLES_MAX: usize = 1024;
