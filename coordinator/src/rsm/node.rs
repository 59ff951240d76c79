//! The runtime's handle: starts Raft over the RocksDB stores, batches proposals, serves
//! linearizable read points, and forwards what a follower cannot do to the leader.
//!
//! Promises:
//! - [`Rsm::propose`] returns the command's result only after it is committed and applied here
//!   (on the leader) or on the leader (when forwarded). On `Timeout` the outcome is unknown, as
//!   with etcd; on `NotLeader`/`NoLeader` the command was not proposed.
//! - After [`Rsm::read_barrier`] returns, this node's state includes every write committed
//!   before the call began (read-index; followers ask the leader for the index). The leader
//!   answers from a lease when it has one (see [`ReadLease`]), else after a heartbeat round.
//! - Proposals are batched: every command waiting when a batch is cut shares one log entry,
//!   one fsync and one replication round; up to `BATCHES_IN_FLIGHT_MAX` batches are pipelined.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_proto::raft::raft_service_client::RaftServiceClient;
use cairn_proto::raft::{AppRpcRequest, ForwardRequest, ReadIndexRequest};
use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResult;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::transport::Channel;

use super::app::App;
use super::error::RsmError;
use super::log_store::{LogStore, LOG_TABLE, META_TABLE};
use super::network::{peer_client, NetworkFactory};
use super::state_machine::{StateMachine, SM_TABLE};
use super::store::RocksStore;
use super::types::{decode, encode, CommandBatch, LogId, Member, NodeId, Raft, RaftMetrics, TypeConfig, Vote};
use crate::limits;

/// Header carrying the leader's id on a "not leader" answer from a peer.
pub(crate) const LEADER_HINT_HEADER: &str = "cairn-leader";

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct RsmConfig {
    pub node_id: NodeId,
    /// Directory for the RocksDB store and snapshot files.
    pub data_dir: PathBuf,
    /// Name of the cluster, for openraft's checks.
    pub cluster_name: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and then purge the log) after this many applied entries.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, for followers that are slightly behind.
    pub logs_to_keep_after_snapshot: u64,
    /// Purge the log in steps of at least this many entries.
    pub purge_batch_size: u64,
}

impl RsmConfig {
    /// How long a leader serves read indexes after a quorum confirmed its leadership, without
    /// another heartbeat round: a quarter of the minimum election timeout (see [`ReadLease`]).
    pub fn read_lease(&self) -> Duration {
        Duration::from_millis(self.election_timeout_min_ms / 4)
    }

    /// How long a restarted member neither votes nor campaigns: it may have acknowledged a
    /// leader's lease round just before it stopped, and openraft forgets on restart when it last
    /// heard from the leader. Twice the read lease.
    pub fn restart_quiet(&self) -> Duration {
        self.read_lease() * 2
    }

    pub fn new(node_id: NodeId, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            data_dir,
            cluster_name: "cairn".into(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_logs_since_last: 10_000,
            logs_to_keep_after_snapshot: 1_000,
            purge_batch_size: 256,
        }
    }
}

/// The AppRpc method the runtime reserves for membership changes forwarded to the leader.
const RSM_MEMBERSHIP_METHOD: &str = "rsm.membership";

/// A membership change, applied on the leader through openraft's joint consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member, as a learner or (after it is added as a learner) as a voter.
    Add { id: NodeId, member: Member, as_learner: bool },
    /// Make a learner a voter.
    Promote { id: NodeId },
    /// Remove a member (a voter is removed from the voter set and the member list at once).
    Remove { id: NodeId },
    /// Change a member's recorded addresses or name.
    Update { id: NodeId, member: Member },
}

/// Leader-only application calls forwarded from followers (see `RaftService.AppRpc`).
pub trait AppRpcHandler: Send + Sync + 'static {
    fn call(&self, method: String, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RsmError>>;
}

