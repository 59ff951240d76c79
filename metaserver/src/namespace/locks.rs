//! File locks in the replicated namespace: POSIX byte-range locks (fcntl) and flock.
//!
//! # Contract
//! - Locks belong to a [`LockOwner`] (session, owner id). Two owners conflict when their ranges
//!   overlap and at least one lock is exclusive; an owner never conflicts with itself.
//! - POSIX locks follow fcntl: a request replaces whatever the owner held in its range (an
//!   upgrade, a downgrade or an unlock of a sub-range splits the owner's ranges); the owner's
//!   ranges of the same type that overlap or touch the new one merge into it. Ranges are
//!   `[start, end)`, `end == LOCK_END_EOF` for "to the end of the file" (`len` 0).
//! - flock locks are whole-file, one per owner; an upgrade or downgrade is atomic here (Linux
//!   drops the old lock first, so a failed non-blocking conversion loses it; Cairn keeps it).
//! - POSIX locks and flock locks do not interact, as on Linux.
//! - Every grant takes the next value of a counter in `ns_meta` as its fencing token, so tokens
//!   are strictly increasing across all grants, inodes and sessions, identical on all replicas.
//! - A lock needs a live session with an open handle on the inode (EBADF otherwise); the last
//!   close of the session's handles on the inode releases the session's locks there.
//! - Nothing here waits: a conflicting request answers EAGAIN. Blocking (F_SETLKW, flock
//!   without LOCK_NB) is the node's job: it retries when `applied` reports this inode's locks
//!   changed (see `crate::node::locks`).

use cairn_coordinator::rsm::store::StateRead;

use super::apply::Apply;
use super::command::Reply;
use super::errno::Errno;
use super::keys::{self, FLOCKS, LOCKS, META, OPEN, SESSION_LOCKS};
use super::rows::{decode, encode, Res};
use super::types::{FlockLock, InodeId, LockKind, LockOwner, PosixLock, LOCK_END_EOF};
use crate::limits::{FILE_SIZE_BYTES_MAX, LOCKS_PER_INODE_MAX};

/// `[start, end)` of a request: `len` 0 runs to EOF. EINVAL when the range is beyond the
/// largest offset (Linux says EOVERFLOW/EINVAL for these).
pub fn range(start: u64, len: u64) -> Result<(u64, u64), Errno> {
    if start > FILE_SIZE_BYTES_MAX {
        return Err(Errno::Inval);
    }
    if len == 0 {
        return Ok((start, LOCK_END_EOF));
    }
    match start.checked_add(len) {
        Some(end) if end <= FILE_SIZE_BYTES_MAX + 1 => Ok((start, end)),
        _ => Err(Errno::Inval),
    }
}

/// The `len` that describes `[start, end)` (0 for "to EOF").
pub fn len_of(start: u64, end: u64) -> u64 {
    if end == LOCK_END_EOF {
        0
    } else {
        end - start
    }
}

fn overlaps(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    a_start < b_end && b_start < a_end
}

fn conflicting(a: LockKind, b: LockKind) -> bool {
    a == LockKind::Exclusive || b == LockKind::Exclusive
}

/// The first lock (in key order) of another owner that conflicts with `kind` over `[start, end)`.
pub fn first_conflict(
    locks: &[PosixLock],
    owner: LockOwner,
    kind: LockKind,
    start: u64,
    end: u64,
) -> Option<PosixLock> {
    locks
        .iter()
        .find(|l| l.owner != owner && overlaps(l.start, l.end, start, end) && conflicting(l.kind, kind))
        .copied()
}

