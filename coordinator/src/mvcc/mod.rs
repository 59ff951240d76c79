//! The coordinator's etcd v3.4 key-value and lease state machine: MVCC revisions, ranges,
//! transactions, compaction, leases and the history watchers read.
//!
//! # Contract
//!
//! - Semantics are etcd v3.4's (`mvcc/` and `etcdserver/apply.go`), including its revision
//!   numbering: an empty store is at revision 1, each request that changes something takes the
//!   next revision (a txn or a lease revocation is one revision; its changes get sub-revisions
//!   in order), and requests that change nothing leave it alone. Deviations are noted where
//!   they happen.
//! - The domain types are etcd's own protobuf messages (`RangeRequest`, `mvccpb::KeyValue`,
//!   ...), on purpose: the domain *is* etcd's semantics, and a parallel set of Rust types would
//!   only add a translation layer that could drift. The API layer passes requests straight
//!   through and fills in the response headers' cluster, member and term.
//! - [`KvStateMachine::apply`](crate::rsm::App::apply) is deterministic: it reads only the state
//!   and the command, never the clock. Requests that fail deterministically (a missing lease, a
//!   compacted revision) produce an `ApplyError` response and change nothing; only a storage
//!   failure or undecodable stored data is returned as an error, which stops the replica.
//! - Reads ([`range`], [`read_txn`], [`history`], the lease queries) take any `StateRead`, so
//!   the API layer serves them from a consistent read view without going through Raft.
//! - Nothing here panics on data from the network or the disk.
//!
//! # Tables
//!
//! | table | key | value |
//! |---|---|---|
//! | `kv_meta` | `revision`, `compacted` | i64, big-endian |
//! | `kv_latest` | user key | live `KeyValue` (key omitted), live keys only |
//! | `kv_history` | escaped user key, 0x00 0x01, main, sub | 0x01 + `KeyValue`, or 0x00 for a deletion |
//! | `kv_revlog` | main, sub | 0x00 (put) or 0x01 (delete), then the user key |
//! | `lease_leases` | lease id (sign bit flipped) | granted TTL in seconds, i64 |
//! | `lease_keys` | lease id (sign bit flipped), user key | empty |
//!
//! Revisions are big-endian i64s. Reads at the current revision use `kv_latest`; older
//! revisions are reconstructed from `kv_history`. See `keys.rs` for why the history encoding
//! keeps each key's versions contiguous and in order.
//!
//! Revisions, lease ids and TTLs stay plain `i64`s, as in etcd's messages that carry them
//! everywhere, rather than newtypes that would be unwrapped at every field.

mod compact;
mod error;
mod hash;
mod keys;
mod kv;
mod lease;
mod machine;
mod range;
mod staged;
mod txn;
mod watch;
mod writer;

#[cfg(test)]
mod tests;

pub use error::KvError;
pub use hash::{hash_all, hash_kv};
pub use kv::{validate_delete_range, validate_put};
pub use lease::{lease_get, lease_ids, lease_keys, LeaseInfo};
pub use machine::{decode_response, encode_command, KvStateMachine};
pub use range::{compact_revision, current_revision, range, validate_range};
pub use txn::{is_read_only, read_txn, validate_txn};
pub use watch::{history, EventBatch, WatchEvent};

pub(crate) const KV_META: &str = "kv_meta";
pub(crate) const KV_LATEST: &str = "kv_latest";
pub(crate) const KV_HISTORY: &str = "kv_history";
pub(crate) const KV_REVLOG: &str = "kv_revlog";
pub(crate) const LEASE_LEASES: &str = "lease_leases";
pub(crate) const LEASE_KEYS: &str = "lease_keys";

/// Every table the state machine owns.
pub const TABLES: &[&str] = &[KV_META, KV_LATEST, KV_HISTORY, KV_REVLOG, LEASE_LEASES, LEASE_KEYS];
