//! Registration in the coordinator (etcd v3 API): this chunkserver's entry under
//! `/cairn/chunkservers/<id>`, a JSON [`RegistryEntry`] attached to a lease that is kept alive
//! while the process runs.
//!
//! # What it promises
//! * The entry exists while this process is alive and can reach a coordinator quorum; it
//!   disappears within one lease TTL after the process dies (or at once on a clean shutdown,
//!   which revokes the lease).
//! * After any failure (coordinator unreachable, keep-alive stream broken) it tries the next
//!   coordinator endpoint, with capped exponential backoff, and first tries to keep the same
//!   lease alive there; only a lost lease (expired or revoked) leads to a new lease and a new
//!   put. So a coordinator failover does not churn the registry.
//! * The entry is rewritten only when its space figures moved by a sixteenth of the capacity
//!   (1 MiB to 1 GiB; checked every `REGISTRY_REFRESH_INTERVAL`): an idle cluster's revision
//!   stays put, and a filling server still shows it to placement and `cairn fsck`.
//! * Coordinator trouble is logged at WARN: the data path keeps working without the registry.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::ids::NodeId;
use crate::limits::{
    CONNECT_TIMEOUT, COORDINATOR_RPC_TIMEOUT, REGISTER_BACKOFF_MAX, REGISTER_BACKOFF_MIN, REGISTRY_REFRESH_INTERVAL,
    REGISTRY_SPACE_DELTA_FRACTION, REGISTRY_SPACE_DELTA_MAX_BYTES, REGISTRY_SPACE_DELTA_MIN_BYTES,
};
use crate::metrics::Metrics;
use crate::space::Space;

/// Prefix of every chunkserver's registry key.
pub const REGISTRY_PREFIX: &str = "/cairn/chunkservers/";

/// The registry key of chunkserver `id`.
pub fn registry_key(id: NodeId) -> String {
    format!("{REGISTRY_PREFIX}{id}")
}

/// The value stored under the registry key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub id: u64,
    /// host:port of the chunk gRPC service.
    pub addr: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub rack: String,
    pub zone: String,
}

/// What the registration loop needs to know.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    pub id: NodeId,
    pub advertise_addr: String,
    pub coordinator_endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub rack: String,
    pub zone: String,
}

/// The registration's current state, for `/health`, `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct RegistrationState {
    registered: AtomicBool,
    /// Registered at least once since start, or registration is disabled (no endpoints).
    ready: AtomicBool,
    lease_id: AtomicI64,
}

impl RegistrationState {
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }
    /// Whether the server has been registered at least once (readiness for `/health`).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    pub fn lease_id(&self) -> i64 {
        self.lease_id.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{what} at {endpoint}: {message}")]
    Rpc { what: &'static str, endpoint: String, message: String },
    #[error("lease {lease} expired or was revoked")]
    LeaseLost { lease: i64 },
}

pub struct Registration {
    config: RegistrationConfig,
    space: Arc<Space>,
    metrics: Arc<Metrics>,
    state: Arc<RegistrationState>,
}

impl Registration {
    pub fn new(config: RegistrationConfig, space: Arc<Space>, metrics: Arc<Metrics>) -> Registration {
        Registration { config, space, metrics, state: Arc::new(RegistrationState::default()) }
    }

    pub fn state(&self) -> Arc<RegistrationState> {
        self.state.clone()
    }

    fn entry(&self) -> RegistryEntry {
        RegistryEntry {
            id: self.config.id.0,
            addr: self.config.advertise_addr.clone(),
            capacity_bytes: self.space.capacity_bytes(),
            free_bytes: self.space.free_bytes(),
            rack: self.config.rack.clone(),
            zone: self.config.zone.clone(),
        }
    }

    fn set_registered(&self, lease: Option<i64>) {
        if lease.is_some() {
            self.state.ready.store(true, Ordering::Relaxed);
        }
        self.state.registered.store(lease.is_some(), Ordering::Relaxed);
        self.state.lease_id.store(lease.unwrap_or(0), Ordering::Relaxed);
        self.metrics.registered.set(i64::from(lease.is_some()));
    }

