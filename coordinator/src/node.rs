//! Wiring and lifecycle of one coordinator process: the consensus runtime, the peer and client
//! gRPC servers, the HTTP endpoints, and the leader's lease-expiry loop. Everything stops when
//! the shutdown token is cancelled (SIGTERM), and the store is synced on the way out.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::cluster_server::ClusterServer;
use cairn_proto::etcdserverpb::kv_server::KvServer;
use cairn_proto::etcdserverpb::lease_server::LeaseServer;
use cairn_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use cairn_proto::etcdserverpb::watch_server::WatchServer;
use cairn_proto::v3electionpb::election_server::ElectionServer;
use cairn_proto::v3lockpb::lock_server::LockServer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{cluster::ClusterApi, kv::KvApi, lease::LeaseApi, maintenance::MaintenanceApi, watch::WatchApi};
use crate::api::{election::ElectionApi, lock::LockApi};
use crate::backend::Backend;
use crate::config::CoordinatorConfig;
use crate::election::Elections;
use crate::lessor::Lessor;
use crate::limits;
use crate::lock::Locks;
use crate::mvcc::KvStateMachine;
use crate::rsm::{incoming_nodelay, Member, Rsm, RsmConfig, RsmError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("start consensus runtime: {0}")]
    Rsm(#[from] RsmError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{what} server: {message}")]
    Server { what: &'static str, message: String },
}

/// A cluster id derived from the initial membership, the same on every member.
fn cluster_id(config: &CoordinatorConfig) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, addr) in &config.initial_cluster {
        for b in format!("{id}={addr};").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Listen { addr, source })
}

/// Runs a coordinator node until `shutdown` is cancelled.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let app = Arc::new(KvStateMachine::new());
    let mut rsm_config = RsmConfig::new(config.node_id, config.data_dir.clone());
    rsm_config.heartbeat_interval_ms = config.heartbeat_interval_ms;
    rsm_config.election_timeout_min_ms = config.election_timeout_ms;
    rsm_config.election_timeout_max_ms = config.election_timeout_ms * 2;
    rsm_config.snapshot_logs_since_last = config.snapshot_count;
    rsm_config.logs_to_keep_after_snapshot = (config.snapshot_count / 10).max(1);
    let rsm = Rsm::open(rsm_config, app).await?;

    let peer_listener = bind(config.listen_peer).await?;
    let client_listener = bind(config.listen_client).await?;
    let http_listener = bind(config.listen_http).await?;

    let mut tasks: JoinSet<Result<(), NodeError>> = JoinSet::new();

    let stop = shutdown.clone();
    let peers = rsm.clone();
    tasks.spawn(async move {
        peers
            .serve_peers(peer_listener, stop)
            .await
            .map_err(|e| NodeError::Server { what: "peer", message: e.to_string() })
    });

    let me = Member {
        peer_addr: config.advertise_peer.clone(),
        client_addr: config.advertise_client.clone(),
        name: config.name.clone(),
    };
    rsm.found_if_first(&me, &config.initial_cluster).await?;
    let stop = shutdown.clone();
    let publisher = rsm.clone();
    tasks.spawn(async move {
        publisher.publish_self_until_done(me, stop).await;
        Ok(())
    });

    let backend = Backend::new(rsm.clone(), Arc::new(Lessor::new()), cluster_id(&config), config.election_timeout_ms);

    let kv = KvServer::new(KvApi { backend: backend.clone() })
        .max_decoding_message_size(limits::GRPC_DECODE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_SEND_BYTES_MAX);
    let watch = WatchServer::new(WatchApi {
        backend: backend.clone(),
        progress_interval: Duration::from_millis(config.watch_progress_notify_interval_ms),
    })
    .max_decoding_message_size(limits::GRPC_DECODE_BYTES_MAX)
    .max_encoding_message_size(limits::GRPC_SEND_BYTES_MAX);
    let lease = LeaseServer::new(LeaseApi { backend: backend.clone() })
        .max_decoding_message_size(limits::GRPC_DECODE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_SEND_BYTES_MAX);
    let maintenance = MaintenanceServer::new(MaintenanceApi { backend: backend.clone() })
        .max_decoding_message_size(limits::GRPC_DECODE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_SEND_BYTES_MAX);
    let lock = LockServer::new(LockApi { locks: Locks::new(backend.clone()) })
        .max_decoding_message_size(limits::GRPC_DECODE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_SEND_BYTES_MAX);
    let election = ElectionServer::new(ElectionApi { elections: Elections::new(backend.clone()) })
        .max_decoding_message_size(limits::GRPC_DECODE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_SEND_BYTES_MAX);
    let cluster = ClusterServer::new(ClusterApi { backend: backend.clone() });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(cluster)
            .add_service(kv)
            .add_service(watch)
            .add_service(lease)
            .add_service(maintenance)
            .add_service(lock)
            .add_service(election)
            .serve_with_incoming_shutdown(incoming_nodelay(client_listener), stop.cancelled())
            .await
            .map_err(|e| NodeError::Server { what: "client", message: e.to_string() })
    });

    let stop = shutdown.clone();
    let http_backend = backend.clone();
    tasks.spawn(async move {
        crate::http::serve(http_listener, http_backend, stop)
            .await
            .map_err(|e| NodeError::Server { what: "http", message: e.to_string() })
    });

    let stop = shutdown.clone();
    let alarms = backend.alarms().clone();
    let data_dir = config.data_dir.clone();
    let free_min = config.disk_free_min_bytes;
    tasks.spawn(async move {
        crate::alarm::monitor_disk(alarms, data_dir, free_min, limits::DISK_CHECK_INTERVAL, stop).await;
        Ok(())
    });

    let stop = shutdown.clone();
    let lease_backend = backend.clone();
    tasks.spawn(async move {
        expire_leases_while_leader(lease_backend, stop).await;
        Ok(())
    });

    tracing::info!(
        node_id = config.node_id,
        client = %config.listen_client,
        peer = %config.listen_peer,
        http = %config.listen_http,
        "coordinator started"
    );

    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            done = tasks.join_next() => match done {
                // A helper task (e.g. publishing this member) finished its job.
                Some(Ok(Ok(()))) => continue,
                // A server failed: shut everything down and report why.
                Some(Ok(Err(e))) => {
                    result = Err(e);
                    shutdown.cancel();
                    break;
                }
                Some(Err(e)) => {
                    result = Err(NodeError::Server { what: "task", message: e.to_string() });
                    shutdown.cancel();
                    break;
                }
                None => break,
            },
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "while stopping");
        }
    }
    rsm.shutdown().await;
    tracing::info!(node_id = config.node_id, "coordinator stopped");
    result
}

/// On the leader, checks lease deadlines and proposes expiries. Every change of leadership
/// resets the countdowns, so a new leader gives every lease a full TTL.
async fn expire_leases_while_leader(backend: Arc<Backend>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(limits::LEASE_CHECK_INTERVAL);
    let mut leading_term: Option<u64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let term = backend.rsm().metrics().borrow().current_term;
        if !backend.rsm().is_leader() {
            if leading_term.take().is_some() {
                backend.lessor().reset();
            }
            continue;
        }
        if leading_term != Some(term) {
            backend.lessor().reset();
            leading_term = Some(term);
        }
        if let Err(e) = backend.expire_leases().await {
            tracing::warn!(error = %e, "lease expiry round failed");
        }
    }
}
