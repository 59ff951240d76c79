//! Client sessions in the replicated namespace.
//!
//! # Contract
//! - `OpenSession` allocates the next id from a counter in `ns_meta` (never 0, never reused) and
//!   stores the session with its granted TTL (the request clamped to
//!   [`SESSION_TTL_MIN`, `SESSION_TTL_MAX`]). The deadline is not replicated: only the leader
//!   counts down (see `crate::sessions`), and proposes `ExpireSessions` — time never enters
//!   `apply`.
//! - Closing or expiring a session releases every lock it holds and closes every handle it has
//!   open (found through the `ns_session_open` and `ns_session_locks` indexes), so an
//!   open-but-unlinked file whose last handles belonged to the session is removed and queued
//!   for reclaim.
//! - Handles and locks need a live session: open/create with an unknown session and lock
//!   requests of one answer EBADF.

use super::apply::Apply;
use super::command::{Reply, RequestId};
use super::errno::Errno;
use super::keys::{self, META, OPEN, OPEN_WRITE, REQUESTS, SESSIONS, SESSION_LOCKS, SESSION_OPEN};
use super::rows::{decode, encode, Res};
use super::types::{InodeId, Session, SessionId};
use crate::limits::{SESSION_TTL_MAX, SESSION_TTL_MIN};
use cairn_coordinator::rsm::store::StateRead;

/// The session, if it is open.
pub fn session(state: &dyn StateRead, id: SessionId) -> Res<Option<Session>> {
    match state.get(SESSIONS, &keys::session_key(id))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode("session", &bytes)?)),
    }
}

/// Every open session, in id order.
pub fn sessions(state: &dyn StateRead) -> Res<Vec<Session>> {
    let mut rows = Vec::new();
    state.scan(SESSIONS, &[], None, false, &mut |_, v| {
        rows.push(v.to_vec());
        true
    })?;
    rows.iter().map(|v| Ok(decode("session", v)?)).collect()
}

/// The inodes listed under `session` in an index table (`ns_session_open` / `ns_session_locks`).
fn session_inodes(state: &dyn StateRead, table: &str, session: SessionId) -> Res<Vec<InodeId>> {
    let (start, end) = keys::id_range(session.0);
    let mut out = Vec::new();
    state.scan(table, &start, Some(&end), false, &mut |k, _| {
        if let Some(ino) = k.get(8..).and_then(keys::decode_u64) {
            out.push(InodeId(ino));
        }
        true
    })?;
    Ok(out)
}

/// Clamps a requested TTL (0: the minimum).
pub fn granted_ttl_ms(requested_ms: u64) -> u64 {
    let min = SESSION_TTL_MIN.as_millis() as u64;
    let max = SESSION_TTL_MAX.as_millis() as u64;
    requested_ms.clamp(min, max)
}

