//! The namespace state machine: inodes, directory entries, attributes, extended attributes,
//! hard and symbolic links, open-but-unlinked files, client sessions and file locks.
//!
//! # Contract
//! - [`Namespace`] implements the consensus runtime's [`App`]: `apply` is deterministic. It
//!   reads only the stored tables and the command; the time of an operation is chosen by the
//!   node that proposes the command (the client's timestamp, or that node's clock) and travels
//!   inside it. New inodes' generation is the Raft log index that created them.
//! - A command either fails with an [`Errno`] and changes nothing, or succeeds and changes
//!   everything it should, atomically (see [`tx`]).
//! - Errors are Linux's for a local filesystem (see [`errno`]); permission checks follow
//!   Linux's rules for the caller's uid, gid and groups (see [`perm`]); EXDEV is never returned.
//! - Reads ([`read`]) are pure functions of a state view.
//!
//! # Tables (all prefixed `ns_`; see [`keys`] for the encodings)
//! - `ns_inodes`: inode id → [`Inode`].
//! - `ns_dentries`: parent ‖ name cookie ‖ name → [`types::Dentry`]. `.` and `..` are not stored
//!   (a directory's inode records its parent).
//! - `ns_xattrs`: inode id ‖ name → value.
//! - `ns_open`: inode id ‖ session id → open-handle count of that session.
//! - `ns_reclaim`: inode id → [`types::Reclaim`]: removed files whose chunks await deletion.
//! - `ns_meta`: filesystem parameters, the next inode id, usage counters, the next session id
//!   and the next fencing token.
//! - `ns_sessions`: session id → [`Session`] (see [`sessions`]).
//! - `ns_session_open`, `ns_session_locks`: session ‖ inode → (): where a session has handles
//!   open or may hold locks, so its close or expiry finds them.
//! - `ns_locks`: inode ‖ session ‖ owner ‖ start → [`PosixLock`]; `ns_flocks`: inode ‖ session ‖
//!   owner → [`FlockLock`] (see [`locks`]).
//! - `ns_open_write`: inode id ‖ session id → how many of the session's handles were opened for
//!   writing (chunk allocation and commits need one; healing waits while any exists).
//! - `ns_chunks`: inode ‖ chunk index → [`Chunk`]; `ns_chunk_ids`: chunk id → where it belongs;
//!   `ns_gc`: chunk id → replicas to delete; `ns_truncates`: inode ‖ chunk index → a truncation
//!   still to carry out on the replicas (see [`chunks`]).
//!
//! # What it never does
//! It never reads the clock, never returns EXDEV, and never reuses an inode id.

mod apply;
pub mod chunks;
pub mod command;
pub mod errno;
pub mod keys;
pub mod locks;
pub mod perm;
pub mod read;
mod rows;
pub mod sessions;
mod tx;
pub mod types;
mod xattr;

#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};

use cairn_coordinator::rsm::store::{StateRead, StoreError, WriteSet};
use cairn_coordinator::rsm::App;

pub use command::{Command, Op, OpenFlags, Outcome, RenameFlags, Reply, SetAttr, TimeSet, XattrMode};
pub use errno::Errno;
pub use rows::Fail;
pub use types::{
    Caller, Chunk, ChunkId, ChunkserverId, FileKind, FlockLock, FsParams, Inode, InodeId, LockKind, LockOwner,
    PosixLock, Replica, Session, SessionId, Timespec,
};

use crate::limits::LOCK_NOTIFY_CHANNEL_MAX;

/// The namespace application for the consensus runtime.
///
/// Besides applying commands it tells this node's blocked lock waiters when locks changed:
/// `apply` stages the inodes whose locks a command changed, and `applied` (called by the runtime
/// once the writes are readable) publishes them on a bounded broadcast ([`Namespace::lock_events`]).
/// [`LockEvent::All`] follows an installed snapshot, or an overflow of the staging queue.
#[derive(Debug)]
pub struct Namespace {
    lock_events: tokio::sync::broadcast::Sender<LockEvent>,
    staged: Mutex<Vec<LockEvent>>,
}

