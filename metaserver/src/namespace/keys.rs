//! Table names and key encodings.
//!
//! Keys are big-endian so byte order is numeric order. A directory entry's key is
//! `parent ‖ cookie ‖ name`, where `cookie` is a 62-bit hash of the name (blake3, stable across
//! builds and machines). So:
//! - lookup is one point read (the cookie is computed from the name);
//! - readdir walks a directory in cookie order, and a listing resumes after the last cookie it
//!   returned. An entry's position never depends on other entries, so entries that exist for the
//!   whole listing are returned exactly once however many are added or removed meanwhile (as
//!   ext4's hash-ordered directories do with `telldir` cookies);
//! - two names with the same cookie (a hash collision) sit next to each other (ordered by name)
//!   and a page never ends between them (see `read::readdir`), so resuming by cookie skips none.
//!
//! Cookies 0, 1 and 2 are reserved: 0 starts a listing, 1 and 2 are what clients give `.` and
//! `..`. Every stored cookie is at least [`COOKIE_FIRST`] and below 2^62, which fits `off_t`.

use super::types::{InodeId, LockOwner, SessionId};

pub const INODES: &str = "ns_inodes";
pub const DENTRIES: &str = "ns_dentries";
pub const XATTRS: &str = "ns_xattrs";
pub const OPEN: &str = "ns_open";
pub const RECLAIM: &str = "ns_reclaim";
pub const META: &str = "ns_meta";
pub const SESSIONS: &str = "ns_sessions";
pub const SESSION_OPEN: &str = "ns_session_open";
pub const SESSION_LOCKS: &str = "ns_session_locks";
pub const LOCKS: &str = "ns_locks";
pub const FLOCKS: &str = "ns_flocks";
pub const OPEN_WRITE: &str = "ns_open_write";
pub const CHUNKS: &str = "ns_chunks";
pub const CHUNK_IDS: &str = "ns_chunk_ids";
pub const GC: &str = "ns_gc";
pub const TRUNCATES: &str = "ns_truncates";
pub const REQUESTS: &str = "ns_requests";

/// Every table of the namespace, in digest order.
pub const TABLES: &[&str] = &[
    INODES,
    DENTRIES,
    XATTRS,
    OPEN,
    RECLAIM,
    META,
    SESSIONS,
    SESSION_OPEN,
    SESSION_LOCKS,
    LOCKS,
    FLOCKS,
    OPEN_WRITE,
    CHUNKS,
    CHUNK_IDS,
    GC,
    TRUNCATES,
    REQUESTS,
];

pub const META_FS: &[u8] = b"fs";
pub const META_NEXT_INODE: &[u8] = b"next_inode";
pub const META_USAGE: &[u8] = b"usage";
pub const META_NEXT_SESSION: &[u8] = b"next_session";
pub const META_NEXT_FENCE: &[u8] = b"next_fence";
pub const META_NEXT_CHUNK: &[u8] = b"next_chunk";

/// The smallest cookie of a stored entry.
pub const COOKIE_FIRST: u64 = 3;

pub fn inode_key(ino: InodeId) -> [u8; 8] {
    ino.0.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The readdir cookie of `name`.
pub fn name_cookie(name: &[u8]) -> u64 {
    let hash = blake3::hash(name);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let cookie = u64::from_be_bytes(first) >> 2;
    if cookie < COOKIE_FIRST {
        cookie + COOKIE_FIRST
    } else {
        cookie
    }
}

pub fn dentry_key(parent: InodeId, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + name.len());
    key.extend_from_slice(&parent.0.to_be_bytes());
    key.extend_from_slice(&name_cookie(name).to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// The first key of `parent`'s entries whose cookie is `cookie` or more.
pub fn dentry_seek(parent: InodeId, cookie: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&parent.0.to_be_bytes());
    key.extend_from_slice(&cookie.to_be_bytes());
    key
}

/// `[start, end)` of every key that begins with the 8-byte id `id`.
pub fn id_range(id: u64) -> (Vec<u8>, Vec<u8>) {
    let start = id.to_be_bytes().to_vec();
    let end = match id.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    };
    (start, end)
}

/// Splits a dentry key into (cookie, name).
pub fn split_dentry_key(key: &[u8]) -> Option<(u64, &[u8])> {
    let cookie = decode_u64(key.get(8..)?)?;
    Some((cookie, key.get(16..)?))
}

pub fn xattr_key(ino: InodeId, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&ino.0.to_be_bytes());
    key.extend_from_slice(name);
    key
}

pub fn open_key(ino: InodeId, session: SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&ino.0.to_be_bytes());
    key.extend_from_slice(&session.0.to_be_bytes());
    key
}

/// `ns_chunks` and `ns_truncates`: inode ‖ chunk index, so a file's chunks are one ordered scan.
pub fn chunk_key(ino: InodeId, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&ino.0.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Splits a `chunk_key` into (inode, index).
pub fn split_chunk_key(key: &[u8]) -> Option<(InodeId, u64)> {
    Some((InodeId(decode_u64(key)?), decode_u64(key.get(8..)?)?))
}

/// `ns_sessions`: the session id.
pub fn session_key(session: SessionId) -> [u8; 8] {
    session.0.to_be_bytes()
}

/// `ns_requests`: session ‖ request number, so a session's recorded replies are one scan.
pub fn request_key(session: SessionId, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&session.0.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `ns_session_open` and `ns_session_locks`: session ‖ inode, so a session's inodes are one scan.
pub fn session_inode_key(session: SessionId, ino: InodeId) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&session.0.to_be_bytes());
    key.extend_from_slice(&ino.0.to_be_bytes());
    key
}

/// `ns_flocks`: inode ‖ session ‖ owner.
pub fn flock_key(ino: InodeId, owner: LockOwner) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&ino.0.to_be_bytes());
    key.extend_from_slice(&owner.session.0.to_be_bytes());
    key.extend_from_slice(&owner.owner.to_be_bytes());
    key
}

/// `ns_locks`: inode ‖ session ‖ owner ‖ start (one owner's ranges never overlap).
pub fn lock_key(ino: InodeId, owner: LockOwner, start: u64) -> Vec<u8> {
    let mut key = flock_key(ino, owner);
    key.extend_from_slice(&start.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_stable_and_in_range() {
        // Pinned: a change of the hash would reorder every directory of existing filesystems.
        assert_eq!(name_cookie(b"hello"), name_cookie(b"hello"));
        for i in 0..10_000u32 {
            let c = name_cookie(format!("f{i}").as_bytes());
            assert!((COOKIE_FIRST..1 << 62).contains(&c));
        }
        let key = dentry_key(InodeId(7), b"abc");
        let (cookie, name) = split_dentry_key(&key).expect("split");
        assert_eq!((cookie, name), (name_cookie(b"abc"), &b"abc"[..]));
        assert!(key > dentry_seek(InodeId(7), 0) && key < id_range(7).1);
    }
}
