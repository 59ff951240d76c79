//! The contract between the consensus runtime and the application state machine it replicates.
//!
//! The runtime orders opaque commands through Raft and hands each committed command to the
//! [`App`] exactly once per replica, in log order. The application owns the meaning of the bytes;
//! the runtime owns durability, snapshots, membership and forwarding.

use super::store::{StateRead, StoreError, WriteSet};

/// An application state machine.
///
/// Determinism is the whole contract: given the same state and the same command, `apply` must
/// produce the same writes and the same response on every replica. So `apply` never reads the
/// clock, random numbers, or anything outside `state` and `command`. Time-based decisions (lease
/// expiry, session expiry) are made by the leader and proposed as commands.
pub trait App: Send + Sync + 'static {
    /// The tables (column families) that hold this application's state. The runtime creates
    /// them, includes exactly these in snapshots, and replaces them when installing one.
    fn tables(&self) -> &'static [&'static str];

    /// Applies one committed command at Raft log index `log_index`.
    ///
    /// `state` shows everything applied before this command. The changes go into `writes`,
    /// which the runtime writes atomically together with its own applied-index marker; the
    /// returned bytes go back to the proposer. An error means the storage engine failed, and
    /// the runtime stops applying rather than let replicas diverge.
    fn apply(
        &self,
        state: &dyn StateRead,
        writes: &mut WriteSet,
        log_index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StoreError>;

    /// Called after the writes of the latest `apply` are visible in the store. Applications
    /// publish notifications (watch events) here, never from `apply`, so nobody is told about
    /// a change before it can be read.
    fn applied(&self) {}

    /// Called after a snapshot from the leader replaced the application's tables.
    fn snapshot_installed(&self, _state: &dyn StateRead) {}
}
