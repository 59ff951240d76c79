//! Reads of the namespace. They run on a consistent view of the local replica after a read
//! barrier (see `node`), so they are linearizable without going through the log.

use cairn_coordinator::rsm::store::StateRead;

use super::chunks;
use super::errno::Errno;
use super::keys::{self, DENTRIES, XATTRS};
use super::perm::{self, MAY_EXEC, MAY_READ};
use super::rows::{self, check_name, decode, Fail, Res};
use super::types::{Caller, Dentry, FileKind, FsParams, Inode, InodeId, Usage};
use super::xattr;
use crate::limits::{NAME_BYTES_MAX, READDIR_ENTRIES_DEFAULT, READDIR_ENTRIES_MAX};

pub fn getattr(state: &dyn StateRead, ino: InodeId) -> Res<Inode> {
    rows::existing(state, ino)
}

/// `inode` with its allocated bytes (`chunks::allocated_bytes`), for answers that carry
/// `st_blocks`.
pub fn with_allocation(state: &dyn StateRead, inode: Inode) -> Res<(Inode, u64)> {
    let allocated = chunks::allocated_bytes(state, &inode)?;
    Ok((inode, allocated))
}

/// The inode `name` names in `parent` (`.` and `..` included). Needs search permission on
/// `parent`.
pub fn lookup(state: &dyn StateRead, caller: &Caller, parent: InodeId, name: &[u8]) -> Res<Inode> {
    let dir = rows::directory(state, parent)?;
    perm::check(&dir, caller, MAY_EXEC)?;
    if name == b"." {
        return Ok(dir);
    }
    if name == b".." {
        return rows::existing(state, dir.parent);
    }
    check_name(name)?;
    let entry = rows::entry(state, parent, name)?.ok_or(Fail::Errno(Errno::NoEnt))?;
    rows::existing(state, entry.ino)
}

/// `access(2)`: whether `caller` has `mask` (R=4, W=2, X=1; 0 tests existence) on `ino`.
pub fn access(state: &dyn StateRead, caller: &Caller, ino: InodeId, mask: u32) -> Res<()> {
    let inode = rows::existing(state, ino)?;
    Ok(perm::check(&inode, caller, mask & 7)?)
}

/// One directory entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
    /// Resume a listing after this entry by passing this cookie.
    pub cookie: u64,
    /// The attributes and the allocated bytes (see `chunks::allocated_bytes`), for readdirplus.
    pub attr: Option<(Inode, u64)>,
}

/// A page of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// No entries after the last one returned.
    pub eof: bool,
}

/// Lists `dir` after `cookie` (0 from the start). Entries come in cookie order (see
/// `keys.rs`); at most `limit` of them, except that a page never ends between two entries with
/// the same cookie. Needs read permission on `dir`.
pub fn readdir(
    state: &dyn StateRead,
    caller: &Caller,
    dir: InodeId,
    cookie: u64,
    limit: u32,
    plus: bool,
) -> Res<DirPage> {
    let inode = rows::directory(state, dir)?;
    perm::check(&inode, caller, MAY_READ)?;
    let limit = match limit {
        0 => READDIR_ENTRIES_DEFAULT,
        n => n.min(READDIR_ENTRIES_MAX),
    } as usize;
    let start = match cookie.checked_add(1) {
        Some(next) => keys::dentry_seek(dir, next.max(keys::COOKIE_FIRST)),
        None => return Ok(DirPage { entries: Vec::new(), eof: true }),
    };
    let (_, end) = keys::id_range(dir.0);
    let mut raw: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut eof = true;
    state.scan(DENTRIES, &start, Some(&end), false, &mut |k, v| {
        let Some((cookie, name)) = keys::split_dentry_key(k) else { return true };
        if raw.len() >= limit && raw.last().is_some_and(|(last, _, _)| *last != cookie) {
            eof = false;
            return false;
        }
        raw.push((cookie, name.to_vec(), v.to_vec()));
        true
    })?;
    // readdirplus: the chunk size for every entry's allocation, read once for the page.
    let chunk_size = if plus && !raw.is_empty() { Some(chunks::chunk_size_bytes(state)?) } else { None };
    let mut entries = Vec::with_capacity(raw.len());
    for (cookie, name, value) in raw {
        let dentry: Dentry = decode("dentry", &value)?;
        let attr = match chunk_size {
            Some(chunk_size) => {
                let inode = rows::existing(state, dentry.ino)?;
                let allocated = chunks::allocated_bytes_in(state, &inode, chunk_size)?;
                Some((inode, allocated))
            }
            None => None,
        };
        entries.push(DirEntry { name, ino: dentry.ino, kind: dentry.kind, cookie, attr });
    }
    Ok(DirPage { entries, eof })
}

pub fn readlink(state: &dyn StateRead, ino: InodeId) -> Res<Vec<u8>> {
    let inode = rows::existing(state, ino)?;
    if inode.kind != FileKind::Symlink {
        return Err(Errno::Inval.into());
    }
    Ok(inode.target)
}

pub fn getxattr(state: &dyn StateRead, caller: &Caller, ino: InodeId, name: &[u8]) -> Res<Vec<u8>> {
    let inode = rows::existing(state, ino)?;
    xattr::check_read(&inode, caller, name)?;
    state.get(XATTRS, &keys::xattr_key(ino, name))?.ok_or(Fail::Errno(Errno::NoData))
}

/// Names of `ino`'s extended attributes that `caller` may see, in name order.
pub fn listxattr(state: &dyn StateRead, caller: &Caller, ino: InodeId) -> Res<Vec<Vec<u8>>> {
    rows::existing(state, ino)?;
    Ok(xattr::names(state, ino)?.into_iter().filter(|n| xattr::visible(caller, n)).collect())
}

/// What statfs reports from the namespace; capacity comes from the chunkservers (phase 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    pub params: FsParams,
    pub usage: Usage,
    pub name_bytes_max: u32,
}

pub fn statfs(state: &dyn StateRead) -> Res<StatFs> {
    let params = rows::fs_params(state)?.ok_or(Fail::Errno(Errno::NotConn))?;
    Ok(StatFs { params, usage: rows::usage(state)?, name_bytes_max: NAME_BYTES_MAX as u32 })
}

/// The filesystem parameters, if formatted.
pub fn fs_params(state: &dyn StateRead) -> Res<Option<FsParams>> {
    rows::fs_params(state)
}

/// A digest of every namespace table (names, keys and values, in order), and the number of rows.
/// Equal on replicas that applied the same commands.
pub fn digest(state: &dyn StateRead) -> Res<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut rows = 0u64;
    for table in keys::TABLES {
        hasher.update(&(table.len() as u64).to_be_bytes());
        hasher.update(table.as_bytes());
        state.scan(table, &[], None, false, &mut |k, v| {
            hasher.update(&(k.len() as u64).to_be_bytes());
            hasher.update(k);
            hasher.update(&(v.len() as u64).to_be_bytes());
            hasher.update(v);
            rows += 1;
            true
        })?;
    }
    Ok((*hasher.finalize().as_bytes(), rows))
}

/// Inode ids waiting for their chunks to be reclaimed, ascending (at most `limit`).
pub fn reclaim_queue(state: &dyn StateRead, limit: usize) -> Res<Vec<InodeId>> {
    let mut out = Vec::new();
    state.scan(keys::RECLAIM, &[], None, false, &mut |k, _| {
        if let Some(id) = keys::decode_u64(k) {
            out.push(InodeId(id));
        }
        out.len() < limit
    })?;
    Ok(out)
}