    /// Keeps the entry registered until `stop` is cancelled, then revokes the lease.
    pub async fn run(self, stop: CancellationToken) {
        let endpoints = &self.config.coordinator_endpoints;
        if endpoints.is_empty() {
            tracing::warn!("no coordinator endpoints configured; not registering");
            self.state.ready.store(true, Ordering::Relaxed);
            stop.cancelled().await;
            return;
        }
        let mut backoff = REGISTER_BACKOFF_MIN;
        let mut index = 0usize;
        let mut session = Session::default();
        loop {
            let endpoint = &endpoints[index % endpoints.len()];
            let outcome = self.session(endpoint, &mut session, &stop, &mut backoff).await;
            self.set_registered(None);
            match outcome {
                Ok(()) => return,
                Err(e) => tracing::warn!(%endpoint, error = %e, "coordinator registration failed; retrying"),
            }
            index += 1;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
        }
    }

    /// Registers through `endpoint` (reusing `session`'s lease while it lives) and keeps the
    /// lease alive; returns `Ok` only at shutdown.
    async fn session(
        &self,
        endpoint: &str,
        session: &mut Session,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), RegisterError> {
        let rpc = |what: &'static str| {
            move |message: String| RegisterError::Rpc { what, endpoint: endpoint.to_owned(), message }
        };
        let channel = connect(endpoint).await?;
        let mut leases = LeaseClient::new(channel.clone());
        let mut kv = KvClient::new(channel);
        let key = registry_key(self.config.id);

        // Keep-alives at a third of the TTL; the answer must come before the next one is due.
        let (tx, rx) = mpsc::channel(1);
        let mut responses = deadline(leases.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .map_err(rpc("open keep-alive stream"))?;
        let keep_alive_every = (self.config.lease_ttl / 3).max(Duration::from_millis(200));
        let mut keep_alive = KeepAlive { tx, responses: &mut responses, timeout: keep_alive_every, endpoint };

        // A lease from an earlier session that still lives keeps the entry: no new put.
        if let Some(lease) = session.lease {
            match keep_alive.renew(lease).await {
                Ok(()) => tracing::info!(%endpoint, lease, "kept the registry lease through another coordinator"),
                Err(RegisterError::LeaseLost { .. }) => session.lease = None,
                Err(e) => return Err(e),
            }
        }
        let lease = match session.lease {
            Some(lease) => lease,
            None => {
                let ttl = self.config.lease_ttl.as_secs().max(1) as i64;
                let grant =
                    deadline(leases.lease_grant(LeaseGrantRequest { ttl, id: 0 })).await.map_err(rpc("grant lease"))?;
                if !grant.error.is_empty() {
                    return Err(rpc("grant lease")(grant.error));
                }
                let entry = self.entry();
                deadline(kv.put(put_request(&key, &entry, grant.id))).await.map_err(rpc("put registry entry"))?;
                session.lease = Some(grant.id);
                session.entry = Some(entry);
                tracing::info!(%endpoint, lease = grant.id, %key, "registered in the coordinator");
                grant.id
            }
        };
        self.set_registered(Some(lease));
        *backoff = REGISTER_BACKOFF_MIN;

        let mut keep_alive_tick = tokio::time::interval(keep_alive_every);
        let mut refresh = tokio::time::interval(REGISTRY_REFRESH_INTERVAL);
        refresh.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    // Best effort: the lease would expire by itself anyway.
                    let _ = deadline(leases.lease_revoke(LeaseRevokeRequest { id: lease })).await;
                    session.lease = None;
                    return Ok(());
                }
                _ = keep_alive_tick.tick() => {
                    if let Err(e) = keep_alive.renew(lease).await {
                        if matches!(e, RegisterError::LeaseLost { .. }) {
                            session.lease = None;
                        }
                        return Err(e);
                    }
                }
                _ = refresh.tick() => {
                    let entry = self.entry();
                    if session.entry.as_ref().is_none_or(|old| moved(old, &entry)) {
                        deadline(kv.put(put_request(&key, &entry, lease)))
                            .await
                            .map_err(rpc("refresh registry entry"))?;
                        session.entry = Some(entry);
                    }
                }
            }
        }
    }
}

/// What outlives one coordinator connection.
#[derive(Debug, Default)]
struct Session {
    lease: Option<i64>,
    /// The entry last written.
    entry: Option<RegistryEntry>,
}

/// One keep-alive stream to a coordinator.
struct KeepAlive<'a> {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: &'a mut tonic::Streaming<cairn_proto::etcdserverpb::LeaseKeepAliveResponse>,
    timeout: Duration,
    endpoint: &'a str,
}

