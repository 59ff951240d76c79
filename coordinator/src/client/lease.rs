//! Lease calls and the [`LeaseKeeper`], which keeps a lease alive from a background task.
//!
//! A keeper renews on one `LeaseKeepAlive` stream, one request at a time, every TTL /
//! [`limits::CLIENT_LEASE_RENEWALS_PER_TTL`]. A renewal sent at time `t` and answered with TTL
//! `ttl` guarantees the lease until `t + ttl`: the server restarts the countdown when it
//! receives the request, which is after `t`. When a renewal fails, the keeper moves to the next
//! endpoint and tries again (renewals are idempotent), until that guarantee runs out; then the
//! lease counts as lost, even though the server may still keep it a little longer.

use std::time::Duration;

use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseTimeToLiveRequest,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::error::ClientError;
use super::kv::lease_error;
use super::retry::{classify, Fate, Op};
use super::types::LeaseId;
use super::{describe, lease_client, CoordinatorClient};
use crate::limits;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    /// The TTL the server granted (it may differ from the one asked for).
    pub ttl_secs: i64,
}

/// A lease's remaining time, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTtl {
    pub id: LeaseId,
    /// Seconds left before the lease expires.
    pub remaining_secs: i64,
    /// The TTL it was granted with.
    pub granted_ttl_secs: i64,
    /// The keys attached to it (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// Whether a kept lease is alive, as far as its keeper knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Renewed. The server keeps the lease at least until `until` (on this process's clock);
    /// a holder of something the lease protects should stop acting on it by then unless the
    /// state has moved on.
    Alive { ttl: Duration, until: Instant },
    /// The lease is gone, or can no longer be assumed to exist. Final.
    Lost(LeaseLoss),
}

/// Why a kept lease was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLoss {
    /// The server answered that the lease does not exist (a keep-alive answered TTL 0): it
    /// expired or was revoked.
    Expired,
    /// No renewal succeeded before the last one's guarantee ran out.
    NotRenewed,
}

/// How a [`LeaseKeeper`] ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeeperOptions {
    /// Revoke the lease when the keeper is stopped or dropped, so attached keys vanish at once
    /// instead of when the TTL runs out. (After a drop the revoke runs in the background, bounded
    /// by the client's attempts; [`LeaseKeeper::stop`] waits for it.)
    pub revoke_on_drop: bool,
}

/// Keeps a lease alive until dropped. See the module documentation.
#[derive(Debug)]
pub struct LeaseKeeper {
    id: LeaseId,
    state: watch::Receiver<LeaseState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The lease's state now.
    pub fn state(&self) -> LeaseState {
        *self.state.borrow()
    }

    /// A receiver of every change of state (each renewal, and the loss). Once the keeper has
    /// stopped, `changed()` fails and the last state stays readable.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Waits until the lease is lost; returns at once if it already is. Never returns if the
    /// keeper is stopped first (use it in a `select!` with whatever ends the work).
    pub async fn lost(&self) -> LeaseLoss {
        let mut state = self.state.clone();
        // An error means the task ended; its last word stands either way.
        let _ = state.wait_for(|s| matches!(s, LeaseState::Lost(_))).await;
        let last = *state.borrow();
        match last {
            LeaseState::Lost(loss) => loss,
            LeaseState::Alive { .. } => std::future::pending().await,
        }
    }

    /// Stops renewing, revokes the lease if [`KeeperOptions::revoke_on_drop`] is set, and waits
    /// for both to finish.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(lease = %self.id, error = %e, "lease keeper task failed");
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        // The task notices, revokes if asked to, and ends.
        self.stop.cancel();
    }
}

