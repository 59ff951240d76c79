//! etcd's `v3election` service: leader election over the same fair queue as the lock service.
//!
//! # What it promises
//!
//! - The wire behaviour of etcd v3.4's server-side election (`etcdserver/api/v3election`, which
//!   runs `clientv3/concurrency.Election` on an embedded client), with etcd's error messages:
//!   - `Campaign(name, lease, value)` queues the key `name/<lease hex>` (value `value`, attached
//!     to the lease; an existing key of the same lease is reused and its value proclaimed) and
//!     returns `LeaderKey{name, key, rev, lease}` once that key is the oldest under `name/`.
//!     `rev` is the key's create revision, a fencing token like a lock's. Lease 0 gets a
//!     server-granted 60 s lease, as in etcd.
//!   - `Proclaim(leader, value)` sets the leader key's value if the key still exists with
//!     `leader.rev` as its create revision (a txn compare), else "election: not leader".
//!   - `Resign(leader)` deletes the leader key under the same compare; a stale `LeaderKey` is
//!     not an error (etcd's behaviour).
//!   - `Leader(name)` is a linearizable read of the oldest key under `name/`, or
//!     "election: no leader".
//!   - `Observe(name)` streams the leader's key-value whenever it changes: a new leader, or the
//!     leader's proclaimed value. Responses arrive in revision order (`header.revision` never
//!     decreases) and the same key-value is never sent twice in a row; like etcd's, it does not
//!     promise every intermediate value, but always delivers the latest one.
//! - Like the lock service (and unlike etcd 3.4), `Campaign` declares a leader only after a
//!   linearizable check that the campaigner's key and lease are still alive.
//! - A campaign cancelled by the client (RPC cancelled or disconnected) deletes its key, as
//!   etcd does; a campaign that fails otherwise leaves the key queued, as etcd does, so a retry
//!   with the same lease keeps its place.
//!
//! # What it never does
//!
//! It never sees gRPC types; the adapter in `api/election.rs` maps [`ElectionError`] through
//! the table in `api/error.rs`.

use std::sync::Arc;

use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::KeyValue;
use cairn_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};

use crate::backend::Backend;
use crate::limits;
use crate::lock::{self, Abandon, LockError};
use crate::mvcc::{self, KvError};
use crate::rsm::store::{StateRead, StateStore};
use crate::rsm::RsmError;

/// Errors of the election service, with etcd v3.4's messages.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// Failures shared with the lock service: store, consensus, missing lease, overload.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The `LeaderKey` no longer names the leader (`concurrency.ErrElectionNotLeader`).
    #[error("election: not leader")]
    NotLeader,
    /// Nobody campaigns for this election (`concurrency.ErrElectionNoLeader`).
    #[error("election: no leader")]
    NoLeader,
    /// `Proclaim` or `Resign` without a `leader` (`v3election.ErrMissingLeaderKey`).
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
}

impl From<KvError> for ElectionError {
    fn from(e: KvError) -> Self {
        ElectionError::Lock(e.into())
    }
}

impl From<RsmError> for ElectionError {
    fn from(e: RsmError) -> Self {
        ElectionError::Lock(e.into())
    }
}

impl From<crate::api::error::ApiError> for ElectionError {
    fn from(e: crate::api::error::ApiError) -> Self {
        ElectionError::Lock(e.into())
    }
}

/// The election service of one coordinator node.
#[derive(Clone)]
pub struct Elections {
    backend: Arc<Backend>,
    /// Campaigns waiting and Observe streams open on this node.
    waiters: Arc<Semaphore>,
}

impl Elections {
    pub fn new(backend: Arc<Backend>) -> Self {
        Self { backend, waiters: Arc::new(Semaphore::new(limits::ELECTION_WAITERS_MAX)) }
    }

