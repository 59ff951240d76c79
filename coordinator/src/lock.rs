//! etcd's `v3lock` service, with the grant made safe and a fencing token handed out.
//!
//! # What it promises
//!
//! - The wire behaviour of etcd v3.4's server-side lock (`etcdserver/api/v3lock`, which runs
//!   `clientv3/concurrency.Mutex` on an embedded client): `Lock(name, lease)` owns the key
//!   `name/<lease in lower-case hex>`, created with the lease by a txn if absent (the same lease
//!   locking the same name again reuses its key); waiters queue fairly by the create revision of
//!   their keys; the oldest key under `name/` holds the lock. `Unlock(key)` deletes the key.
//!   A lease of 0 makes the server grant a lease with etcd's default session TTL of 60 s, as
//!   etcd does (the key names it; nothing keeps it alive).
//! - **A grant only while the owner's lease is alive.** After waiting, and before answering,
//!   [`Locks::lock`] re-checks linearizably (a read barrier) that the caller's key still exists
//!   with the create revision it queued at, that it still carries the caller's lease, that the
//!   lease exists and that the leader's countdown for it has not run out, and that no older key
//!   is left under the prefix. If the key or lease is gone, the call fails with etcd's
//!   "etcdserver: requested lease not found" instead of granting. etcd 3.4 answers without this
//!   check, so a waiter whose lease expired while it waited could be told it holds the lock.
//! - **A fencing token.** The create revision of the returned key is strictly greater than that
//!   of every earlier grant of the same lock (revisions only grow, and a grant needs every older
//!   key gone). Clients read it as the `create_revision` of the key (a `Range` of it) and, for
//!   convenience, in the response's `header.revision`, which Cairn sets to exactly that
//!   revision (etcd sets it to the revision of its last internal read, which equals the token
//!   only for uncontended grants). `docs/coordination.md` shows how resources check it.
//! - A caller that gives up while waiting (cancels the RPC or disconnects, which drops the
//!   call) has its key deleted, as etcd's mutex does; so does a wait that fails.
//! - Errors carry etcd's messages; see the table in `api/error.rs` for their codes.
//!
//! # How waiting works
//!
//! No polling: a waiter subscribes to the state machine's applied events, reads the newest key
//! older than its own (its predecessor, as etcd's `waitDeletes` does, so a release wakes one
//! waiter, not all of them), and sleeps until that key is deleted; it then looks again. A
//! waiter whose own key is deleted (its lease expired or was revoked) stops at once. A waiter
//! that lags behind the event stream, or sees a revision gap, simply reads the state again,
//! which is all it needs: unlike a watcher it wants the current state, not every change.
//!
//! [`Election`](crate::election) queues campaigners with the same machinery ([`Ticket`],
//! [`wait_for_turn`]).
//!
//! # What it never does
//!
//! It never polls, never proposes anything but ordinary etcd requests through
//! [`Backend`] (locks are plain keys, so they replicate, snapshot and survive failover like any
//! other key), and never sees gRPC types.

use std::sync::Arc;

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::KeyValue;
use cairn_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::api::error::ApiError;
use crate::backend::Backend;
use crate::limits;
use crate::mvcc::{self, EventBatch, KvError};
use crate::rsm::store::{StateRead, StateStore};
use crate::rsm::RsmError;

/// Errors of the lock service (and of the queue the election service shares).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Too many calls are waiting on this node (etcd's `ErrTooManyRequests`).
    #[error("etcdserver: too many requests")]
    TooManyWaiters,
}

impl From<KvError> for LockError {
    fn from(e: KvError) -> Self {
        LockError::Api(e.into())
    }
}

impl From<RsmError> for LockError {
    fn from(e: RsmError) -> Self {
        LockError::Api(e.into())
    }
}

impl LockError {
    /// The caller's key or lease is gone: etcd's "requested lease not found".
    pub(crate) fn lease_not_found() -> Self {
        KvError::LeaseNotFound.into()
    }
}

/// The lock service of one coordinator node.
#[derive(Clone)]
pub struct Locks {
    backend: Arc<Backend>,
    waiters: Arc<Semaphore>,
}

