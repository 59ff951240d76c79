//! Extended attributes: name rules, permission rules (Linux's `xattr_permission`), rows.
//!
//! Supported namespaces: `user.` (regular files and directories; read/write permission of the
//! inode; in a sticky directory only the owner may write), `trusted.` (root only; hidden from
//! others), `security.` (anyone may read; the owner or root may write — there is no LSM to
//! decide). `system.` (POSIX ACLs) and unknown prefixes answer EOPNOTSUPP.

use cairn_coordinator::rsm::store::StateRead;

use super::errno::Errno;
use super::keys::{self, XATTRS};
use super::perm::{self, MAY_READ, MAY_WRITE};
use super::rows::Res;
use super::types::{Caller, FileKind, Inode, InodeId, S_ISVTX};
use crate::limits::{XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
}

fn namespace(name: &[u8]) -> Result<Namespace, Errno> {
    if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
        return Err(Errno::Range);
    }
    let (ns, rest) = if let Some(rest) = name.strip_prefix(b"user.") {
        (Namespace::User, rest)
    } else if let Some(rest) = name.strip_prefix(b"trusted.") {
        (Namespace::Trusted, rest)
    } else if let Some(rest) = name.strip_prefix(b"security.") {
        (Namespace::Security, rest)
    } else {
        return Err(Errno::OpNotSupp);
    };
    if rest.is_empty() {
        return Err(Errno::Inval);
    }
    Ok(ns)
}

fn user_capable(inode: &Inode) -> bool {
    matches!(inode.kind, FileKind::Regular | FileKind::Directory)
}

/// Checks a set or remove of `name` (with a value of `value_len` bytes).
pub fn check_write(inode: &Inode, caller: &Caller, name: &[u8], value_len: usize) -> Result<(), Errno> {
    let ns = namespace(name)?;
    if value_len > XATTR_VALUE_BYTES_MAX {
        return Err(Errno::TooBig);
    }
    match ns {
        Namespace::Trusted if !caller.is_root() => Err(Errno::Perm),
        Namespace::Trusted => Ok(()),
        Namespace::Security if !perm::owns(inode, caller) => Err(Errno::Perm),
        Namespace::Security => Ok(()),
        Namespace::User => {
            if !user_capable(inode) {
                return Err(Errno::Perm);
            }
            if inode.is_dir() && inode.mode & S_ISVTX != 0 && !perm::owns(inode, caller) {
                return Err(Errno::Perm);
            }
            perm::check(inode, caller, MAY_WRITE)
        }
    }
}

/// Checks a get of `name`.
pub fn check_read(inode: &Inode, caller: &Caller, name: &[u8]) -> Result<(), Errno> {
    match namespace(name)? {
        Namespace::Trusted if !caller.is_root() => Err(Errno::NoData),
        Namespace::Trusted | Namespace::Security => Ok(()),
        Namespace::User if !user_capable(inode) => Err(Errno::NoData),
        Namespace::User => perm::check(inode, caller, MAY_READ),
    }
}

/// Whether `caller` sees `name` in a listing.
pub fn visible(caller: &Caller, name: &[u8]) -> bool {
    caller.is_root() || !name.starts_with(b"trusted.")
}

/// Every (name, value) of `ino`, in name order.
pub fn all(state: &dyn StateRead, ino: InodeId) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
    let (start, end) = keys::id_range(ino.0);
    let mut out = Vec::new();
    state.scan(XATTRS, &start, Some(&end), false, &mut |k, v| {
        out.push((k[8..].to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

pub fn names(state: &dyn StateRead, ino: InodeId) -> Res<Vec<Vec<u8>>> {
    Ok(all(state, ino)?.into_iter().map(|(n, _)| n).collect())
}