impl Apply<'_> {
    /// The session, or EBADF when it is not open (closed, expired, or never opened).
    pub(super) fn live_session(&self, id: SessionId) -> Res<Session> {
        session(&self.tx, id)?.ok_or(Errno::BadF.into())
    }

    pub(super) fn open_session(&mut self, client_name: &str, host: &str, pid: u32, ttl_ms: u64) -> Res<Reply> {
        let next: u64 = match self.tx.get(META, keys::META_NEXT_SESSION)? {
            Some(bytes) => decode("next session", &bytes)?,
            None => 1,
        };
        self.tx.put(META, keys::META_NEXT_SESSION, encode(&(next + 1)));
        let session = Session {
            id: SessionId(next),
            ttl_ms: granted_ttl_ms(ttl_ms),
            client_name: client_name.chars().take(crate::limits::SESSION_LABEL_CHARS_MAX).collect(),
            host: host.chars().take(crate::limits::SESSION_LABEL_CHARS_MAX).collect(),
            pid,
            opened: self.now(),
        };
        self.tx.put(SESSIONS, keys::session_key(session.id), encode(&session));
        Ok(Reply::Session { id: session.id, ttl_ms: session.ttl_ms })
    }

    pub(super) fn close_session(&mut self, id: SessionId) -> Res<Reply> {
        self.live_session(id)?;
        self.end_session(id)?;
        Ok(Reply::Done)
    }

    pub(super) fn expire_sessions(&mut self, ids: &[SessionId]) -> Res<Reply> {
        for &id in ids {
            if session(&self.tx, id)?.is_some() {
                self.end_session(id)?;
            }
        }
        Ok(Reply::Done)
    }

    /// The reply recorded for `request` when it was applied before.
    pub(super) fn recorded_reply(&self, request: &RequestId) -> Res<Option<Reply>> {
        match self.tx.get(REQUESTS, &keys::request_key(request.session, request.seq))? {
            Some(bytes) => Ok(Some(decode("recorded reply", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records `reply` as the answer to `request` and forgets the replies the client has had
    /// (`done_below`). Requests of a session that is not open are not recorded: nothing would
    /// ever forget them.
    ///
    /// The session's row 0 holds how far replies were forgotten, so each command scans only
    /// the rows recorded since: a scan from 0 would step over the tombstone of every reply the
    /// session ever forgot, which made each change cost time in the number of changes before
    /// it (fsx slowed to a crawl).
    pub(super) fn record_reply(&mut self, request: &RequestId, reply: &Reply) -> Res<()> {
        if session(&self.tx, request.session)?.is_none() {
            return Ok(());
        }
        let forgotten = self.replies_forgotten_below(request.session)?;
        if request.seq < forgotten {
            // The client said it had this request's answer: a stray copy, not recorded again.
            return Ok(());
        }
        let done_below = request.done_below.min(request.seq);
        if done_below > forgotten {
            let start = keys::request_key(request.session, forgotten);
            let end = keys::request_key(request.session, done_below);
            for key in self.request_keys(&start, &end)? {
                self.tx.delete(REQUESTS, key);
            }
            self.tx.put(REQUESTS, keys::request_key(request.session, 0), encode(&done_below));
        }
        self.tx.put(REQUESTS, keys::request_key(request.session, request.seq), encode(reply));
        Ok(())
    }

    /// Replies of `session` numbered below this are gone (request numbers start at 1).
    fn replies_forgotten_below(&self, session: SessionId) -> Res<u64> {
        match self.tx.get(REQUESTS, &keys::request_key(session, 0))? {
            Some(bytes) => Ok(decode("forgotten replies mark", &bytes)?),
            None => Ok(1),
        }
    }

    fn request_keys(&self, start: &[u8], end: &[u8]) -> Res<Vec<Vec<u8>>> {
        let mut found = Vec::new();
        self.tx.scan(REQUESTS, start, Some(end), false, &mut |k, _| {
            found.push(k.to_vec());
            true
        })?;
        Ok(found)
    }

    /// Releases the session's locks, closes its handles and forgets it.
    fn end_session(&mut self, id: SessionId) -> Res<()> {
        let start = keys::request_key(id, self.replies_forgotten_below(id)?);
        let end = match id.0.checked_add(1) {
            Some(next) => keys::request_key(SessionId(next), 0).to_vec(),
            None => vec![0xff; 17],
        };
        for key in self.request_keys(&start, &end)? {
            self.tx.delete(REQUESTS, key);
        }
        self.tx.delete(REQUESTS, keys::request_key(id, 0));
        for ino in session_inodes(&self.tx, SESSION_LOCKS, id)? {
            self.release_session_locks(ino, id)?;
        }
        for ino in session_inodes(&self.tx, SESSION_OPEN, id)? {
            let key = keys::open_key(ino, id);
            let count: u32 = match self.tx.get(OPEN, &key)? {
                Some(bytes) => decode("open count", &bytes)?,
                None => 0,
            };
            let writers = self.write_handles(ino, id)?;
            self.tx.delete(OPEN, key.clone());
            self.tx.delete(OPEN_WRITE, key);
            self.tx.delete(SESSION_OPEN, keys::session_inode_key(id, ino));
            if writers > 0 {
                self.drop_unwritten_chunks(ino)?;
            }
            self.drop_handles(ino, count)?;
        }
        self.tx.delete(SESSIONS, keys::session_key(id));
        Ok(())
    }
}