impl Locks {
    pub fn new(backend: Arc<Backend>) -> Self {
        Self { backend, waiters: Arc::new(Semaphore::new(limits::LOCK_WAITERS_MAX)) }
    }

    /// `Lock`: returns once the caller holds the lock named `req.name` through `req.lease`.
    /// The response key's create revision, also in `header.revision`, is the fencing token.
    pub async fn lock(&self, req: LockRequest) -> Result<LockResponse, LockError> {
        let _permit = admit(&self.waiters)?;
        let lease = session_lease(&self.backend, req.lease).await?;
        let ticket = enqueue(&self.backend, &req.name, lease, &[]).await?;
        if !ticket.first {
            // Dropped (the client went away) before it is disarmed: the key is withdrawn.
            let mut abandon = Abandon::new(&self.backend, &ticket);
            if let Err(e) = wait_for_turn(&self.backend, &ticket).await {
                // Like etcd's mutex: a failed wait releases the key rather than leave it queued.
                abandon.disarm();
                withdraw(&self.backend, &ticket.key, ticket.create_revision).await;
                return Err(e);
            }
            abandon.disarm();
        }
        tracing::debug!(key = %String::from_utf8_lossy(&ticket.key), token = ticket.create_revision, "lock granted");
        Ok(LockResponse { header: Some(self.backend.header(ticket.create_revision)), key: ticket.key })
    }

    /// `Unlock`: deletes the lock key (whoever holds it, as etcd does).
    pub async fn unlock(&self, req: UnlockRequest) -> Result<UnlockResponse, LockError> {
        let resp = self.backend.delete_range(DeleteRangeRequest { key: req.key, ..Default::default() }).await?;
        Ok(UnlockResponse { header: resp.header })
    }
}

/// Takes a waiter slot, or fails at once when every slot is taken.
pub(crate) fn admit(waiters: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, LockError> {
    waiters.clone().try_acquire_owned().map_err(|_| LockError::TooManyWaiters)
}

/// The lease a `Lock` or `Campaign` runs under: the caller's, or for lease 0 a new one with
/// etcd's default session TTL (etcd's `concurrency.NewSession` grants one in that case).
pub(crate) async fn session_lease(backend: &Backend, lease: i64) -> Result<i64, LockError> {
    if lease != 0 {
        return Ok(lease);
    }
    let granted = backend.lease_grant(LeaseGrantRequest { ttl: limits::LOCK_DEFAULT_LEASE_TTL_SECS, id: 0 }).await?;
    Ok(granted.id)
}

/// The key-space prefix of a lock or election: `name/`.
pub(crate) fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// etcd's `GetPrefixRangeEnd`: the smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

/// The key a session owns under `prefix`: the lease in lower-case hex, as Go's `%x` prints an
/// `int64` (a minus sign, then the magnitude, for negative ids).
pub(crate) fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 { format!("-{:x}", lease.unsigned_abs()) } else { format!("{lease:x}") };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key
}

/// A caller's place in the queue of one lock or election.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub(crate) prefix: Vec<u8>,
    /// The caller's key, `prefix` + hex(lease).
    pub(crate) key: Vec<u8>,
    pub(crate) lease: i64,
    /// The key's create revision: the queue position, and the fencing token once granted.
    pub(crate) create_revision: i64,
    /// Header of the txn that queued the caller.
    pub(crate) header: ResponseHeader,
    /// The key was already the oldest under the prefix in that txn (and carried the caller's
    /// lease), so the caller holds the lock or leadership without waiting.
    pub(crate) first: bool,
    /// The key's value before the txn, if the key already existed.
    pub(crate) existing_value: Option<Vec<u8>>,
}

/// etcd's `Compare(CreateRevision(key), "=", revision)`.
pub(crate) fn compare_create_revision(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

fn range_op(req: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(req)) }
}

