//! The namespace as the API sees it on one node: changes are proposed through Raft (forwarded
//! to the leader by the runtime), reads wait for a read-index barrier and then read the local
//! replica. Both are linearizable.
//!
//! Times: a change carries the client's timestamp when it sent one, else this node's clock,
//! fixed here before proposing — `apply` never reads a clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_coordinator::rsm::store::{StateRead, StateStore};
use cairn_coordinator::rsm::{Rsm, RsmError};

use tokio::sync::broadcast::error::RecvError;

use crate::limits::{LOCK_WAIT_MAX, REQUEST_TIMEOUT};
use crate::metrics::Metrics;
use crate::namespace::command::{decode_outcome, encode_command};
use crate::namespace::{read, Caller, Command, Errno, Fail, LockEvent, Namespace, Op, Outcome, SessionId, Timespec};
use crate::sessions::{Countdowns, RPC_SESSION_HEARTBEAT};

/// One node's access to the replicated namespace. Cheap to clone.
#[derive(Clone)]
pub struct NamespaceNode {
    rsm: Rsm<Namespace>,
    metrics: Arc<Metrics>,
    countdowns: Arc<Countdowns>,
}

/// A digest of this node's namespace tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDigest {
    pub digest: [u8; 32],
    pub rows: u64,
    pub applied_index: u64,
}

fn outcome_label<T>(result: &Result<Result<T, Errno>, RsmError>) -> &'static str {
    match result {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => e.name(),
        Err(RsmError::Timeout) => "timeout",
        Err(RsmError::NotLeader { .. } | RsmError::NoLeader) => "no_leader",
        Err(_) => "error",
    }
}

impl NamespaceNode {
    pub fn new(rsm: Rsm<Namespace>, metrics: Arc<Metrics>) -> Self {
        NamespaceNode { rsm, metrics, countdowns: Arc::new(Countdowns::new()) }
    }

    /// The session countdowns this node keeps while it leads.
    pub fn countdowns(&self) -> &Arc<Countdowns> {
        &self.countdowns
    }