impl CoordinatorClient {
    /// Grants a lease of `ttl_secs` seconds.
    pub async fn grant(&self, ttl_secs: i64) -> Result<LeaseGrant, ClientError> {
        if ttl_secs <= 0 || ttl_secs > limits::LEASE_TTL_SECS_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "lease TTL {ttl_secs} s is outside 1..={}",
                limits::LEASE_TTL_SECS_MAX
            )));
        }
        let request = LeaseGrantRequest { ttl: ttl_secs, id: 0 };
        let (response, endpoint) = self
            .call("grant", Op::Write, |channel| {
                let request = self.request(request);
                async move { lease_client(channel).lease_grant(request).await }
            })
            .await?;
        if !response.error.is_empty() || response.id == 0 {
            return Err(ClientError::Malformed {
                operation: "grant",
                endpoint: self.addr(endpoint).to_owned(),
                what: "grant answered without a lease id",
            });
        }
        Ok(LeaseGrant { id: LeaseId(response.id), ttl_secs: response.ttl })
    }

    /// Revokes the lease, deleting every key attached to it.
    pub async fn revoke(&self, id: LeaseId) -> Result<(), ClientError> {
        let request = LeaseRevokeRequest { id: id.0 };
        self.call("revoke", Op::Write, |channel| {
            let request = self.request(request);
            async move { lease_client(channel).lease_revoke(request).await }
        })
        .await
        .map_err(|e| lease_error(e, Some(id)))?;
        Ok(())
    }

    /// The lease's remaining time, and with `keys` its attached keys; `None` if it does not
    /// exist.
    pub async fn time_to_live(&self, id: LeaseId, keys: bool) -> Result<Option<LeaseTtl>, ClientError> {
        let request = LeaseTimeToLiveRequest { id: id.0, keys };
        let (response, _) = self
            .call("time_to_live", Op::Read, |channel| {
                let request = self.request(request);
                async move { lease_client(channel).lease_time_to_live(request).await }
            })
            .await
            .map_err(|e| lease_error(e, Some(id)))?;
        // etcd answers TTL -1 for a lease it does not know.
        if response.ttl < 0 {
            return Ok(None);
        }
        Ok(Some(LeaseTtl {
            id,
            remaining_secs: response.ttl,
            granted_ttl_secs: response.granted_ttl,
            keys: response.keys,
        }))
    }

    /// Keeps the lease alive until the returned keeper is dropped. Returns once a first renewal
    /// succeeded; fails with [`ClientError::LeaseNotFound`] if the lease does not exist.
    pub async fn keep_alive(&self, id: LeaseId) -> Result<LeaseKeeper, ClientError> {
        self.keep_alive_with(id, KeeperOptions::default()).await
    }

    pub async fn keep_alive_with(&self, id: LeaseId, options: KeeperOptions) -> Result<LeaseKeeper, ClientError> {
        let attempts = self.options().attempts;
        let mut stream = None;
        let mut backoff = self.backoff();
        let mut last = String::new();
        for n in 1..=attempts {
            let sent_at = Instant::now();
            match self.renew_once(&mut stream, id, sent_at + self.options().request_timeout).await {
                Renewal::Renewed { ttl } => {
                    let until = sent_at.checked_add(ttl).unwrap_or(sent_at + FAR_FUTURE);
                    let (state_tx, state) = watch::channel(LeaseState::Alive { ttl, until });
                    let stop = CancellationToken::new();
                    let keeper = Keeper {
                        client: self.clone(),
                        id,
                        options,
                        stream,
                        state: state_tx,
                        renewed_at: sent_at,
                        ttl,
                        until,
                    };
                    let task = tokio::spawn(keeper.run(stop.clone()));
                    return Ok(LeaseKeeper { id, state, stop, task: Some(task) });
                }
                Renewal::Gone => return Err(ClientError::LeaseNotFound { lease: id }),
                Renewal::Refused { endpoint, code, message } => {
                    return Err(ClientError::Server {
                        operation: "keep_alive",
                        endpoint: self.addr(endpoint).to_owned(),
                        code,
                        message,
                    });
                }
                Renewal::Failed { endpoint, reason } => {
                    self.fail_over(endpoint);
                    last = format!("{}: {reason}", self.addr(endpoint));
                    if n < attempts {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
        Err(ClientError::Unavailable { operation: "keep_alive", attempts, last })
    }

    /// Sends one keep-alive for `id` on `stream` (opening it on the current endpoint if there
    /// is none) and waits for the answer until `give_up_at`. A failed stream is dropped.
    async fn renew_once(&self, stream: &mut Option<KeepAliveStream>, id: LeaseId, give_up_at: Instant) -> Renewal {
        let endpoint = match stream {
            Some(s) => s.endpoint,
            None => self.current().0,
        };
        let outcome = tokio::time::timeout_at(give_up_at, self.renew_on(stream, endpoint, id)).await;
        let reason = match outcome {
            Ok(Ok(response)) if response.id != id.0 => format!("keep-alive answered for lease {:x}", response.id),
            Ok(Ok(response)) if response.ttl <= 0 => return Renewal::Gone,
            Ok(Ok(response)) => return Renewal::Renewed { ttl: Duration::from_secs(response.ttl.unsigned_abs()) },
            Ok(Err(KeepAliveFailure::Ended)) => "the keep-alive stream ended".to_owned(),
            // Cairn and etcd answer TTL 0 for an unknown lease; a NotFound status says the same.
            Ok(Err(KeepAliveFailure::Status(status))) if status.code() == tonic::Code::NotFound => {
                return Renewal::Gone;
            }
            Ok(Err(KeepAliveFailure::Status(status))) if classify(&status) == Fate::Refused => {
                *stream = None;
                return Renewal::Refused { endpoint, code: status.code(), message: status.message().to_owned() };
            }
            Ok(Err(KeepAliveFailure::Status(status))) => describe(&status),
            Err(_) => "no keep-alive answer in time".to_owned(),
        };
        *stream = None;
        Renewal::Failed { endpoint, reason }
    }

    async fn renew_on(
        &self,
        stream: &mut Option<KeepAliveStream>,
        endpoint: usize,
        id: LeaseId,
    ) -> Result<LeaseKeepAliveResponse, KeepAliveFailure> {
        let request = LeaseKeepAliveRequest { id: id.0 };
        if let Some(s) = stream {
            s.requests.send(request).await.map_err(|_| KeepAliveFailure::Ended)?;
        } else {
            // The first request is queued before the call: a server may hold back the response
            // headers until it has something to answer.
            let (requests, rx) = mpsc::channel(KEEPALIVE_REQUESTS_BUFFER);
            requests.send(request).await.map_err(|_| KeepAliveFailure::Ended)?;
            let channel = self.inner.endpoints[endpoint].channel.clone();
            let responses = lease_client(channel)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .map_err(KeepAliveFailure::Status)?
                .into_inner();
            *stream = Some(KeepAliveStream { endpoint, requests, responses });
        }
        let Some(s) = stream else { return Err(KeepAliveFailure::Ended) };
        match s.responses.message().await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(KeepAliveFailure::Ended),
            Err(status) => Err(KeepAliveFailure::Status(status)),
        }
    }
}

/// Keep-alive requests queued on one stream; the keeper has at most one in flight.
const KEEPALIVE_REQUESTS_BUFFER: usize = 1;
/// Stands in for a guarantee too long to represent as an instant.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

struct KeepAliveStream {
    endpoint: usize,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

enum KeepAliveFailure {
    Status(tonic::Status),
    Ended,
}

enum Renewal {
    Renewed {
        ttl: Duration,
    },
    /// The lease does not exist.
    Gone,
    /// The server gave a definite error other than "not found".
    Refused {
        endpoint: usize,
        code: tonic::Code,
        message: String,
    },
    /// The stream broke, or no answer came in time.
    Failed {
        endpoint: usize,
        reason: String,
    },
}

/// The keeper task's state.
struct Keeper {
    client: CoordinatorClient,
    id: LeaseId,
    options: KeeperOptions,
    stream: Option<KeepAliveStream>,
    state: watch::Sender<LeaseState>,
    /// When the last successful renewal was sent, the TTL it got, and until when it holds.
    renewed_at: Instant,
    ttl: Duration,
    until: Instant,
}

impl Keeper {
    async fn run(mut self, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            loss = self.renew_until_lost() => {
                tracing::warn!(lease = %self.id, ?loss, "lease lost");
                self.state.send_replace(LeaseState::Lost(loss));
                return;
            }
        }
        // Stopped by the owner.
        self.stream = None;
        if self.options.revoke_on_drop {
            match self.client.revoke(self.id).await {
                Ok(()) | Err(ClientError::LeaseNotFound { .. }) => {}
                Err(e) => tracing::warn!(lease = %self.id, error = %e, "revoke a dropped keeper's lease"),
            }
        }
    }

    /// Renews forever; returns only when the lease is lost.
    async fn renew_until_lost(&mut self) -> LeaseLoss {
        let mut backoff = self.client.backoff();
        loop {
            tokio::time::sleep_until(self.renewed_at + renew_interval(self.ttl)).await;
            loop {
                let now = Instant::now();
                if now >= self.until {
                    return LeaseLoss::NotRenewed;
                }
                let give_up_at = (now + self.client.options().request_timeout).min(self.until);
                match self.client.renew_once(&mut self.stream, self.id, give_up_at).await {
                    Renewal::Renewed { ttl } => {
                        self.renewed_at = now;
                        self.ttl = ttl;
                        self.until = now.checked_add(ttl).unwrap_or(now + FAR_FUTURE);
                        self.state.send_replace(LeaseState::Alive { ttl, until: self.until });
                        backoff.reset();
                        break;
                    }
                    Renewal::Gone => return LeaseLoss::Expired,
                    Renewal::Failed { endpoint, reason } | Renewal::Refused { endpoint, message: reason, .. } => {
                        let addr = self.client.addr(endpoint);
                        tracing::debug!(lease = %self.id, endpoint = addr, %reason, "lease renewal failed");
                        self.client.fail_over(endpoint);
                        // Several tries must fit in what is left of the TTL, whatever the
                        // client's backoff.
                        let pause = backoff.next_delay().min(renew_interval(self.ttl) / 2);
                        tokio::time::sleep_until((Instant::now() + pause).min(self.until)).await;
                    }
                }
            }
        }
    }
}

/// The pause between two renewals of a lease with `ttl`.
fn renew_interval(ttl: Duration) -> Duration {
    (ttl / limits::CLIENT_LEASE_RENEWALS_PER_TTL).max(limits::CLIENT_LEASE_RENEW_INTERVAL_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_well_within_the_ttl() {
        assert_eq!(renew_interval(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(renew_interval(Duration::from_secs(2)).as_millis(), 666);
        // A 0 s TTL never comes from a live lease, but it must not make the keeper spin.
        assert_eq!(renew_interval(Duration::ZERO), limits::CLIENT_LEASE_RENEW_INTERVAL_MIN);
    }
}