/// etcd's `WithFirstCreate`: the key under `prefix` with the lowest create revision.
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The newest key under the ticket's prefix created before the ticket's key: the one to wait
/// for (etcd's `WithLastCreate` + `WithMaxCreateRev`).
fn predecessor_request(ticket: &Ticket) -> RangeRequest {
    RangeRequest {
        key: ticket.prefix.clone(),
        range_end: prefix_end(&ticket.prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: ticket.create_revision - 1,
        ..Default::default()
    }
}

fn range_kvs(resp: Option<response_op::Response>) -> Result<Vec<KeyValue>, LockError> {
    match resp {
        Some(response_op::Response::ResponseRange(r)) => Ok(r.kvs),
        other => Err(RsmError::Internal(format!("unexpected txn result {other:?}")).into()),
    }
}

/// Queues the caller: creates `name/<lease hex>` with `value` and the lease if it does not
/// exist (etcd's mutex and election txn), and reports whether it is already the oldest key.
/// Fails with "requested lease not found" if the lease does not exist.
pub(crate) async fn enqueue(backend: &Backend, name: &[u8], lease: i64, value: &[u8]) -> Result<Ticket, LockError> {
    let prefix = prefix(name);
    let key = session_key(&prefix, lease);
    let put = PutRequest { key: key.clone(), value: value.to_vec(), lease, ..Default::default() };
    let get = RangeRequest { key: key.clone(), ..Default::default() };
    let txn = TxnRequest {
        compare: vec![compare_create_revision(&key, 0)],
        success: vec![
            RequestOp { request: Some(request_op::Request::RequestPut(put)) },
            range_op(first_created(&prefix)),
        ],
        failure: vec![range_op(get), range_op(first_created(&prefix))],
    };
    let resp = backend.txn(txn).await?;
    let header = resp.header.unwrap_or_default();
    let mut responses = resp.responses.into_iter().map(|r| r.response);
    let (create_revision, existing_value, own_lease) = if resp.succeeded {
        responses.next();
        (header.revision, None, lease)
    } else {
        let existing = range_kvs(responses.next().flatten())?.into_iter().next();
        // The compare said the key exists, and a txn is atomic, so the range found it.
        let existing = existing.ok_or_else(|| RsmError::Internal("queued key vanished inside a txn".into()))?;
        (existing.create_revision, Some(existing.value), existing.lease)
    };
    let owner = range_kvs(responses.next().flatten())?.into_iter().next();
    let first = own_lease == lease && owner.is_some_and(|o| o.create_revision == create_revision);
    Ok(Ticket { prefix, key, lease, create_revision, header, first, existing_value })
}

/// Deletes the ticket's key if it is still the incarnation created at `create_revision`.
/// Best effort: failures are logged, and a key left behind goes when its lease does.
pub(crate) async fn withdraw(backend: &Backend, key: &[u8], create_revision: i64) {
    let delete = DeleteRangeRequest { key: key.to_vec(), ..Default::default() };
    let txn = TxnRequest {
        compare: vec![compare_create_revision(key, create_revision)],
        success: vec![RequestOp { request: Some(request_op::Request::RequestDeleteRange(delete)) }],
        failure: Vec::new(),
    };
    if let Err(e) = backend.txn(txn).await {
        tracing::debug!(key = %String::from_utf8_lossy(key), error = %e, "withdrawing a queued key failed");
    }
}

/// Withdraws a queued key when the call that queued it is dropped before [`Abandon::disarm`]
/// (tonic drops a call's future when the client cancels it or disconnects).
pub(crate) struct Abandon {
    backend: Arc<Backend>,
    key: Vec<u8>,
    create_revision: i64,
    armed: bool,
}

impl Abandon {
    pub(crate) fn new(backend: &Arc<Backend>, ticket: &Ticket) -> Self {
        Self { backend: backend.clone(), key: ticket.key.clone(), create_revision: ticket.create_revision, armed: true }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let backend = self.backend.clone();
        let key = std::mem::take(&mut self.key);
        let create_revision = self.create_revision;
        tracing::debug!(key = %String::from_utf8_lossy(&key), "caller gave up waiting; withdrawing its key");
        runtime.spawn(async move { withdraw(&backend, &key, create_revision).await });
    }
}

/// What a read of the queue found.
enum Queue {
    /// The caller's key is gone (or is another incarnation, or lost its lease).
    Lost,
    /// An older key is still queued: wait for it.
    Behind(KeyValue),
    /// The caller's key is the oldest (or this node has not applied it yet).
    Front,
}

/// Reads the caller's position from `view`. A view older than the ticket (a follower that has
/// not applied the queueing txn yet) cannot tell whether the caller's key is gone, so only a
/// view at or after the ticket's revision can answer [`Queue::Lost`].
fn position(view: &dyn StateRead, ticket: &Ticket) -> Result<Queue, LockError> {
    let revision = mvcc::current_revision(view)?;
    if revision >= ticket.create_revision {
        let mine = mvcc::range(view, &RangeRequest { key: ticket.key.clone(), ..Default::default() })?;
        match mine.kvs.first() {
            Some(kv) if kv.create_revision == ticket.create_revision && kv.lease == ticket.lease => {}
            _ => return Ok(Queue::Lost),
        }
    }
    let older = mvcc::range(view, &predecessor_request(ticket))?;
    Ok(match older.kvs.into_iter().next() {
        Some(kv) => Queue::Behind(kv),
        None => Queue::Front,
    })
}

/// The grant-time check, after a read barrier: the caller's key and lease are alive and the
/// key is the oldest. Returns the queue position as seen at that linearizable point.
async fn check_at_grant(backend: &Backend, ticket: &Ticket) -> Result<Queue, LockError> {
    // Asks the leader for the lease's remaining time, then waits on a read barrier: a lease
    // the leader found expired (ttl 0) but has not yet revoked does not count as alive.
    let ttl = backend.lease_time_to_live(LeaseTimeToLiveRequest { id: ticket.lease, keys: false }).await?;
    if ttl.ttl <= 0 {
        return Ok(Queue::Lost);
    }
    let view = backend.rsm().store().read_view();
    position(&*view, ticket)
}

/// [`check_at_grant`], retried while the cluster is between leaders: a waiter should not lose
/// its place in the queue to a failover. The check is a read, so retrying is safe.
async fn check_at_grant_retrying(backend: &Backend, ticket: &Ticket) -> Result<Queue, LockError> {
    let deadline = tokio::time::Instant::now() + limits::LOCK_GRANT_CHECK_TIMEOUT;
    let mut attempt = 0u32;
    loop {
        match check_at_grant(backend, ticket).await {
            Err(LockError::Api(ApiError::Rsm(e))) if is_transient(&e) && tokio::time::Instant::now() < deadline => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "grant check failed; retrying");
                tokio::time::sleep(limits::LOCK_GRANT_CHECK_BACKOFF * attempt.min(10)).await;
            }
            other => return other,
        }
    }
}