    /// Renews a session's lease on the leader: its granted TTL, or `None` when the session is
    /// not open (closed or expired).
    pub async fn heartbeat(&self, session: SessionId) -> Result<Option<Duration>, RsmError> {
        let started = Instant::now();
        let call = self.rsm.call_leader(RPC_SESSION_HEARTBEAT, session.0.to_be_bytes().to_vec());
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Err(RsmError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(body)) => match <[u8; 8]>::try_from(body.as_slice()) {
                Ok(bytes) => {
                    let ms = u64::from_be_bytes(bytes);
                    Ok((ms > 0).then(|| Duration::from_millis(ms)))
                }
                Err(_) => Err(RsmError::Internal("malformed heartbeat answer".into())),
            },
        };
        let label = match &result {
            Ok(Some(_)) => "ok",
            Ok(None) => Errno::BadF.name(),
            Err(_) => "error",
        };
        self.metrics.observe("heartbeat", label, started.elapsed());
        result
    }

    /// Proposes a lock request (`SetLock` or `Flock`). With `wait`, a conflict (EAGAIN) is not
    /// answered: the request waits until this replica applies a change of the inode's locks,
    /// then proposes again — no polling, nothing queued in the replicated state. Dropping the
    /// returned future (the client cancelled the RPC) stops the wait; after `LOCK_WAIT_MAX` it
    /// answers EINTR. The subscription is taken before each proposal, so a release applied after
    /// the refused attempt is never missed.
    pub async fn lock(&self, caller: Caller, time: Option<Timespec>, op: Op, wait: bool) -> Result<Outcome, RsmError> {
        let ino = match &op {
            Op::SetLock { ino, .. } | Op::Flock { ino, .. } => *ino,
            other => return Err(RsmError::Internal(format!("{} is not a lock request", other.name()))),
        };
        if !wait {
            return self.change(caller, time, op).await;
        }
        let deadline = tokio::time::Instant::now() + LOCK_WAIT_MAX;
        loop {
            let mut events = self.rsm.app().lock_events();
            let outcome = self.change(caller.clone(), time, op.clone()).await?;
            if outcome != Err(Errno::Again) {
                return Ok(outcome);
            }
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => return Ok(Err(Errno::Intr)),
                    Ok(Ok(LockEvent::Inode(changed))) if changed != ino => continue,
                    Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => break,
                    Ok(Err(RecvError::Closed)) => return Err(RsmError::ShuttingDown),
                }
            }
        }
    }

    pub fn rsm(&self) -> &Rsm<Namespace> {
        &self.rsm
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Proposes a change and returns its outcome. `time` is the client's timestamp, if any.
    pub async fn change(&self, caller: Caller, time: Option<Timespec>, op: Op) -> Result<Outcome, RsmError> {
        let name = op.name();
        let started = Instant::now();
        let command = Command { caller, now: time.unwrap_or_else(Timespec::now), op };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, self.rsm.propose(encode_command(&command))).await {
            Err(_) => Err(RsmError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(bytes)) => {
                decode_outcome(&bytes).map_err(|e| RsmError::Internal(format!("undecodable outcome: {e}")))
            }
        };
        self.metrics.observe(name, outcome_label(&result), started.elapsed());
        result
    }

    /// Calls a leader-only method (locally when leading, else on the leader) with a deadline.
    pub async fn leader_call(
        &self,
        name: &'static str,
        method: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RsmError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.rsm.call_leader(method, body)).await {
            Err(_) => Err(RsmError::Timeout),
            Ok(r) => r,
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(RsmError::Timeout) => "timeout",
            Err(RsmError::NotLeader { .. } | RsmError::NoLeader) => "no_leader",
            Err(_) => "error",
        };
        self.metrics.observe(name, label, started.elapsed());
        result
    }

    /// Proposes a change on this node, which must lead (leader-only work: a deposed leader
    /// cannot commit it).
    pub async fn change_local(&self, caller: Caller, op: Op) -> Result<Outcome, RsmError> {
        let name = op.name();
        let started = Instant::now();
        let command = Command { caller, now: Timespec::now(), op };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, self.rsm.propose_local(encode_command(&command))).await
        {
            Err(_) => Err(RsmError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(bytes)) => {
                decode_outcome(&bytes).map_err(|e| RsmError::Internal(format!("undecodable outcome: {e}")))
            }
        };
        self.metrics.observe(name, outcome_label(&result), started.elapsed());
        result
    }

    /// Runs a read on the local replica after a read barrier.
    pub async fn read<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&dyn StateRead) -> Result<T, Fail>,
    ) -> Result<Result<T, Errno>, RsmError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, self.rsm.read_barrier()).await {
            Err(_) => Err(RsmError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                let view = self.rsm.store().read_view();
                match f(&*view) {
                    Ok(v) => Ok(Ok(v)),
                    Err(Fail::Errno(e)) => Ok(Err(e)),
                    Err(Fail::Store(e)) => Err(RsmError::Internal(format!("read namespace: {e}"))),
                }
            }
        };
        self.metrics.observe(name, outcome_label(&result), started.elapsed());
        result
    }

    /// The filesystem parameters as this replica knows them (no barrier: once formatted they
    /// never change).
    pub fn fs_params_local(&self) -> Option<crate::namespace::FsParams> {
        let view = self.rsm.store().read_view();
        read::fs_params(&*view).ok().flatten()
    }

    /// Whether this replica has applied a format (no barrier).
    pub fn formatted_locally(&self) -> bool {
        let view = self.rsm.store().read_view();
        matches!(read::fs_params(&*view), Ok(Some(_)))
    }

    /// The digest of this replica's tables as applied so far (no barrier).
    pub fn local_digest(&self) -> Result<LocalDigest, RsmError> {
        let view = self.rsm.store().read_view();
        let applied_index = self.rsm.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        let (digest, rows) = read::digest(&*view).map_err(|e| RsmError::Internal(format!("digest: {e}")))?;
        Ok(LocalDigest { digest, rows, applied_index })
    }
}