/// What a POSIX lock request does to the owner's ranges: `own` are the owner's current ranges;
/// returns (ranges to remove, ranges to add). `token` is used only for the new range.
pub fn apply_range(
    own: &[PosixLock],
    owner: LockOwner,
    pid: u32,
    kind: LockKind,
    start: u64,
    end: u64,
    token: u64,
) -> (Vec<PosixLock>, Vec<PosixLock>) {
    let (mut merged_start, mut merged_end) = (start, end);
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for l in own {
        debug_assert_eq!(l.owner, owner);
        let touches = l.start <= end && start <= l.end;
        if !touches {
            continue;
        }
        let same = l.kind == kind;
        if !same && !overlaps(l.start, l.end, start, end) {
            // Adjacent with another type: stays as it is.
            continue;
        }
        removed.push(*l);
        if same {
            merged_start = merged_start.min(l.start);
            merged_end = merged_end.max(l.end);
        } else {
            if l.start < start {
                added.push(PosixLock { end: start, ..*l });
            }
            if l.end > end {
                added.push(PosixLock { start: end, ..*l });
            }
        }
    }
    if kind != LockKind::Unlock {
        added.push(PosixLock { owner, start: merged_start, end: merged_end, kind, pid, token });
    }
    (removed, added)
}

/// Every POSIX lock on `ino`, in key order (owner, then start).
pub fn posix_locks(state: &dyn StateRead, ino: InodeId) -> Res<Vec<PosixLock>> {
    let (start, end) = keys::id_range(ino.0);
    let mut rows = Vec::new();
    state.scan(LOCKS, &start, Some(&end), false, &mut |_, v| {
        rows.push(v.to_vec());
        true
    })?;
    rows.iter().map(|v| Ok(decode("posix lock", v)?)).collect()
}

/// Every flock lock on `ino`, in key order.
pub fn flocks(state: &dyn StateRead, ino: InodeId) -> Res<Vec<FlockLock>> {
    let (start, end) = keys::id_range(ino.0);
    let mut rows = Vec::new();
    state.scan(FLOCKS, &start, Some(&end), false, &mut |_, v| {
        rows.push(v.to_vec());
        true
    })?;
    rows.iter().map(|v| Ok(decode("flock", v)?)).collect()
}

/// F_GETLK: the lock that would block `owner`'s request, if any. EINVAL for an unlock request
/// or a bad range.
pub fn get_lock(
    state: &dyn StateRead,
    ino: InodeId,
    owner: LockOwner,
    kind: LockKind,
    start: u64,
    len: u64,
) -> Res<Option<PosixLock>> {
    if kind == LockKind::Unlock {
        return Err(Errno::Inval.into());
    }
    let (start, end) = range(start, len)?;
    super::rows::existing(state, ino)?;
    Ok(first_conflict(&posix_locks(state, ino)?, owner, kind, start, end))
}

