//! Session leases on the leader: countdowns, heartbeats and expiry proposals.
//!
//! # Contract
//! - The replicated state holds each session's id and granted TTL; *when* a session expires is
//!   decided here, only on the leader, and committed as `ExpireSessions` — time never enters
//!   `apply`. This is the coordinator's lessor (`cairn_coordinator::lessor`) for sessions, with
//!   millisecond TTLs.
//! - A leader starts every countdown afresh when it first looks at a session (after winning an
//!   election every countdown is forgotten), so a leader change can only extend a lease, never
//!   cut it short. Heartbeats go to the leader (forwarded by followers) and restart the
//!   countdown there.
//! - Expiries are proposed with `propose_local`, which only a current leader can commit: a
//!   deposed leader whose countdowns ran out (the heartbeats went elsewhere) cannot expire a
//!   live session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cairn_coordinator::rsm::store::StateStore;
use cairn_coordinator::rsm::{AppRpcHandler, RsmError};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::limits::{SESSION_CHECK_INTERVAL, SESSION_EXPIRE_BATCH_MAX};
use crate::namespace::command::{decode_outcome, encode_command, Command};
use crate::namespace::{sessions, Caller, Op, SessionId, Timespec};
use crate::node::namespace::NamespaceNode;

/// The leader-only method that renews a session: body = session id (u64 BE); answer = the
/// granted TTL in ms (u64 BE), 0 when the session is not open.
pub const RPC_SESSION_HEARTBEAT: &str = "session.heartbeat";

/// Deadlines of the sessions this node has seen while leader.
#[derive(Default)]
pub struct Countdowns {
    deadlines: Mutex<HashMap<SessionId, Instant>>,
}

impl Countdowns {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<SessionId, Instant>) -> T) -> T {
        // Each operation is one map update, so a poisoned map is still consistent.
        let mut guard = self.deadlines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Forgets every countdown (leadership changed).
    pub fn reset(&self) {
        self.with(|d| d.clear());
    }

    /// Restarts `id`'s countdown at `ttl` from `now`.
    pub fn renew(&self, id: SessionId, ttl: Duration, now: Instant) {
        self.with(|d| d.insert(id, now + ttl));
    }

    /// Reconciles with the open sessions (`live`: id and TTL) and returns those whose deadline
    /// passed, in id order. Sessions not seen before start their countdown now; countdowns of
    /// sessions that no longer exist are dropped.
    pub fn expired(&self, live: &[(SessionId, Duration)], now: Instant) -> Vec<SessionId> {
        self.with(|d| {
            let ids: HashSet<SessionId> = live.iter().map(|(id, _)| *id).collect();
            d.retain(|id, _| ids.contains(id));
            let mut out: Vec<SessionId> =
                live.iter().filter(|(id, ttl)| *d.entry(*id).or_insert(now + *ttl) <= now).map(|(id, _)| *id).collect();
            out.sort_unstable();
            out
        })
    }
}