/// Errors that go away once the cluster has a (reachable) leader again.
fn is_transient(e: &RsmError) -> bool {
    matches!(e, RsmError::NotLeader { .. } | RsmError::NoLeader | RsmError::Timeout | RsmError::Peer { .. })
}

/// Waits until the ticket's key is the oldest under its prefix and the grant-time check
/// passes. Fails with "requested lease not found" if the key or its lease goes away first.
pub(crate) async fn wait_for_turn(backend: &Backend, ticket: &Ticket) -> Result<(), LockError> {
    // Subscribe before the first read, so no deletion after that read can be missed.
    let mut live = backend.rsm().app().subscribe();
    loop {
        let (seen, queue) = {
            let view = backend.rsm().store().read_view();
            (mvcc::current_revision(&*view)?, position(&*view, ticket)?)
        };
        match queue {
            Queue::Lost => return Err(LockError::lease_not_found()),
            Queue::Front => match check_at_grant_retrying(backend, ticket).await? {
                Queue::Front => return Ok(()),
                Queue::Lost => return Err(LockError::lease_not_found()),
                // This node was behind; after the barrier it is not, so read again.
                Queue::Behind(_) => continue,
            },
            Queue::Behind(older) => {
                if let Woke::MineDeleted = wait_for_delete(&mut live, seen, &older.key, ticket).await? {
                    return Err(LockError::lease_not_found());
                }
            }
        }
    }
}

enum Woke {
    /// Something changed that calls for reading the queue again.
    Reread,
    /// The caller's own key was deleted.
    MineDeleted,
}