    /// `Campaign`: returns once the caller leads the election `req.name`.
    pub async fn campaign(&self, req: CampaignRequest) -> Result<CampaignResponse, ElectionError> {
        let _permit = lock::admit(&self.waiters)?;
        let lease = lock::session_lease(&self.backend, req.lease).await?;
        let ticket = lock::enqueue(&self.backend, &req.name, lease, &req.value).await?;
        // Dropped (the client went away) before it is disarmed: the key is withdrawn.
        let mut abandon = Abandon::new(&self.backend, &ticket);
        let mut header = ticket.header;
        if ticket.existing_value.as_ref().is_some_and(|v| *v != req.value) {
            // A campaign resumed with a new value proclaims it first (etcd's Campaign).
            match self.proclaim_at(&ticket.key, ticket.create_revision, lease, req.value.clone()).await {
                Ok(resp) => header = resp.header.unwrap_or(header),
                Err(e) => {
                    abandon.disarm();
                    lock::withdraw(&self.backend, &ticket.key, ticket.create_revision).await;
                    return Err(e);
                }
            }
        }
        if !ticket.first {
            if let Err(e) = lock::wait_for_turn(&self.backend, &ticket).await {
                // etcd keeps the key queued when a campaign fails other than by cancellation.
                abandon.disarm();
                return Err(e.into());
            }
        }
        abandon.disarm();
        tracing::debug!(key = %String::from_utf8_lossy(&ticket.key), rev = ticket.create_revision, "campaign won");
        let revision = header.revision;
        Ok(CampaignResponse {
            header: Some(self.backend.header(revision)),
            leader: Some(LeaderKey { name: req.name, key: ticket.key, rev: ticket.create_revision, lease }),
        })
    }

    /// Puts `value` on the leader key if it is still the incarnation created at `rev`.
    async fn proclaim_at(
        &self,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: Vec<u8>,
    ) -> Result<TxnResponse, ElectionError> {
        // etcd re-attaches the key to the LeaderKey's lease; with lease 0 (which etcd would
        // replace by a fresh session lease) Cairn keeps the key's current lease instead.
        let put = PutRequest { key: key.to_vec(), value, lease, ignore_lease: lease == 0, ..Default::default() };
        let txn = TxnRequest {
            compare: vec![lock::compare_create_revision(key, rev)],
            success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
            failure: Vec::new(),
        };
        let resp = self.backend.txn(txn).await?;
        if !resp.succeeded {
            return Err(ElectionError::NotLeader);
        }
        Ok(resp)
    }

    /// `Proclaim`: a new value from the current leader.
    pub async fn proclaim(&self, req: ProclaimRequest) -> Result<ProclaimResponse, ElectionError> {
        let leader = req.leader.ok_or(ElectionError::MissingLeaderKey)?;
        let resp = self.proclaim_at(&leader.key, leader.rev, leader.lease, req.value).await?;
        Ok(ProclaimResponse { header: resp.header })
    }