struct Proposal {
    command: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

type CommandResult = Result<Vec<u8>, RsmError>;

/// What the batcher hands a proposer: its result, or (to the first proposer of a batch) the
/// batch in Raft to wait for itself. The first proposer waiting on openraft's answer directly
/// saves the hop through a separate waiter task on the path of every write.
enum Reply {
    Done(CommandResult),
    Lead(InRaft),
}

/// A batch proposed to Raft: openraft's answer to wait for, the other proposers' replies (in
/// batch order, after the first), and the batch's in-flight permit.
struct InRaft {
    rx: Option<oneshot::Receiver<ClientWriteResult<TypeConfig>>>,
    others: Vec<oneshot::Sender<Reply>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl InRaft {
    /// Waits for the batch and answers every proposer; returns the first proposer's result.
    async fn finish(mut self) -> CommandResult {
        let Some(rx) = self.rx.take() else { return Err(RsmError::ShuttingDown) };
        let result = batch_result(rx.await);
        self.permit = None;
        let others = std::mem::take(&mut self.others);
        match result {
            Ok(results) => {
                let mut results = results.into_iter();
                let mine = results.next().ok_or_else(|| internal("missing result in batch response"));
                for reply in others {
                    let r = results.next().ok_or_else(|| internal("missing result in batch response"));
                    let _ = reply.send(Reply::Done(r));
                }
                mine
            }
            Err(e) => {
                for reply in others {
                    let _ = reply.send(Reply::Done(Err(e.clone())));
                }
                Err(e)
            }
        }
    }
}

impl Drop for InRaft {
    /// The first proposer gave up (timeout, or its client went away) before the batch was
    /// answered: a task takes over, so the others still get their results and the in-flight
    /// permit is held until Raft is done with the batch.
    fn drop(&mut self) {
        let Some(rx) = self.rx.take() else { return };
        let rest = InRaft { rx: Some(rx), others: std::mem::take(&mut self.others), permit: self.permit.take() };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = rest.finish().await;
            });
        }
    }
}

fn batch_result(
    answer: Result<ClientWriteResult<TypeConfig>, oneshot::error::RecvError>,
) -> Result<Vec<Vec<u8>>, RsmError> {
    match answer {
        Err(_) => Err(RsmError::ShuttingDown),
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(RsmError::NotLeader { leader: f.leader_id }),
        Ok(Err(e)) => Err(internal(e)),
        Ok(Ok(resp)) => Ok(resp.data.0),
    }
}

/// A leader's read lease: a quorum of the membership logged at `membership` acknowledged this
/// node as leader under `vote` in a read-index heartbeat round that started one lease duration
/// ([`RsmConfig::read_lease`]) before `expires`. Until then the leader serves read indexes
/// without a round.
///
/// Why no other leader can commit anything meanwhile: a new leader needs votes from a majority,
/// which includes a member of that quorum. A follower that acknowledged the round refuses to vote
/// for `election_timeout_max` after it did, and does not campaign itself for longer than that
/// (openraft's leader lease on followers); a follower that restarts since refuses to vote and to
/// campaign for [`RsmConfig::restart_quiet`] (see `voting_paused`); this node itself has not
/// voted for anyone else as long as it is still leader under `vote`, which is checked inside the
/// Raft core at the instant the commit index is read. The lease is a quarter of the election
/// timeout minimum (at most a quarter of what a follower waits), so it holds as long as the
/// monotonic clocks of different nodes run at rates within 4× of each other (wall-clock jumps do
/// not matter) and no membership change happened since the round (checked too).
#[derive(Clone, Debug)]
struct ReadLease {
    vote: Vote,
    membership: Option<LogId>,
    expires: Instant,
}

type ReadWaiter = oneshot::Sender<Result<u64, RsmError>>;

struct Inner<A: App> {
    node_id: NodeId,
    raft: Raft,
    store: Arc<RocksStore>,
    app: Arc<A>,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<ReadWaiter>,
    network: NetworkFactory,
    /// One membership change at a time on this node: openraft refuses (and logs an error for)
    /// a change while another is in progress.
    membership_lock: tokio::sync::Mutex<()>,
    app_rpc: OnceLock<Arc<dyn AppRpcHandler>>,
    read_lease: Mutex<Option<ReadLease>>,
    read_lease_duration: Duration,
    /// Until then this node neither votes nor campaigns (see [`RsmConfig::restart_quiet`]).
    voting_paused_until: Instant,
}

