//! Typed access to the namespace tables, shared by `apply` (through a [`super::tx::Tx`]) and by
//! reads (through a read view).

use cairn_coordinator::rsm::store::{StateRead, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::errno::Errno;
use super::keys::{self, DENTRIES, INODES, META, META_FS, META_USAGE};
use super::types::{Dentry, FsParams, Inode, InodeId, Usage};
use crate::limits::NAME_BYTES_MAX;

/// Why an operation did not succeed: a deterministic errno (the answer), or a storage failure
/// (fatal for the replica; the runtime stops applying rather than diverge).
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error(transparent)]
    Errno(#[from] Errno),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Res<T> = Result<T, Fail>;

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Engine(format!("corrupt {what} row: {e}")))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    bincode::serialize(value).unwrap_or_default()
}

pub fn inode(state: &dyn StateRead, ino: InodeId) -> Res<Option<Inode>> {
    match state.get(INODES, &keys::inode_key(ino))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("inode", &bytes)?)),
    }
}

/// The inode, or ENOENT.
pub fn existing(state: &dyn StateRead, ino: InodeId) -> Res<Inode> {
    inode(state, ino)?.ok_or(Fail::Errno(Errno::NoEnt))
}

/// The directory, or ENOENT / ENOTDIR.
pub fn directory(state: &dyn StateRead, ino: InodeId) -> Res<Inode> {
    let dir = existing(state, ino)?;
    if !dir.is_dir() {
        return Err(Errno::NotDir.into());
    }
    Ok(dir)
}

pub fn entry(state: &dyn StateRead, parent: InodeId, name: &[u8]) -> Res<Option<Dentry>> {
    match state.get(DENTRIES, &keys::dentry_key(parent, name))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("dentry", &bytes)?)),
    }
}

/// Whether `dir` has no entries.
pub fn is_empty_dir(state: &dyn StateRead, dir: InodeId) -> Res<bool> {
    let (start, end) = keys::id_range(dir.0);
    let mut empty = true;
    state.scan(DENTRIES, &start, Some(&end), false, &mut |_, _| {
        empty = false;
        false
    })?;
    Ok(empty)
}

pub fn fs_params(state: &dyn StateRead) -> Res<Option<FsParams>> {
    match state.get(META, META_FS)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("fs params", &bytes)?)),
    }
}

pub fn usage(state: &dyn StateRead) -> Res<Usage> {
    match state.get(META, META_USAGE)? {
        None => Ok(Usage::default()),
        Some(bytes) => Ok(decode("usage", &bytes)?),
    }
}

/// Checks a name that is looked up or created: ENOENT when empty (as for an empty path),
/// ENAMETOOLONG above 255 bytes, EINVAL when it holds `/` or NUL (a client bug: the kernel
/// never sends such a component).
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() {
        return Err(Errno::NoEnt);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::NameTooLong);
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::Inval);
    }
    Ok(())
}

pub fn is_dot_or_dotdot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}