impl Apply<'_> {
    /// The next fencing token (strictly increasing, starting at 1).
    fn next_token(&mut self) -> Res<u64> {
        let token: u64 = match self.tx.get(META, keys::META_NEXT_FENCE)? {
            Some(bytes) => decode("next fence", &bytes)?,
            None => 1,
        };
        self.tx.put(META, keys::META_NEXT_FENCE, encode(&(token + 1)));
        Ok(token)
    }

    /// Checks that `owner`'s session lives and has a handle open on `ino`.
    fn lock_holder_checks(&self, ino: InodeId, owner: LockOwner) -> Res<()> {
        self.live_session(owner.session)?;
        if super::rows::inode(&self.tx, ino)?.is_none() {
            return Err(Errno::BadF.into());
        }
        if self.tx.get(OPEN, &keys::open_key(ino, owner.session))?.is_none() {
            return Err(Errno::BadF.into());
        }
        Ok(())
    }

    /// Records that `owner`'s session may hold locks on `ino` (for release on expiry), and that
    /// waiters on `ino` should look again.
    fn locks_changed(&mut self, ino: InodeId, owner: LockOwner) {
        self.tx.put(SESSION_LOCKS, keys::session_inode_key(owner.session, ino), Vec::new());
        self.lock_changes.push(ino);
    }

    pub(super) fn set_lock(
        &mut self,
        ino: InodeId,
        owner: LockOwner,
        pid: u32,
        kind: LockKind,
        start: u64,
        len: u64,
    ) -> Res<Reply> {
        let (start, end) = range(start, len)?;
        self.lock_holder_checks(ino, owner)?;
        let locks = posix_locks(&self.tx, ino)?;
        if kind != LockKind::Unlock && first_conflict(&locks, owner, kind, start, end).is_some() {
            return Err(Errno::Again.into());
        }
        let own: Vec<PosixLock> = locks.iter().filter(|l| l.owner == owner).copied().collect();
        let token = if kind == LockKind::Unlock { 0 } else { self.next_token()? };
        let (removed, added) = apply_range(&own, owner, pid, kind, start, end, token);
        if locks.len() - removed.len() + added.len() > LOCKS_PER_INODE_MAX {
            return Err(Errno::NoLck.into());
        }
        for l in &removed {
            self.tx.delete(LOCKS, keys::lock_key(ino, owner, l.start));
        }
        for l in &added {
            self.tx.put(LOCKS, keys::lock_key(ino, owner, l.start), encode(l));
        }
        if !removed.is_empty() || !added.is_empty() {
            self.locks_changed(ino, owner);
        }
        Ok(Reply::Locked { token })
    }

    pub(super) fn flock(&mut self, ino: InodeId, owner: LockOwner, pid: u32, kind: LockKind) -> Res<Reply> {
        self.lock_holder_checks(ino, owner)?;
        let key = keys::flock_key(ino, owner);
        if kind == LockKind::Unlock {
            if self.tx.get(FLOCKS, &key)?.is_some() {
                self.tx.delete(FLOCKS, key);
                self.locks_changed(ino, owner);
            }
            return Ok(Reply::Locked { token: 0 });
        }
        let held = flocks(&self.tx, ino)?;
        if held.iter().any(|f| f.owner != owner && conflicting(f.kind, kind)) {
            return Err(Errno::Again.into());
        }
        if held.len() >= LOCKS_PER_INODE_MAX && !held.iter().any(|f| f.owner == owner) {
            return Err(Errno::NoLck.into());
        }
        let token = self.next_token()?;
        self.tx.put(FLOCKS, key, encode(&FlockLock { owner, kind, pid, token }));
        self.locks_changed(ino, owner);
        Ok(Reply::Locked { token })
    }

    /// Drops `owner`'s POSIX locks and/or flock on `ino` (no checks: releasing is always allowed).
    pub(super) fn release_owner(&mut self, ino: InodeId, owner: LockOwner, posix: bool, flock: bool) -> Res<bool> {
        let mut changed = false;
        if posix {
            for l in posix_locks(&self.tx, ino)?.iter().filter(|l| l.owner == owner) {
                self.tx.delete(LOCKS, keys::lock_key(ino, owner, l.start));
                changed = true;
            }
        }
        if flock {
            let key = keys::flock_key(ino, owner);
            if self.tx.get(FLOCKS, &key)?.is_some() {
                self.tx.delete(FLOCKS, key);
                changed = true;
            }
        }
        if changed {
            self.lock_changes.push(ino);
        }
        Ok(changed)
    }

    /// Drops every lock of `session` on `ino` and forgets the session's lock index row.
    pub(super) fn release_session_locks(&mut self, ino: InodeId, session: super::types::SessionId) -> Res<()> {
        let mut changed = false;
        for l in posix_locks(&self.tx, ino)?.iter().filter(|l| l.owner.session == session) {
            self.tx.delete(LOCKS, keys::lock_key(ino, l.owner, l.start));
            changed = true;
        }
        for f in flocks(&self.tx, ino)?.iter().filter(|f| f.owner.session == session) {
            self.tx.delete(FLOCKS, keys::flock_key(ino, f.owner));
            changed = true;
        }
        self.tx.delete(SESSION_LOCKS, keys::session_inode_key(session, ino));
        if changed {
            self.lock_changes.push(ino);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::types::SessionId;

    const A: LockOwner = LockOwner { session: SessionId(1), owner: 1 };
    const B: LockOwner = LockOwner { session: SessionId(1), owner: 2 };

    fn lock(owner: LockOwner, start: u64, end: u64, kind: LockKind) -> PosixLock {
        PosixLock { owner, start, end, kind, pid: 0, token: 0 }
    }

    /// Applies a request to `own` and returns the owner's ranges afterwards, sorted.
    fn after(own: &[PosixLock], kind: LockKind, start: u64, end: u64) -> Vec<(u64, u64, LockKind)> {
        let (removed, added) = apply_range(own, A, 0, kind, start, end, 0);
        let mut out: Vec<PosixLock> = own.iter().filter(|l| !removed.contains(l)).copied().collect();
        out.extend(added);
        let mut v: Vec<_> = out.iter().map(|l| (l.start, l.end, l.kind)).collect();
        v.sort_by_key(|x| x.0);
        v
    }

    use LockKind::{Exclusive as X, Shared as S, Unlock as U};

    #[test]
    fn ranges_and_eof() {
        assert_eq!(range(0, 0), Ok((0, LOCK_END_EOF)));
        assert_eq!(range(10, 5), Ok((10, 15)));
        assert_eq!(range(FILE_SIZE_BYTES_MAX, 1), Ok((FILE_SIZE_BYTES_MAX, FILE_SIZE_BYTES_MAX + 1)));
        assert_eq!(range(FILE_SIZE_BYTES_MAX, 2), Err(Errno::Inval));
        assert_eq!(range(u64::MAX, 0), Err(Errno::Inval));
        assert_eq!(range(1, u64::MAX), Err(Errno::Inval));
        assert_eq!(len_of(10, LOCK_END_EOF), 0);
        assert_eq!(len_of(10, 15), 5);
    }

    #[test]
    fn same_type_merges_overlapping_and_adjacent() {
        let own = [lock(A, 0, 10, S), lock(A, 20, 30, S)];
        assert_eq!(after(&own, S, 10, 20), vec![(0, 30, S)]);
        assert_eq!(after(&own, S, 5, 25), vec![(0, 30, S)]);
        assert_eq!(after(&own, S, 31, 40), vec![(0, 10, S), (20, 30, S), (31, 40, S)]);
        assert_eq!(after(&own, S, 30, LOCK_END_EOF), vec![(0, 10, S), (20, LOCK_END_EOF, S)]);
    }

    #[test]
    fn other_type_splits_and_unlock_cuts_holes() {
        let own = [lock(A, 0, 100, S)];
        assert_eq!(after(&own, X, 40, 60), vec![(0, 40, S), (40, 60, X), (60, 100, S)]);
        assert_eq!(after(&own, U, 40, 60), vec![(0, 40, S), (60, 100, S)]);
        assert_eq!(after(&own, U, 0, LOCK_END_EOF), vec![]);
        assert_eq!(after(&own, X, 0, 100), vec![(0, 100, X)]);
        assert_eq!(after(&own, X, 50, LOCK_END_EOF), vec![(0, 50, S), (50, LOCK_END_EOF, X)]);
        // Adjacent with another type: untouched, not merged.
        assert_eq!(after(&own, X, 100, 110), vec![(0, 100, S), (100, 110, X)]);
        // Downgrade of the middle of an exclusive range.
        let own = [lock(A, 0, LOCK_END_EOF, X)];
        assert_eq!(after(&own, S, 10, 20), vec![(0, 10, X), (10, 20, S), (20, LOCK_END_EOF, X)]);
    }

    #[test]
    fn conflicts_need_overlap_and_an_exclusive_side() {
        let held = [lock(B, 10, 20, S), lock(B, 30, LOCK_END_EOF, X)];
        assert_eq!(first_conflict(&held, A, S, 0, 30), None);
        assert_eq!(first_conflict(&held, A, X, 0, 10), None, "adjacent is no overlap");
        assert_eq!(first_conflict(&held, A, X, 0, 11), Some(held[0]));
        assert_eq!(first_conflict(&held, A, S, 29, 31), Some(held[1]));
        assert_eq!(first_conflict(&held, A, S, 1 << 40, LOCK_END_EOF), Some(held[1]));
        assert_eq!(first_conflict(&held, B, X, 0, LOCK_END_EOF), None, "own locks never conflict");
    }
}