/// A replica of a replicated state machine. Cheap to clone.
pub struct Rsm<A: App> {
    inner: Arc<Inner<A>>,
}

impl<A: App> Clone for Rsm<A> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

fn internal(e: impl std::fmt::Display) -> RsmError {
    RsmError::Internal(e.to_string())
}

impl<A: App> Rsm<A> {
    /// Opens the stores under `config.data_dir` and starts Raft. The node joins a cluster when
    /// it is bootstrapped ([`Rsm::bootstrap`]) or added by the leader.
    pub async fn open(config: RsmConfig, app: Arc<A>) -> Result<Self, RsmError> {
        std::fs::create_dir_all(&config.data_dir).map_err(internal)?;
        let mut tables: Vec<&str> = vec![LOG_TABLE, META_TABLE, SM_TABLE];
        tables.extend(app.tables().iter().copied());
        let store = Arc::new(RocksStore::open(&config.data_dir.join("db"), &tables).map_err(internal)?);
        let log_store = LogStore::new(store.db().clone());
        let state_machine = StateMachine::new(store.clone(), app.clone(), config.data_dir.clone()).map_err(internal)?;

        let raft_config = openraft::Config {
            cluster_name: config.cluster_name.clone(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: config.logs_to_keep_after_snapshot,
            snapshot_max_chunk_size: limits::SNAPSHOT_CHUNK_BYTES,
            max_payload_entries: limits::APPEND_ENTRIES_MAX,
            purge_batch_size: config.purge_batch_size.max(1),
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(internal)?);
        let network = NetworkFactory::default();
        let raft = Raft::new(config.node_id, raft_config, network.clone(), log_store, state_machine)
            .await
            .map_err(internal)?;

        // A member restarting with state may have acknowledged a leader's read-lease round before
        // it stopped; it keeps out of elections until any such lease has run out.
        let mut voting_paused_until = Instant::now();
        if raft.is_initialized().await.map_err(internal)? {
            let quiet = config.restart_quiet();
            voting_paused_until += quiet;
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(quiet).await;
                raft.runtime_config().elect(true);
            });
        }

        let (proposals, proposal_rx) = mpsc::channel(limits::PROPOSAL_QUEUE_MAX);
        let (reads, read_rx) = mpsc::channel(limits::READ_INDEX_QUEUE_MAX);
        let inner = Arc::new(Inner {
            node_id: config.node_id,
            raft,
            store,
            app,
            proposals,
            reads,
            network,
            membership_lock: tokio::sync::Mutex::new(()),
            app_rpc: OnceLock::new(),
            read_lease: Mutex::new(None),
            read_lease_duration: config.read_lease(),
            voting_paused_until,
        });
        tokio::spawn(batch_proposals(inner.raft.clone(), proposal_rx));
        tokio::spawn(coalesce_read_index(Arc::downgrade(&inner), read_rx));
        Ok(Self { inner })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn app(&self) -> &Arc<A> {
        &self.inner.app
    }

    pub fn store(&self) -> &Arc<RocksStore> {
        &self.inner.store
    }

    pub fn metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics> {
        self.inner.raft.metrics()
    }

    /// Installs the handler for leader-only application calls forwarded by followers.
    pub fn set_app_rpc_handler(&self, handler: Arc<dyn AppRpcHandler>) {
        let _ = self.inner.app_rpc.set(handler);
    }

