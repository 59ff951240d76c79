//! The namespace state machine: inodes, directory entries, attributes, extended attributes,
//! hard and symbolic links, open-but-unlinked files.
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
//! - `ns_meta`: filesystem parameters, the next inode id, usage counters.
//!
//! # What it never does
//! It never reads the clock, never returns EXDEV, and never reuses an inode id.

mod apply;
pub mod command;
pub mod errno;
pub mod keys;
pub mod perm;
pub mod read;
mod rows;
mod tx;
pub mod types;
mod xattr;

#[cfg(test)]
mod tests;

use cairn_coordinator::rsm::store::{StateRead, StoreError, WriteSet};
use cairn_coordinator::rsm::App;

pub use command::{Command, Op, OpenFlags, Outcome, RenameFlags, Reply, SetAttr, TimeSet, XattrMode};
pub use errno::Errno;
pub use rows::Fail;
pub use types::{Caller, FileKind, FsParams, Inode, InodeId, SessionId, Timespec};

/// The namespace application for the consensus runtime.
#[derive(Debug, Default)]
pub struct Namespace;

impl Namespace {
    pub fn new() -> Self {
        Namespace
    }
}

/// Applies one encoded command: the outcome to answer, with its writes in `writes` on success.
pub fn apply_command(
    state: &dyn StateRead,
    writes: &mut WriteSet,
    log_index: u64,
    bytes: &[u8],
) -> Result<Outcome, StoreError> {
    let command = match command::decode_command(bytes) {
        Ok(c) => c,
        Err(e) => {
            // A command this build cannot decode was proposed by a newer or broken node. Every
            // replica of this build answers the same, so they stay identical.
            tracing::warn!(log_index, error = %e, "undecodable namespace command");
            return Ok(Err(Errno::Inval));
        }
    };
    let mut run = apply::Apply::new(state, &command, log_index).map_err(store_error)?;
    match run.run(&command.op) {
        Ok(reply) => {
            run.tx.commit(writes);
            Ok(Ok(reply))
        }
        Err(Fail::Errno(e)) => Ok(Err(e)),
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
        let outcome = apply_command(state, writes, log_index, command)?;
        Ok(command::encode_outcome(&outcome))
    }
}