/// Sleeps until `older` (read at revision `seen`) or the caller's key is deleted, or until the
/// event stream cannot vouch that nothing was missed.
async fn wait_for_delete(
    live: &mut broadcast::Receiver<Arc<EventBatch>>,
    mut seen: i64,
    older: &[u8],
    ticket: &Ticket,
) -> Result<Woke, LockError> {
    loop {
        let batch = match live.recv().await {
            Ok(batch) => batch,
            Err(broadcast::error::RecvError::Lagged(_)) => return Ok(Woke::Reread),
            Err(broadcast::error::RecvError::Closed) => return Err(RsmError::ShuttingDown.into()),
        };
        // An empty batch means a snapshot replaced the state; a gap means batches were dropped.
        if batch.events.is_empty() || batch.revision > seen + 1 {
            return Ok(Woke::Reread);
        }
        if batch.revision <= seen {
            continue;
        }
        seen = batch.revision;
        for event in &batch.events {
            if event.r#type != EventType::Delete as i32 {
                continue;
            }
            let Some(kv) = &event.kv else { continue };
            if kv.key == ticket.key && batch.revision > ticket.create_revision {
                return Ok(Woke::MineDeleted);
            }
            if kv.key == older {
                return Ok(Woke::Reread);
            }
        }
    }
}