    /// The leader as this node currently knows it, with its peer address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        // Borrowed, not cloned: this runs for every proposal and read round.
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.peer_addr.clone())?;
        Some((id, addr))
    }

    /// The client address the leader published, when this node knows a leader that is not
    /// itself: what a follower tells clients so that they can call the leader directly.
    pub fn leader_client_addr(&self) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader.filter(|id| *id != self.inner.node_id)?;
        let addr = &m.membership_config.membership().get_node(&id)?.client_addr;
        (!addr.is_empty()).then(|| addr.clone())
    }

    /// Whether this member still keeps out of elections after a restart (its peer service then
    /// refuses vote requests).
    pub fn voting_paused(&self) -> bool {
        Instant::now() < self.inner.voting_paused_until
    }

    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.node_id)
    }

    /// Bootstraps a new cluster with `members` unless this node already holds state. Safe to
    /// call on every restart.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, Member>) -> Result<(), RsmError> {
        if self.inner.raft.is_initialized().await.map_err(internal)? {
            return Ok(());
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }

    /// The current membership as this node knows it: every member, and which are voters.
    pub fn members(&self) -> (BTreeMap<NodeId, Member>, BTreeSet<NodeId>) {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let nodes = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters = membership.voter_ids().collect();
        (nodes, voters)
    }

    /// Proposes `command`, here if leader or forwarded to the leader, and returns its result.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, RsmError> {
        self.propose_within(command, limits::PROPOSE_TIMEOUT).await
    }

    /// [`Rsm::propose`] with a deadline of its own, for commands that may take long to apply
    /// (a delete of a whole key range).
    pub async fn propose_within(&self, command: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RsmError> {
        let timeout = timeout.min(limits::PROPOSE_TIMEOUT_MAX);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut attempt = 0u32;
        loop {
            let outcome = match self.leader() {
                Some((id, _)) if id == self.inner.node_id => self.propose_local_within(command.clone(), timeout).await,
                Some((_, addr)) => self.forward(&addr, command.clone(), timeout).await,
                None => Err(RsmError::NoLeader),
            };
            match outcome {
                // Safe to retry: the command was not proposed anywhere.
                Err(RsmError::NotLeader { .. }) | Err(RsmError::NoLeader) if tokio::time::Instant::now() < deadline => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis((20 * u64::from(attempt)).min(200))).await;
                }
                other => return other,
            }
        }
    }

    /// Queues `command` for the next batch on this node, which must be the leader.
    pub async fn propose_local(&self, command: Vec<u8>) -> Result<Vec<u8>, RsmError> {
        self.propose_local_within(command, limits::PROPOSE_TIMEOUT).await
    }

    pub(crate) async fn propose_local_within(&self, command: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RsmError> {
        let (reply, rx) = oneshot::channel();
        self.inner.proposals.send(Proposal { command, reply }).await.map_err(|_| RsmError::ShuttingDown)?;
        let outcome = async {
            match rx.await {
                Err(_) => Err(RsmError::ShuttingDown),
                Ok(Reply::Done(result)) => result,
                Ok(Reply::Lead(batch)) => batch.finish().await,
            }
        };
        match tokio::time::timeout(timeout.min(limits::PROPOSE_TIMEOUT_MAX), outcome).await {
            Err(_) => Err(RsmError::Timeout),
            Ok(result) => result,
        }
    }

    fn peer(&self, addr: &str) -> Result<RaftServiceClient<Channel>, RsmError> {
        let channel =
            self.inner.network.channel(addr).map_err(|message| RsmError::Peer { peer: addr.into(), message })?;
        Ok(peer_client(channel))
    }

    async fn forward(&self, addr: &str, command: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RsmError> {
        let mut client = self.peer(addr)?;
        let call = client.forward(ForwardRequest { command, timeout_ms: timeout.as_millis() as u64 });
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(RsmError::Timeout),
            Ok(Ok(resp)) => Ok(resp.into_inner().response),
            Ok(Err(status)) => Err(status_to_error(addr, &status)),
        }
    }

    /// Calls a leader-only application method: locally when leader, else on the leader.
    pub async fn call_leader(&self, method: &str, body: Vec<u8>) -> Result<Vec<u8>, RsmError> {
        match self.leader() {
            Some((id, _)) if id == self.inner.node_id => {
                if method == RSM_MEMBERSHIP_METHOD {
                    let change: MembershipChange = decode(&body).map_err(internal)?;
                    return self.change_membership_here(change).await.map(|_| Vec::new());
                }
                let handler = self.inner.app_rpc.get().ok_or_else(|| internal("no application RPC handler"))?;
                handler.call(method.to_string(), body).await
            }
            Some((_, addr)) => {
                let mut client = self.peer(&addr)?;
                let call = client.app_rpc(AppRpcRequest { method: method.to_string(), body });
                match tokio::time::timeout(limits::PROPOSE_TIMEOUT, call).await {
                    Err(_) => Err(RsmError::Timeout),
                    Ok(Ok(resp)) => Ok(resp.into_inner().body),
                    Ok(Err(status)) => Err(status_to_error(&addr, &status)),
                }
            }
            None => Err(RsmError::NoLeader),
        }
    }

    /// Waits until this node's state includes every write committed before the call (a
    /// linearizable read point).
    pub async fn read_barrier(&self) -> Result<(), RsmError> {
        let deadline = tokio::time::Instant::now() + limits::READ_INDEX_TIMEOUT;
        let mut attempt = 0u32;
        let index = loop {
            let (tx, rx) = oneshot::channel();
            self.inner.reads.send(tx).await.map_err(|_| RsmError::ShuttingDown)?;
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(RsmError::Timeout),
                Ok(Err(_)) => return Err(RsmError::ShuttingDown),
                Ok(Ok(r)) => r,
            };
            match outcome {
                // During an election nobody can answer yet; wait for one within the deadline.
                Err(RsmError::NotLeader { .. }) | Err(RsmError::NoLeader) if tokio::time::Instant::now() < deadline => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis((20 * u64::from(attempt)).min(200))).await;
                }
                other => break other?,
            }
        };
        self.wait_applied(index).await
    }

    /// Waits until the entry at `index` is applied here. Usually it already is: that is checked
    /// on the borrowed metrics first (openraft's `Wait` clones the metrics on every look and arms
    /// a timer even when there is nothing to wait for, on every linearizable read).
    async fn wait_applied(&self, index: u64) -> Result<(), RsmError> {
        let mut metrics = self.inner.raft.metrics();
        let applied = |m: &RaftMetrics| m.last_applied.map(|l| l.index) >= Some(index);
        if applied(&metrics.borrow_and_update()) {
            return Ok(());
        }
        let wait = async {
            loop {
                metrics.changed().await.map_err(|_| RsmError::ShuttingDown)?;
                if applied(&metrics.borrow_and_update()) {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(limits::READ_INDEX_TIMEOUT, wait).await.map_err(|_| RsmError::Timeout)?
    }

    /// On the leader: the index a linearizable read must wait for (leadership confirmed by a
    /// quorum). Followers call this through `RaftService.ReadIndex`.
    pub async fn leader_read_index(&self) -> Result<u64, RsmError> {
        if let Some(index) = self.read_index_under_lease().await? {
            return Ok(index);
        }
        let started = Instant::now();
        let (vote, membership) = self
            .inner
            .raft
            .with_raft_state(|st| (*st.vote_ref(), *st.membership_state.effective().log_id()))
            .await
            .map_err(internal)?;
        match self.inner.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => {
                // The round confirmed the leadership under the vote of that moment; a lease
                // recorded under an older vote never matches the current one and goes unused.
                if vote.is_committed() && vote.leader_id().voted_for() == Some(self.inner.node_id) {
                    let expires = started + self.inner.read_lease_duration;
                    let lease = ReadLease { vote, membership, expires };
                    if let Ok(mut slot) = self.inner.read_lease.lock() {
                        *slot = Some(lease);
                    }
                }
                Ok(read_log_id.map(|l| l.index).unwrap_or(0))
            }
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(RsmError::NotLeader { leader: f.leader_id })
            }
            // A quorum did not confirm the leadership in time (followers starved or cut off):
            // as good as no leader, and worth retrying, unlike an internal failure.
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(RsmError::NoLeader)
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// The read index from the lease (see [`ReadLease`]), or `None` when there is no valid lease.
    async fn read_index_under_lease(&self) -> Result<Option<u64>, RsmError> {
        let lease = match self.inner.read_lease.lock() {
            Ok(slot) => slot.clone(),
            Err(_) => None,
        };
        let Some(lease) = lease.filter(|l| Instant::now() < l.expires) else { return Ok(None) };
        self.inner
            .raft
            .with_raft_state(move |st| {
                // Everything is checked here, inside the Raft core, so that the leadership and
                // the commit index are read at one instant, and that instant is in the lease.
                if Instant::now() >= lease.expires
                    || st.server_state != ServerState::Leader
                    || *st.vote_ref() != lease.vote
                    || *st.membership_state.effective().log_id() != lease.membership
                {
                    return None;
                }
                // Until an entry of this term is committed (the leader's first, blank entry),
                // the commit index may lag writes the previous leader committed.
                let committed = st.committed?;
                (committed.leader_id == *lease.vote.leader_id()).then_some(committed.index)
            })
            .await
            .map_err(internal)
    }

    /// Adds `id` as a learner (it starts receiving the log) and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), RsmError> {
        self.inner.raft.add_learner(id, Member::new(addr), true).await.map(|_| ()).map_err(write_error)
    }

    /// Replaces the voter set (joint consensus underneath). Voters removed stay learners if
    /// `keep_as_learners`.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>, keep_as_learners: bool) -> Result<(), RsmError> {
        self.inner.raft.change_membership(voters, keep_as_learners).await.map(|_| ()).map_err(write_error)
    }

    /// Removes nodes entirely (voters must have been demoted first).
    pub async fn remove_nodes(&self, ids: BTreeSet<NodeId>) -> Result<(), RsmError> {
        self.inner.raft.change_membership(ChangeMembers::RemoveNodes(ids), false).await.map(|_| ()).map_err(write_error)
    }

    /// Changes the membership, on the leader (forwarded there from a follower). Returns once
    /// the change is committed.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), RsmError> {
        match self.leader() {
            Some((id, _)) if id == self.inner.node_id => self.change_membership_here(change).await,
            Some(_) => {
                let body = encode(&change).map_err(internal)?;
                self.call_leader(RSM_MEMBERSHIP_METHOD, body).await.map(|_| ())
            }
            None => Err(RsmError::NoLeader),
        }
    }

    async fn change_membership_here(&self, change: MembershipChange) -> Result<(), RsmError> {
        let _one_at_a_time = self.inner.membership_lock.lock().await;
        let raft = &self.inner.raft;
        let (nodes, voters) = self.members();
        match change {
            MembershipChange::Add { id, member, as_learner } => {
                if nodes.contains_key(&id) {
                    return Err(RsmError::Membership(format!("member {id} already exists")));
                }
                // Not blocking: the new member may not be running yet (it is started after
                // being added, from an empty data dir, as with etcd's member add).
                raft.add_learner(id, member, false).await.map_err(write_error)?;
                if !as_learner {
                    let ids = BTreeSet::from([id]);
                    raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await.map_err(write_error)?;
                }
            }
            MembershipChange::Promote { id } => {
                if !nodes.contains_key(&id) {
                    return Err(RsmError::Membership(format!("member {id} not found")));
                }
                if voters.contains(&id) {
                    return Err(RsmError::Membership(format!("member {id} is not a learner")));
                }
                let ids = BTreeSet::from([id]);
                raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await.map_err(write_error)?;
            }
            MembershipChange::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(RsmError::Membership(format!("member {id} not found")));
                }
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(RsmError::Membership("cannot remove the last voter".into()));
                    }
                    let ids = BTreeSet::from([id]);
                    raft.change_membership(ChangeMembers::RemoveVoters(ids), false).await.map_err(write_error)?;
                } else {
                    let ids = BTreeSet::from([id]);
                    raft.change_membership(ChangeMembers::RemoveNodes(ids), false).await.map_err(write_error)?;
                }
            }
            MembershipChange::Update { id, member } => {
                if !nodes.contains_key(&id) {
                    return Err(RsmError::Membership(format!("member {id} not found")));
                }
                let update = BTreeMap::from([(id, member)]);
                raft.change_membership(ChangeMembers::SetNodes(update), false).await.map_err(write_error)?;
            }
        }
        Ok(())
    }

    /// Records this node's own addresses and name in the membership if they differ (a member
    /// publishes its client address itself, as etcd members publish their attributes).
    pub async fn publish_self(&self, member: Member) -> Result<(), RsmError> {
        let (nodes, _) = self.members();
        match nodes.get(&self.inner.node_id) {
            None => Err(RsmError::Membership("this node is not a member yet".into())),
            Some(current) if *current == member => Ok(()),
            Some(_) => self.change_membership(MembershipChange::Update { id: self.inner.node_id, member }).await,
        }
    }

    /// A consistent, self-contained copy of the replicated state (the snapshot file format:
    /// bincode of the snapshot metadata and every app table), for backups.
    pub async fn export_state(&self) -> Result<Vec<u8>, RsmError> {
        let store = self.inner.store.clone();
        let tables = self.inner.app.tables();
        tokio::task::spawn_blocking(move || super::state_machine::export(&store, tables))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.inner.store.db().flush_wal(true) {
            tracing::warn!(error = %e, "final WAL sync");
        }
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> RsmError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RsmError::NotLeader { leader: f.leader_id },
        other => internal(other),
    }
}