    /// `Resign`: gives up leadership (or a place in the queue) if the key still matches.
    pub async fn resign(&self, req: ResignRequest) -> Result<ResignResponse, ElectionError> {
        let leader = req.leader.ok_or(ElectionError::MissingLeaderKey)?;
        let delete = DeleteRangeRequest { key: leader.key.clone(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![lock::compare_create_revision(&leader.key, leader.rev)],
            success: vec![RequestOp { request: Some(request_op::Request::RequestDeleteRange(delete)) }],
            failure: Vec::new(),
        };
        let resp = self.backend.txn(txn).await?;
        Ok(ResignResponse { header: resp.header })
    }

    /// `Leader`: the current leader's key-value (linearizable).
    pub async fn leader(&self, req: LeaderRequest) -> Result<LeaderResponse, ElectionError> {
        let resp = self.backend.range(oldest(&lock::prefix(&req.name))).await?;
        let kv = resp.kvs.into_iter().next().ok_or(ElectionError::NoLeader)?;
        Ok(LeaderResponse { header: resp.header, kv: Some(kv) })
    }

    /// Admits an `Observe` stream of `req.name` (or refuses it when too many are open).
    pub fn observer(&self, req: LeaderRequest) -> Result<Observer, ElectionError> {
        let permit = lock::admit(&self.waiters)?;
        Ok(Observer { backend: self.backend.clone(), prefix: lock::prefix(&req.name), _permit: permit })
    }
}

/// The oldest key under `prefix` (etcd's `WithFirstCreate`): the leader.
fn oldest(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: lock::prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// Where an [`Observer`] sends leader updates; an error ends the stream.
pub type ObserveSender = mpsc::Sender<Result<LeaderResponse, ElectionError>>;

/// One `Observe` stream: follows the leader of one election until the client goes away.
pub struct Observer {
    backend: Arc<Backend>,
    prefix: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

/// What changed after the leader was read.
enum Change {
    /// Read the leader again (it was deleted, someone campaigned into an empty election, or the
    /// event stream cannot vouch that nothing was missed).
    Reread,
    /// The client went away.
    Gone,
}

impl Observer {
    /// Streams leader updates into `out` until the client drops the stream; sends an error
    /// (and stops) if the node fails or shuts down.
    pub async fn run(self, out: ObserveSender) {
        if let Err(e) = self.follow(&out).await {
            let _ = out.send(Err(e)).await;
        }
    }

    async fn follow(&self, out: &ObserveSender) -> Result<(), ElectionError> {
        // Subscribe first, so no change after the first read can be missed; then start from a
        // linearizable point.
        let mut live = self.backend.rsm().app().subscribe();
        self.backend.rsm().read_barrier().await?;
        let mut last_sent: Option<KeyValue> = None;
        loop {
            let (seen, leader) = {
                let view = self.backend.rsm().store().read_view();
                (mvcc::current_revision(&*view)?, self.leader_in(&*view)?)
            };
            if let Some(kv) = &leader {
                if last_sent.as_ref() != Some(kv) {
                    if !self.send(out, seen, kv.clone()).await {
                        return Ok(());
                    }
                    last_sent = Some(kv.clone());
                }
            }
            if let Change::Gone = self.wait_for_change(&mut live, seen, leader, &mut last_sent, out).await? {
                return Ok(());
            }
        }
    }

    fn leader_in(&self, view: &dyn StateRead) -> Result<Option<KeyValue>, ElectionError> {
        Ok(mvcc::range(view, &oldest(&self.prefix))?.kvs.into_iter().next())
    }

    async fn send(&self, out: &ObserveSender, revision: i64, kv: KeyValue) -> bool {
        let header = Some(self.backend.header(revision));
        out.send(Ok(LeaderResponse { header, kv: Some(kv) })).await.is_ok()
    }

    /// Follows events after revision `seen`: sends the leader's new values as they are put, and
    /// returns when the leader must be read again.
    async fn wait_for_change(
        &self,
        live: &mut broadcast::Receiver<Arc<mvcc::EventBatch>>,
        mut seen: i64,
        mut leader: Option<KeyValue>,
        last_sent: &mut Option<KeyValue>,
        out: &ObserveSender,
    ) -> Result<Change, ElectionError> {
        loop {
            let batch = tokio::select! {
                _ = out.closed() => return Ok(Change::Gone),
                batch = live.recv() => match batch {
                    Ok(batch) => batch,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(Change::Reread),
                    Err(broadcast::error::RecvError::Closed) => return Err(RsmError::ShuttingDown.into()),
                },
            };
            if batch.events.is_empty() || batch.revision > seen + 1 {
                return Ok(Change::Reread);
            }
            if batch.revision <= seen {
                continue;
            }
            seen = batch.revision;
            for event in &batch.events {
                let Some(kv) = &event.kv else { continue };
                if !kv.key.starts_with(&self.prefix) {
                    continue;
                }
                let is_put = event.r#type == EventType::Put as i32;
                match &leader {
                    Some(current) if current.key == kv.key => {
                        if !is_put || kv.create_revision != current.create_revision {
                            // Deleted (or deleted and re-created in one txn): find the leader anew.
                            return Ok(Change::Reread);
                        }
                        if !self.send(out, seen, kv.clone()).await {
                            return Ok(Change::Gone);
                        }
                        *last_sent = Some(kv.clone());
                        leader = Some(kv.clone());
                    }
                    // Someone queued behind the leader: nothing to report.
                    Some(_) => {}
                    None if is_put => return Ok(Change::Reread),
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::error::election_status;
    use crate::lock::testing::Node;

    const SETTLE: Duration = Duration::from_millis(300);
    const DEADLINE: Duration = Duration::from_secs(10);

    fn campaign(name: &str, lease: i64, value: &str) -> CampaignRequest {
        CampaignRequest { name: name.as_bytes().to_vec(), lease, value: value.as_bytes().to_vec() }
    }

    fn leader_req(name: &str) -> LeaderRequest {
        LeaderRequest { name: name.as_bytes().to_vec() }
    }

    async fn next(rx: &mut mpsc::Receiver<Result<LeaderResponse, ElectionError>>) -> (i64, String) {
        let item = tokio::time::timeout(DEADLINE, rx.recv()).await.expect("an update").expect("stream open");
        let resp = item.expect("no error");
        let value = String::from_utf8_lossy(&resp.kv.expect("kv").value).into_owned();
        (resp.header.expect("header").revision, value)
    }

    #[tokio::test]
    async fn errors_match_etcd() {
        let node = Node::start().await;
        let elections = Elections::new(node.backend.clone());
        let status = election_status(&elections.leader(leader_req("none")).await.expect_err("no leader"));
        assert_eq!((status.code(), status.message()), (tonic::Code::Unknown, "election: no leader"));
        let err =
            elections.proclaim(ProclaimRequest { leader: None, value: b"x".to_vec() }).await.expect_err("missing");
        assert_eq!(election_status(&err).message(), "\"leader\" field must be provided");
        let err = elections.resign(ResignRequest { leader: None }).await.expect_err("missing");
        assert_eq!(election_status(&err).message(), "\"leader\" field must be provided");
        let stale = LeaderKey { name: b"e".to_vec(), key: b"e/1".to_vec(), rev: 5, lease: 1 };
        let err = elections
            .proclaim(ProclaimRequest { leader: Some(stale.clone()), value: b"x".to_vec() })
            .await
            .expect_err("not leader");
        assert_eq!(election_status(&err).message(), "election: not leader");
        // etcd: resigning with a stale key is not an error.
        elections.resign(ResignRequest { leader: Some(stale) }).await.expect("resign");
        let err = elections.campaign(campaign("e", 0x4242, "v")).await.expect_err("no lease");
        assert_eq!(election_status(&err).message(), "etcdserver: requested lease not found");
    }

    #[tokio::test]
    async fn campaign_proclaim_resign_and_observe() {
        let node = Node::start().await;
        let elections = Elections::new(node.backend.clone());
        let observer = elections.observer(leader_req("svc")).expect("admitted");
        let (tx, mut updates) = mpsc::channel(16);
        tokio::spawn(observer.run(tx));

        let first_lease = node.lease(30).await;
        let first = elections.campaign(campaign("svc", first_lease, "a")).await.expect("campaign");
        let first_key = first.leader.expect("leader key");
        assert_eq!(first_key.rev, first.header.expect("header").revision);
        assert_eq!(first_key.lease, first_lease);
        let (rev_a, value) = next(&mut updates).await;
        assert_eq!(value, "a");

        let second_lease = node.lease(30).await;
        let second = tokio::spawn({
            let elections = elections.clone();
            async move { elections.campaign(campaign("svc", second_lease, "b")).await }
        });
        tokio::time::sleep(SETTLE).await;
        assert!(!second.is_finished(), "a standby is not leader while the leader lives");
        let leader = elections.leader(leader_req("svc")).await.expect("leader");
        assert_eq!(leader.kv.expect("kv").value, b"a");

        elections
            .proclaim(ProclaimRequest { leader: Some(first_key.clone()), value: b"a2".to_vec() })
            .await
            .expect("proclaim");
        let (rev_a2, value) = next(&mut updates).await;
        assert_eq!(value, "a2");
        assert!(rev_a2 > rev_a);

        elections.resign(ResignRequest { leader: Some(first_key.clone()) }).await.expect("resign");
        let won = tokio::time::timeout(DEADLINE, second).await.expect("elected").expect("join").expect("campaign");
        let second_key = won.leader.expect("leader key");
        assert!(second_key.rev > first_key.rev);
        let (rev_b, value) = next(&mut updates).await;
        assert_eq!(value, "b");
        assert!(rev_b > rev_a2);

        // The old leader key is stale now.
        let err = elections
            .proclaim(ProclaimRequest { leader: Some(first_key), value: b"late".to_vec() })
            .await
            .expect_err("stale");
        assert!(matches!(err, ElectionError::NotLeader));

        // The leader's lease is revoked: nobody leads, and the observer says nothing more.
        node.revoke(second_lease).await;
        let err = elections.leader(leader_req("svc")).await.expect_err("no leader");
        assert!(matches!(err, ElectionError::NoLeader));
        assert!(tokio::time::timeout(SETTLE, updates.recv()).await.is_err(), "no update without a leader");

        // A new campaign into the empty election is observed.
        let third = elections.campaign(campaign("svc", node.lease(30).await, "c")).await.expect("campaign");
        assert!(third.leader.expect("key").rev > second_key.rev);
        let (rev_c, value) = next(&mut updates).await;
        assert_eq!(value, "c");
        assert!(rev_c > rev_b);
    }

    #[tokio::test]
    async fn resuming_a_campaign_with_a_new_value_proclaims_it() {
        let node = Node::start().await;
        let elections = Elections::new(node.backend.clone());
        let lease = node.lease(30).await;
        let first = elections.campaign(campaign("r", lease, "old")).await.expect("campaign");
        let again = elections.campaign(campaign("r", lease, "new")).await.expect("campaign again");
        assert_eq!(first.leader.expect("key").rev, again.leader.expect("key").rev);
        let leader = elections.leader(leader_req("r")).await.expect("leader");
        assert_eq!(leader.kv.expect("kv").value, b"new");
    }
}