/// Renews `id` on this node, which believes it leads: the granted TTL, or `None` when the
/// session is not open here.
pub fn renew_here(node: &NamespaceNode, id: SessionId) -> Result<Option<Duration>, RsmError> {
    let view = node.rsm().store().read_view();
    match sessions::session(&*view, id) {
        Ok(Some(s)) => {
            let ttl = Duration::from_millis(s.ttl_ms);
            node.countdowns().renew(id, ttl, Instant::now());
            Ok(Some(ttl))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(RsmError::Internal(format!("read session: {e}"))),
    }
}

/// Answers leader calls forwarded to this node: heartbeats here, chunk work (`chunk.*`) by the
/// chunk manager.
pub struct LeaderCalls {
    pub node: Weak<NamespaceNode>,
    pub chunks: Weak<crate::chunks::ChunkManager>,
}

impl AppRpcHandler for LeaderCalls {
    fn call(&self, method: String, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RsmError>> {
        let node = self.node.upgrade();
        let chunks = self.chunks.upgrade();
        Box::pin(async move {
            let node = node.ok_or(RsmError::ShuttingDown)?;
            if method.starts_with("chunk.") {
                let chunks = chunks.ok_or(RsmError::ShuttingDown)?;
                return chunks.leader_call(&method, &body).await;
            }
            if method != RPC_SESSION_HEARTBEAT {
                return Err(RsmError::Internal(format!("unknown leader call {method}")));
            }
            let bytes: [u8; 8] =
                body.as_slice().try_into().map_err(|_| RsmError::Internal("malformed heartbeat".into()))?;
            let id = SessionId(u64::from_be_bytes(bytes));
            let mut ttl = renew_here(&node, id)?;
            if ttl.is_none() {
                // A new leader may not have applied the OpenSession yet: catch up, look again.
                node.rsm().read_barrier().await?;
                ttl = renew_here(&node, id)?;
            }
            Ok((ttl.map_or(0, |t| t.as_millis() as u64)).to_be_bytes().to_vec())
        })
    }
}

/// On the leader, checks session deadlines and proposes expiries. Every change of leadership
/// resets the countdowns, so a new leader gives every session a full TTL.
pub async fn expire_while_leader(node: Arc<NamespaceNode>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(SESSION_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_term: Option<u64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let term = node.rsm().metrics().borrow().current_term;
        if !node.rsm().is_leader() {
            if leading_term.take().is_some() {
                node.countdowns().reset();
            }
            continue;
        }
        if leading_term != Some(term) {
            node.countdowns().reset();
            leading_term = Some(term);
        }
        if let Err(e) = expire_round(&node).await {
            tracing::warn!(error = %e, "session expiry round failed");
        }
    }
}

/// One round: proposes the expiry of overdue sessions (at most a batch).
async fn expire_round(node: &NamespaceNode) -> Result<usize, RsmError> {
    let live: Vec<(SessionId, Duration)> = {
        let view = node.rsm().store().read_view();
        sessions::sessions(&*view)
            .map_err(|e| RsmError::Internal(format!("read sessions: {e}")))?
            .into_iter()
            .map(|s| (s.id, Duration::from_millis(s.ttl_ms)))
            .collect()
    };
    let mut expired = node.countdowns().expired(&live, Instant::now());
    if expired.is_empty() {
        return Ok(0);
    }
    expired.truncate(SESSION_EXPIRE_BATCH_MAX);
    let n = expired.len();
    tracing::info!(sessions = ?expired, "expiring sessions whose lease ran out");
    let command = Command { caller: Caller::root(), now: Timespec::now(), op: Op::ExpireSessions { ids: expired } };
    let bytes = node.rsm().propose_local(encode_command(&command)).await?;
    match decode_outcome(&bytes) {
        Ok(Ok(_)) => Ok(n),
        Ok(Err(e)) => Err(RsmError::Internal(format!("expire sessions answered {e}"))),
        Err(e) => Err(RsmError::Internal(format!("undecodable outcome: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: SessionId = SessionId(1);
    const S2: SessionId = SessionId(2);

    #[test]
    fn countdown_starts_on_first_sight_and_renews() {
        let c = Countdowns::new();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(c.expired(&[(S1, s(5)), (S2, s(1))], t0).is_empty());
        assert_eq!(c.expired(&[(S1, s(5)), (S2, s(1))], t0 + s(2)), vec![S2]);
        c.renew(S1, s(5), t0 + s(4));
        assert!(c.expired(&[(S1, s(5))], t0 + s(8)).is_empty());
        assert_eq!(c.expired(&[(S1, s(5))], t0 + s(10)), vec![S1]);
    }

    #[test]
    fn reset_gives_a_full_ttl_and_vanished_sessions_are_forgotten() {
        let c = Countdowns::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        c.expired(&[(S1, ms(2000))], t0);
        c.reset();
        assert!(c.expired(&[(S1, ms(2000))], t0 + ms(1500)).is_empty());
        assert!(c.expired(&[(S1, ms(2000))], t0 + ms(3000)).is_empty());
        assert_eq!(c.expired(&[(S1, ms(2000))], t0 + ms(3600)), vec![S1]);
        assert!(c.expired(&[], t0 + ms(9000)).is_empty());
        assert!(c.expired(&[(S1, ms(2000))], t0 + ms(9000)).is_empty(), "seen again: a fresh countdown");
    }
}
