//! Every bound in the coordinator, in one place.
//!
//! Queues, batches, streams and timeouts all have a limit named here, so that overload shows up
//! as a clear error or as back-pressure, never as unbounded memory growth.

use std::time::Duration;

// ---- Consensus runtime (rsm) ----

/// Client commands waiting to be batched into a Raft entry; proposers wait when it is full.
pub const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Commands carried by one Raft log entry (group commit).
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Bytes of commands carried by one Raft log entry (one command may exceed it alone).
pub const BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Log entries sent in one AppendEntries call.
pub const APPEND_ENTRIES_MAX: u64 = 16;
/// Shortest deadline for an AppendEntries call that carries entries.
pub const APPEND_ENTRIES_TIMEOUT_MIN: Duration = Duration::from_secs(2);
/// Batches proposed to Raft but not yet committed, per leader.
pub const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Most recent log entries kept in memory for replication and apply to read (they would
/// otherwise read back from RocksDB what was just written, on the path of every Raft write).
pub const LOG_TAIL_CACHE_ENTRIES: usize = 256;
/// Encoded bytes of the entries in that cache; the oldest go first beyond it.
pub const LOG_TAIL_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Spent WAL files RocksDB keeps to write the next WAL over, instead of appending to a new
/// file (see `RocksStore::prime_wal`).
pub const STATE_WAL_RECYCLE_FILES: usize = 2;
/// Live WAL beyond which RocksDB flushes the memtables holding it back, so that WAL files are
/// retired (and recycled) at about this size.
pub const STATE_WAL_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes written through the WAL at open so that the first WAL is a recycled file this large.
pub const STATE_WAL_PRIME_BYTES: usize = 32 * 1024 * 1024;
/// Below this much free disk space the WAL is not primed at open: a write that fails for lack
/// of space leaves RocksDB refusing all writes until it is reopened.
pub const STATE_WAL_PRIME_FREE_MIN_BYTES: u64 = 512 * 1024 * 1024;
/// Block cache shared by the state store's tables (data, index and filter blocks).
pub const STATE_BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Bloom filter bits per key in the state store's SST files (about 1 % false positives).
pub const STATE_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Share of each memtable's size given to its whole-key Bloom filter.
pub const STATE_MEMTABLE_BLOOM_RATIO: f64 = 0.1;
/// Largest gRPC message on the peer (Raft) transport.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Snapshot chunk sent per InstallSnapshot RPC.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Deadline for a write forwarded to the leader, including commit (etcd's 5 s + 2 elections).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(7);
/// Deadline for writes that may touch any number of keys (range deletes, txns, compaction):
/// applying a delete of a few hundred thousand keys takes seconds.
pub const PROPOSE_LONG_TIMEOUT: Duration = Duration::from_secs(30);
/// No proposal waits longer than this, whatever it asks for.
pub const PROPOSE_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Deadline for establishing a linearizable read point.
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for connecting to a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read-index requests waiting to share one leadership check.
pub const READ_INDEX_QUEUE_MAX: usize = 4096;

// A full AppendEntries (entries of at most a batch plus one maximal request each) fits a message.
const _: () = assert!((APPEND_ENTRIES_MAX as usize) * (BATCH_BYTES_MAX + GRPC_RECV_BYTES_MAX) < RAFT_MESSAGE_BYTES_MAX);
const _: () = assert!((SNAPSHOT_CHUNK_BYTES as usize) < RAFT_MESSAGE_BYTES_MAX / 2);

// ---- etcd API ----

/// etcd's --max-request-bytes default: the largest request that may be proposed.
pub const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// gRPC receive limit on the client port: the request limit plus etcd's 512 KiB overhead.
pub const GRPC_RECV_BYTES_MAX: usize = REQUEST_BYTES_MAX + 512 * 1024;
/// Messages tonic decodes on the client port. Larger than the gRPC limit so that a request
/// between the two gets grpc-go's RESOURCE_EXHAUSTED answer from our check (tonic's own
/// answer for oversized messages is OUT_OF_RANGE, which etcd clients do not expect).
pub const GRPC_DECODE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// gRPC send limit on the client port (large range responses).
pub const GRPC_SEND_BYTES_MAX: usize = i32::MAX as usize;
/// etcd's MaxLeaseTTL.
pub const LEASE_TTL_SECS_MAX: i64 = 9_000_000_000;
/// Leases expired by one proposal.
pub const LEASE_EXPIRE_BATCH_MAX: usize = 1000;
/// How often the leader checks lease deadlines.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Watches on one gRPC stream.
pub const WATCHES_PER_STREAM_MAX: usize = 10_000;
/// Watch responses buffered per stream before the sender waits for the client.
pub const WATCH_STREAM_BUFFER: usize = 256;
/// Events per watch response when replaying history.
pub const WATCH_HISTORY_EVENTS_PER_RESPONSE: usize = 1000;
/// Live event batches buffered for watchers; a watcher that falls further behind catches up
/// from the stored history instead.
pub const WATCH_BROADCAST_BATCHES: usize = 4096;
/// Bytes per message of a Maintenance.Snapshot stream.
pub const SNAPSHOT_STREAM_CHUNK_BYTES: usize = 1024 * 1024;
/// Free disk space below which the NOSPACE alarm is raised (default of --disk-free-min-bytes).
pub const DISK_FREE_BYTES_MIN_DEFAULT: u64 = 256 * 1024 * 1024;
/// How often free disk space is checked.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Keep-alive requests in flight per stream.
pub const KEEPALIVE_STREAM_BUFFER: usize = 64;

const _: () = assert!(REQUEST_BYTES_MAX < BATCH_BYTES_MAX);
const _: () = assert!(PROPOSE_LONG_TIMEOUT.as_secs() <= PROPOSE_TIMEOUT_MAX.as_secs());
const _: () = assert!(GRPC_RECV_BYTES_MAX < GRPC_DECODE_BYTES_MAX);

// ---- MVCC key-value and lease state machine (mvcc) ----

/// etcd's --max-txn-ops default: compares, or operations per branch, in one txn.
pub const KV_TXN_OPS_MAX: usize = 128;
/// Event batches applied but not yet published (the runtime publishes after every command, so
/// this is only reached if it stops doing so); beyond it the oldest are dropped and watchers
/// catch up from history.
pub const KV_STAGED_EVENT_BATCHES_MAX: usize = 4096;

const _: () = assert!(KV_TXN_OPS_MAX > 0);
const _: () = assert!(KV_STAGED_EVENT_BATCHES_MAX >= WATCH_BROADCAST_BATCHES);

// ---- Locks and elections (lock, election) ----

/// `Lock` calls in progress (nearly all of them waiting for their turn) on one node; beyond it
/// new ones fail with etcd's "too many requests".
pub const LOCK_WAITERS_MAX: usize = 10_000;
/// `Campaign` calls in progress plus `Observe` streams open on one node.
pub const ELECTION_WAITERS_MAX: usize = 10_000;
/// Leader updates buffered per `Observe` stream before the observer waits for the client.
pub const ELECTION_OBSERVE_BUFFER: usize = 16;
/// etcd's default session TTL (`concurrency.NewSession`): the lease a `Lock` or `Campaign`
/// naming lease 0 is given.
pub const LOCK_DEFAULT_LEASE_TTL_SECS: i64 = 60;
/// How long a waiter's grant-time check keeps retrying while the cluster is between leaders.
pub const LOCK_GRANT_CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff step between those retries; the pause grows by one step per attempt, up to ten.
pub const LOCK_GRANT_CHECK_BACKOFF: Duration = Duration::from_millis(20);

const _: () = assert!(LOCK_DEFAULT_LEASE_TTL_SECS <= LEASE_TTL_SECS_MAX);
const _: () = assert!(ELECTION_OBSERVE_BUFFER > 0);
// A retry pause never exceeds one read-index deadline.
const _: () = assert!(LOCK_GRANT_CHECK_BACKOFF.as_millis() * 10 < READ_INDEX_TIMEOUT.as_millis());

// ---- Client library (client) ----

/// Default deadline of one attempt of a client RPC.
pub const CLIENT_REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default deadline for the client to connect to one endpoint.
pub const CLIENT_CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default number of attempts of one client call, across endpoints.
pub const CLIENT_ATTEMPTS_DEFAULT: u32 = 10;
/// Default first and longest pause between two attempts.
pub const CLIENT_BACKOFF_BASE_DEFAULT: Duration = Duration::from_millis(50);
pub const CLIENT_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on a client connection with calls in flight, and how long one may go
/// unanswered before the connection counts as dead (this is how a frozen server is noticed
/// under a quiet watch). Real etcd closes connections that ping more often than every 5 s.
pub const CLIENT_HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
pub const CLIENT_HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Endpoints one client may be given.
pub const CLIENT_ENDPOINTS_MAX: usize = 64;
/// Largest message the client accepts (range answers of big prefixes) and sends.
pub const CLIENT_RECV_BYTES_MAX: usize = 256 * 1024 * 1024;
pub const CLIENT_SEND_BYTES_MAX: usize = GRPC_RECV_BYTES_MAX;
/// Event batches a watch buffers for its consumer; beyond it the watch stops reading from the
/// server until the consumer catches up.
pub const CLIENT_WATCH_BUFFER_BATCHES: usize = 64;
/// Default time a watch keeps trying to resume after its stream broke before it gives up.
pub const CLIENT_WATCH_RESUME_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// A lease keeper renews every TTL / this divisor (etcd's client uses 3).
pub const CLIENT_LEASE_RENEWALS_PER_TTL: u32 = 3;
/// Shortest pause between two renewals, whatever the TTL.
pub const CLIENT_LEASE_RENEW_INTERVAL_MIN: Duration = Duration::from_millis(100);

const _: () = assert!(CLIENT_ATTEMPTS_DEFAULT >= 1);
const _: () = assert!(CLIENT_BACKOFF_BASE_DEFAULT.as_millis() <= CLIENT_BACKOFF_MAX_DEFAULT.as_millis());
// A pause between attempts is shorter than an attempt may take.
const _: () = assert!(CLIENT_BACKOFF_MAX_DEFAULT.as_millis() < CLIENT_REQUEST_TIMEOUT_DEFAULT.as_millis());
const _: () = assert!(CLIENT_CONNECT_TIMEOUT_DEFAULT.as_millis() < CLIENT_REQUEST_TIMEOUT_DEFAULT.as_millis());
// etcd refuses pings more frequent than every 5 s (--grpc-keepalive-min-time).
const _: () = assert!(CLIENT_HTTP2_PING_INTERVAL.as_secs() >= 5);
const _: () = assert!(CLIENT_RECV_BYTES_MAX >= GRPC_RECV_BYTES_MAX);
const _: () = assert!(CLIENT_WATCH_BUFFER_BATCHES > 0 && CLIENT_ENDPOINTS_MAX > 0);
const _: () = assert!(CLIENT_LEASE_RENEWALS_PER_TTL >= 2);