impl KeepAlive<'_> {
    /// Renews `lease` once; [`RegisterError::LeaseLost`] if it no longer exists.
    async fn renew(&mut self, lease: i64) -> Result<(), RegisterError> {
        let rpc =
            |message: String| RegisterError::Rpc { what: "keep alive", endpoint: self.endpoint.to_owned(), message };
        if self.tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
            return Err(rpc("stream closed".into()));
        }
        match tokio::time::timeout(self.timeout, self.responses.message()).await {
            Ok(Ok(Some(response))) if response.ttl > 0 => Ok(()),
            Ok(Ok(Some(_))) => Err(RegisterError::LeaseLost { lease }),
            Ok(Ok(None)) => Err(rpc("stream ended".into())),
            Ok(Err(status)) => Err(rpc(status.message().to_owned())),
            Err(_) => Err(rpc("no answer in time".into())),
        }
    }
}

fn put_request(key: &str, entry: &RegistryEntry, lease: i64) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: serde_json::to_vec(entry).unwrap_or_default(),
        lease,
        ..Default::default()
    }
}

/// Whether the entry changed enough to be rewritten.
fn moved(old: &RegistryEntry, new: &RegistryEntry) -> bool {
    let delta = space_delta_bytes(old.capacity_bytes);
    old.free_bytes.abs_diff(new.free_bytes) >= delta
        || old.capacity_bytes.abs_diff(new.capacity_bytes) >= delta
        || (old.addr.as_str(), old.rack.as_str(), old.zone.as_str())
            != (new.addr.as_str(), new.rack.as_str(), new.zone.as_str())
}

/// How far the advertised space may drift before it is rewritten (see `limits`).
fn space_delta_bytes(capacity_bytes: u64) -> u64 {
    (capacity_bytes / REGISTRY_SPACE_DELTA_FRACTION)
        .clamp(REGISTRY_SPACE_DELTA_MIN_BYTES, REGISTRY_SPACE_DELTA_MAX_BYTES)
}

async fn connect(endpoint: &str) -> Result<Channel, RegisterError> {
    let address = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
    let error = |message: String| RegisterError::Connect { endpoint: endpoint.to_owned(), message };
    Endpoint::from_shared(address)
        .map_err(|e| error(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| error(e.to_string()))
}

/// A coordinator call with the RPC deadline, its error flattened to a message.
async fn deadline<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(COORDINATOR_RPC_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{} ({:?})", status.message(), status.code())),
        Err(_) => Err(format!("no answer within {COORDINATOR_RPC_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{GIB, MIB};

    #[test]
    fn entry_json_has_the_documented_fields() {
        let entry = RegistryEntry {
            id: 3,
            addr: "127.0.0.1:7000".into(),
            capacity_bytes: 100,
            free_bytes: 40,
            rack: "r1".into(),
            zone: "z1".into(),
        };
        let json: serde_json::Value = serde_json::to_value(&entry).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"id": 3, "addr": "127.0.0.1:7000", "capacity_bytes": 100, "free_bytes": 40, "rack": "r1", "zone": "z1"})
        );
        assert_eq!(registry_key(NodeId(3)), "/cairn/chunkservers/3");
    }

    #[test]
    fn space_is_rewritten_after_a_sixteenth_of_the_capacity() {
        let entry = |capacity_bytes, free_bytes| RegistryEntry {
            id: 3,
            addr: "127.0.0.1:7000".into(),
            capacity_bytes,
            free_bytes,
            rack: String::new(),
            zone: String::new(),
        };
        // A large disk: 1 GiB steps at most.
        let big = entry(250 * GIB, 100 * GIB);
        assert!(!moved(&big, &entry(250 * GIB, 100 * GIB - (GIB - 1))), "small drifts do not rewrite the entry");
        assert!(moved(&big, &entry(250 * GIB, 99 * GIB)));
        // A 96 MiB server: 6 MiB steps, so filling it shows in the registry.
        let small = entry(96 * MIB, 96 * MIB);
        assert!(!moved(&small, &entry(96 * MIB, 91 * MIB)));
        assert!(moved(&small, &entry(96 * MIB, 90 * MIB)));
        // Never below 1 MiB.
        assert!(!moved(&entry(1000, 1000), &entry(1000, 0)));
    }
}
