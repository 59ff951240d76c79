//! Wiring and lifecycle of one metaserver process: the consensus runtime with the namespace
//! state machine, the peer (Raft) and client (MetaService) gRPC servers, the HTTP endpoints, and
//! the format-on-first-start task. Everything stops when the shutdown token is cancelled
//! (SIGTERM), and the store is synced on the way out.

pub mod namespace;

use std::sync::Arc;

use cairn_coordinator::rsm::{incoming_nodelay, Member, Rsm, RsmConfig, RsmError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::MetaApi;
use crate::chunks::{ChunkManager, RegistryView};
use crate::config::MetaConfig;
use crate::limits::FORMAT_RETRY_INTERVAL;
use crate::metrics::Metrics;
use crate::namespace::{Caller, Namespace, Op, Reply};
use crate::sessions::LeaderCalls;
use namespace::NamespaceNode;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("start consensus runtime: {0}")]
    Rsm(#[from] RsmError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{what} server: {message}")]
    Server { what: &'static str, message: String },
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Listen { addr, source })
}

/// Runs a metaserver node until `shutdown` is cancelled.
pub async fn run(config: MetaConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let mut rsm_config = RsmConfig::new(config.node_id, config.data_dir.clone());
    rsm_config.cluster_name = "cairn-metaserver".into();
    rsm_config.heartbeat_interval_ms = config.heartbeat_interval_ms;
    rsm_config.election_timeout_min_ms = config.election_timeout_ms;
    rsm_config.election_timeout_max_ms = config.election_timeout_ms * 2;
    rsm_config.snapshot_logs_since_last = config.snapshot_count;
    rsm_config.logs_to_keep_after_snapshot = (config.snapshot_count / 10).max(1);
    let rsm = Rsm::open(rsm_config, Arc::new(Namespace::new())).await?;
    let node = NamespaceNode::new(rsm.clone(), Arc::new(Metrics::new()));
    let registry = Arc::new(RegistryView::new());
    let chunks = Arc::new(ChunkManager::new(
        node.clone(),
        registry.clone(),
        std::time::Duration::from_millis(config.orphan_scan_interval_ms),
    ));
    // Held for the whole run: the leader-call handler only keeps weak references.
    let shared_node = Arc::new(node.clone());
    rsm.set_app_rpc_handler(Arc::new(LeaderCalls {
        node: Arc::downgrade(&shared_node),
        chunks: Arc::downgrade(&chunks),
    }));

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

    let stop = shutdown.clone();
    let formatter = node.clone();
    let (chunk_size_bytes, replication_factor) = (config.chunk_size_bytes, config.replication_factor);
    tasks.spawn(async move {
        format_once(formatter, chunk_size_bytes, replication_factor, stop).await;
        Ok(())
    });

    let stop = shutdown.clone();
    let expirer = shared_node.clone();
    tasks.spawn(async move {
        crate::sessions::expire_while_leader(expirer, stop).await;
        Ok(())
    });

    let stop = shutdown.clone();
    let endpoints = config.coordinator_endpoints.clone();
    tasks.spawn(async move {
        crate::chunks::registry::follow(registry, endpoints, stop).await;
        Ok(())
    });

    let stop = shutdown.clone();
    let worker = chunks.clone();
    tasks.spawn(async move {
        worker.run(stop).await;
        Ok(())
    });

    let api = MetaApi::server(node.clone(), chunks.clone());
    let hint = crate::api::leader_hint::layer(rsm.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        tonic::transport::Server::builder()
            .layer(hint)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming_nodelay(client_listener), stop.cancelled())
            .await
            .map_err(|e| NodeError::Server { what: "client", message: e.to_string() })
    });

    let stop = shutdown.clone();
    let http_node = node.clone();
    let http_chunks = chunks.clone();
    let coordinators = config.coordinator_endpoints.clone();
    tasks.spawn(async move {
        crate::http::serve(http_listener, http_node, http_chunks, coordinators, stop)
            .await
            .map_err(|e| NodeError::Server { what: "http", message: e.to_string() })
    });

    tracing::info!(
        node_id = config.node_id,
        client = %config.listen_client,
        peer = %config.listen_peer,
        http = %config.listen_http,
        coordinators = ?config.coordinator_endpoints,
        "metaserver started"
    );

    let mut result = Ok(());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            done = tasks.join_next() => match done {
                Some(Ok(Ok(()))) => continue,
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
    tracing::info!(node_id = config.node_id, "metaserver stopped");
    result
}

/// Formats the filesystem unless it is already formatted: the format command is idempotent, so
/// every node may propose it; the first one committed wins and records its parameters.
async fn format_once(node: NamespaceNode, chunk_size_bytes: u64, replication_factor: u32, stop: CancellationToken) {
    loop {
        if node.formatted_locally() {
            return;
        }
        let op = Op::Format { chunk_size_bytes, replication_factor };
        match node.change(Caller::root(), None, op).await {
            Ok(Ok(Reply::Formatted(params))) => {
                tracing::info!(
                    chunk_size_bytes = params.chunk_size_bytes,
                    replication_factor = params.replication_factor,
                    fs_generation = params.fs_generation,
                    "filesystem formatted"
                );
                return;
            }
            Ok(other) => {
                tracing::error!(outcome = ?other, "format refused; the filesystem stays unformatted");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "format: will retry"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(FORMAT_RETRY_INTERVAL) => {}
        }
    }
}