/// Maps a peer's gRPC answer back to the runtime's error (see `service::error_to_status`).
fn status_to_error(addr: &str, status: &tonic::Status) -> RsmError {
    match status.code() {
        tonic::Code::FailedPrecondition if status.message().starts_with("membership: ") => {
            RsmError::Membership(status.message().trim_start_matches("membership: ").to_string())
        }
        tonic::Code::FailedPrecondition => {
            let leader =
                status.metadata().get(LEADER_HINT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            RsmError::NotLeader { leader }
        }
        tonic::Code::Unavailable if status.message() == "no leader" => RsmError::NoLeader,
        // The leader could not be reached at all: nothing was proposed.
        tonic::Code::Unavailable => RsmError::NoLeader,
        tonic::Code::DeadlineExceeded => RsmError::Timeout,
        _ => RsmError::Peer { peer: addr.to_string(), message: status.message().to_string() },
    }
}

/// Cuts batches from the proposal queue and pipelines them into Raft in arrival order.
async fn batch_proposals(raft: Raft, mut rx: mpsc::Receiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(limits::BATCHES_IN_FLIGHT_MAX));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        // Everything queued while we waited for a permit joins this batch: group commit.
        let mut bytes = first.command.len();
        let mut commands = vec![first.command];
        let mut replies = vec![first.reply];
        while commands.len() < limits::BATCH_COMMANDS_MAX && bytes < limits::BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.command.len();
                    commands.push(p.command);
                    replies.push(p.reply);
                }
                Err(_) => break,
            }
        }
        let mut replies = replies.into_iter();
        let Some(lead) = replies.next() else { continue };
        let others: Vec<_> = replies.collect();
        match raft.client_write_ff(CommandBatch(commands)).await {
            Err(e) => {
                let e = internal(e);
                for reply in std::iter::once(lead).chain(others) {
                    let _ = reply.send(Reply::Done(Err(e.clone())));
                }
            }
            Ok(answer) => {
                let batch = InRaft { rx: Some(answer), others, permit: Some(permit) };
                // A first proposer already gone hands the batch back; dropping it starts the
                // task that answers the others.
                let _ = lead.send(Reply::Lead(batch));
            }
        }
    }
}

/// Serves read-index requests in rounds: every request waiting when a round starts shares that
/// round's single leadership check. A request that arrives mid-round waits for the next one,
/// so its index is always obtained after it arrived.
async fn coalesce_read_index<A: App>(inner: std::sync::Weak<Inner<A>>, mut rx: mpsc::Receiver<ReadWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(inner) = inner.upgrade() else { return };
        let rsm = Rsm { inner };
        let result = match rsm.leader() {
            Some((id, _)) if id == rsm.node_id() => rsm.leader_read_index().await,
            Some((_, addr)) => match rsm.peer(&addr) {
                Err(e) => Err(e),
                Ok(mut client) => {
                    match tokio::time::timeout(limits::READ_INDEX_TIMEOUT, client.read_index(ReadIndexRequest {})).await
                    {
                        Err(_) => Err(RsmError::Timeout),
                        Ok(Ok(resp)) => Ok(resp.into_inner().index),
                        Ok(Err(status)) => Err(status_to_error(&addr, &status)),
                    }
                }
            },
            None => Err(RsmError::NoLeader),
        };
        drop(rsm);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