/// A change of the locks on this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEvent {
    /// The locks of this inode changed.
    Inode(InodeId),
    /// Any locks may have changed.
    All,
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Namespace {
    pub fn new() -> Self {
        let (lock_events, _) = tokio::sync::broadcast::channel(LOCK_NOTIFY_CHANNEL_MAX);
        Namespace { lock_events, staged: Mutex::new(Vec::new()) }
    }

    /// Receives the lock changes applied on this replica from now on.
    pub fn lock_events(&self) -> tokio::sync::broadcast::Receiver<LockEvent> {
        self.lock_events.subscribe()
    }

    fn staged(&self) -> MutexGuard<'_, Vec<LockEvent>> {
        // Each push or drain is one step, so a poisoned queue is still consistent.
        self.staged.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, event: LockEvent) {
        // An error only means nobody waits.
        let _ = self.lock_events.send(event);
    }
}

/// Applies one encoded command: the outcome to answer, with its writes in `writes` on success.
pub fn apply_command(
    state: &dyn StateRead,
    writes: &mut WriteSet,
    log_index: u64,
    bytes: &[u8],
) -> Result<Outcome, StoreError> {
    Ok(apply_command_with_locks(state, writes, log_index, bytes)?.0)
}

/// [`apply_command`], also answering the inodes whose locks changed.
pub fn apply_command_with_locks(
    state: &dyn StateRead,
    writes: &mut WriteSet,
    log_index: u64,
    bytes: &[u8],
) -> Result<(Outcome, Vec<InodeId>), StoreError> {
    let command = match command::decode_command(bytes) {
        Ok(c) => c,
        Err(e) => {
            // A command this build cannot decode was proposed by a newer or broken node. Every
            // replica of this build answers the same, so they stay identical.
            tracing::warn!(log_index, error = %e, "undecodable namespace command");
            return Ok((Err(Errno::Inval), Vec::new()));
        }
    };
    let mut run = apply::Apply::new(state, &command, log_index).map_err(store_error)?;
    let (request, op) = match &command.op {
        // Request 0 would be the session's bookkeeping row: applied unrecorded.
        Op::Once { request, op } => (Some(request).filter(|r| r.seq > 0), op.as_ref()),
        op => (None, op),
    };
    let result = match request {
        Some(request) => match run.recorded_reply(request) {
            // Applied before: answer as then, change nothing.
            Ok(Some(reply)) => return Ok((Ok(reply), Vec::new())),
            Ok(None) => run.run(op).and_then(|reply| run.record_reply(request, &reply).map(|()| reply)),
            Err(e) => Err(e),
        },
        None => run.run(op),
    };
    match result {
        Ok(reply) => {
            let changed = std::mem::take(&mut run.lock_changes);
            run.tx.commit(writes);
            Ok((Ok(reply), changed))
        }
        Err(Fail::Errno(e)) => Ok((Err(e), Vec::new())),
        Err(Fail::Store(e)) => Err(e),
    }
}

fn store_error(fail: Fail) -> StoreError {
    match fail {
        Fail::Store(e) => e,
        Fail::Errno(e) => StoreError::Engine(format!("unexpected {e} while starting a command")),
    }
}

impl App for Namespace {
    fn tables(&self) -> &'static [&'static str] {
        keys::TABLES
    }

    fn apply(
        &self,
        state: &dyn StateRead,
        writes: &mut WriteSet,
        log_index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let (outcome, changed) = apply_command_with_locks(state, writes, log_index, command)?;
        if !changed.is_empty() {
            let mut staged = self.staged();
            if staged.len() + changed.len() > LOCK_NOTIFY_CHANNEL_MAX {
                // Only if the runtime stopped calling `applied`: waiters then look at everything.
                staged.clear();
                staged.push(LockEvent::All);
            } else {
                staged.extend(changed.into_iter().map(LockEvent::Inode));
            }
        }
        Ok(command::encode_outcome(&outcome))
    }

    fn applied(&self) {
        let events: Vec<LockEvent> = std::mem::take(&mut *self.staged());
        for event in events {
            self.publish(event);
        }
    }

    fn snapshot_installed(&self, _state: &dyn StateRead) {
        self.staged().clear();
        self.publish(LockEvent::All);
    }
}