/// A single-node coordinator in a temporary directory, for the lock and election tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};

    use crate::backend::Backend;
    use crate::lessor::Lessor;
    use crate::mvcc::KvStateMachine;
    use crate::rsm::{Member, Rsm, RsmConfig};

    pub(crate) struct Node {
        pub(crate) backend: Arc<Backend>,
        _dir: tempfile::TempDir,
    }

    impl Node {
        pub(crate) async fn start() -> Node {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = RsmConfig::new(1, dir.path().join("node-1"));
            config.heartbeat_interval_ms = 50;
            config.election_timeout_min_ms = 150;
            config.election_timeout_max_ms = 300;
            let rsm = Rsm::open(config, Arc::new(KvStateMachine::new())).await.expect("open");
            rsm.bootstrap(BTreeMap::from([(1, Member::new("127.0.0.1:1"))])).await.expect("bootstrap");
            for _ in 0..200 {
                if rsm.is_leader() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(rsm.is_leader(), "a single node elects itself");
            let backend = Backend::new(rsm, Arc::new(Lessor::new()), 7, 150);
            Node { backend, _dir: dir }
        }

        pub(crate) async fn lease(&self, ttl: i64) -> i64 {
            self.backend.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await.expect("grant").id
        }

        pub(crate) async fn revoke(&self, id: i64) {
            self.backend.lease_revoke(LeaseRevokeRequest { id }).await.expect("revoke");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::Node;
    use super::*;
    use crate::api::error::lock_status;

    /// Long enough for a waiter to have queued (a proposal on one node takes milliseconds).
    const SETTLE: Duration = Duration::from_millis(300);
    const GRANT_DEADLINE: Duration = Duration::from_secs(10);

    fn req(name: &str, lease: i64) -> LockRequest {
        LockRequest { name: name.as_bytes().to_vec(), lease }
    }

    async fn create_revision(node: &Node, key: &[u8]) -> Option<i64> {
        let resp = node.backend.range(RangeRequest { key: key.to_vec(), ..Default::default() }).await.expect("range");
        resp.kvs.first().map(|kv| kv.create_revision)
    }

    async fn unlock(locks: &Locks, key: &[u8]) {
        locks.unlock(UnlockRequest { key: key.to_vec() }).await.expect("unlock");
    }

    #[tokio::test]
    async fn uncontended_grant_returns_the_fencing_token() {
        let node = Node::start().await;
        let locks = Locks::new(node.backend.clone());
        let lease = node.lease(30).await;
        let resp = locks.lock(req("job", lease)).await.expect("lock");
        assert_eq!(resp.key, session_key(b"job/", lease));
        let token = resp.header.as_ref().expect("header").revision;
        assert_eq!(create_revision(&node, &resp.key).await, Some(token));
        // The same lease locking again reuses its key (etcd's mutex), so the token is the same.
        let again = locks.lock(req("job", lease)).await.expect("relock");
        assert_eq!(again.header.expect("header").revision, token);
        unlock(&locks, &resp.key).await;
        assert_eq!(create_revision(&node, &resp.key).await, None);
    }

    #[tokio::test]
    async fn waiters_are_granted_in_queue_order_with_increasing_tokens() {
        let node = Node::start().await;
        let locks = Locks::new(node.backend.clone());
        let holder = locks.lock(req("q", node.lease(30).await)).await.expect("lock");
        let mut last_token = holder.header.expect("header").revision;
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let lease = node.lease(30).await;
            let locks = locks.clone();
            waiting.push(tokio::spawn(async move { locks.lock(req("q", lease)).await }));
            tokio::time::sleep(SETTLE).await;
        }
        let mut held = holder.key;
        for waiter in waiting {
            assert!(!waiter.is_finished(), "a waiter was granted while the lock was held");
            unlock(&locks, &held).await;
            let granted =
                tokio::time::timeout(GRANT_DEADLINE, waiter).await.expect("granted").expect("join").expect("lock");
            let token = granted.header.expect("header").revision;
            assert!(token > last_token, "token {token} after {last_token}");
            assert_eq!(create_revision(&node, &granted.key).await, Some(token));
            last_token = token;
            held = granted.key;
        }
    }

    #[tokio::test]
    async fn a_revoked_holder_hands_over_and_a_revoked_waiter_fails() {
        let node = Node::start().await;
        let locks = Locks::new(node.backend.clone());
        let holder_lease = node.lease(30).await;
        let holder = locks.lock(req("r", holder_lease)).await.expect("lock");
        let doomed_lease = node.lease(30).await;
        let doomed = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock(req("r", doomed_lease)).await }
        });
        tokio::time::sleep(SETTLE).await;
        let next_lease = node.lease(30).await;
        let next = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock(req("r", next_lease)).await }
        });
        tokio::time::sleep(SETTLE).await;

        node.revoke(doomed_lease).await;
        let failed = tokio::time::timeout(GRANT_DEADLINE, doomed).await.expect("ends").expect("join");
        let status = lock_status(&failed.expect_err("a waiter without a lease is not granted"));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert_eq!(status.message(), "etcdserver: requested lease not found");
        assert!(!next.is_finished(), "the holder still holds the lock");

        node.revoke(holder_lease).await;
        let granted = tokio::time::timeout(GRANT_DEADLINE, next).await.expect("granted").expect("join").expect("lock");
        assert!(granted.header.expect("header").revision > holder.header.expect("header").revision);
    }

    #[tokio::test]
    async fn a_missing_lease_is_refused_and_a_cancelled_waiter_withdraws() {
        let node = Node::start().await;
        let locks = Locks::new(node.backend.clone());
        let err = locks.lock(req("c", 0x7777)).await.expect_err("no such lease");
        assert_eq!(lock_status(&err).message(), "etcdserver: requested lease not found");

        let holder = locks.lock(req("c", node.lease(30).await)).await.expect("lock");
        let lease = node.lease(30).await;
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock(req("c", lease)).await }
        });
        tokio::time::sleep(SETTLE).await;
        let key = session_key(b"c/", lease);
        assert!(create_revision(&node, &key).await.is_some(), "the waiter queued");
        waiter.abort();
        let deadline = tokio::time::Instant::now() + GRANT_DEADLINE;
        while create_revision(&node, &key).await.is_some() {
            assert!(tokio::time::Instant::now() < deadline, "the cancelled waiter's key was not withdrawn");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(create_revision(&node, &holder.key).await.is_some(), "the holder keeps its lock");
    }

    #[tokio::test]
    async fn lease_zero_gets_a_server_granted_session_lease() {
        let node = Node::start().await;
        let locks = Locks::new(node.backend.clone());
        let resp = locks.lock(req("z", 0)).await.expect("lock");
        let kv = node.backend.range(RangeRequest { key: resp.key.clone(), ..Default::default() }).await.expect("range");
        let lease = kv.kvs[0].lease;
        assert_ne!(lease, 0);
        assert_eq!(resp.key, session_key(b"z/", lease));
    }

    #[test]
    fn keys_like_etcd() {
        assert_eq!(prefix(b"job"), b"job/");
        assert_eq!(session_key(b"job/", 0x694d_a216_8c7a_cc0b), b"job/694da2168c7acc0b");
        assert_eq!(session_key(b"job/", -26), b"job/-1a");
        assert_eq!(session_key(b"job/", i64::MIN), b"job/-8000000000000000");
        assert_eq!(prefix_end(b"job/"), b"job0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
