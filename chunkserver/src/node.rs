//! Wiring and lifecycle of one chunkserver process: open the store, start the chunk gRPC
//! service, the HTTP port, the scrubber and the coordinator registration; on shutdown (the
//! token is cancelled by SIGTERM/SIGINT) revoke the registration, give in-flight requests
//! `SHUTDOWN_GRACE` to finish, sync the write-ahead log and close the database.

use std::sync::Arc;

use cairn_proto::chunk::chunk_service_server::ChunkServiceServer;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::ChunkApi;
use crate::config::ChunkserverConfig;
use crate::engine::ChunkEngine;
use crate::error::ChunkError;
use crate::http::{self, HttpState};
use crate::integrity::Integrity;
use crate::limits::{
    GRPC_CONNECTION_WINDOW_BYTES, GRPC_FRAME_BYTES_MAX, GRPC_MESSAGE_BYTES_MAX, GRPC_STREAM_WINDOW_BYTES,
    SHUTDOWN_GRACE,
};
use crate::metrics::Metrics;
use crate::registry::{Registration, RegistrationConfig};
use crate::scrubber::{self, ScrubConfig};
use crate::space::Space;
use crate::storage::{IoMode, RocksStore};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("open chunk store: {0}")]
    Open(#[from] ChunkError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{what} server: {message}")]
    Server { what: &'static str, message: String },
}

/// The database directory inside a chunkserver's data directory.
pub fn db_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("db")
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Listen { addr, source })
}

/// Runs a chunkserver until `shutdown` is cancelled.
pub async fn run(config: ChunkserverConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| NodeError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let db = db_path(&config.data_dir);
    let space =
        Arc::new(Space::for_disk(config.data_dir.clone(), config.disk_reserve_bytes, config.capacity_limit_bytes));
    let block_size = config.block_size_bytes;
    let open_space = space.clone();
    let io = if config.direct_io { IoMode::Direct } else { IoMode::Buffered };
    let block_cache_bytes = usize::try_from(config.block_cache_bytes).unwrap_or(usize::MAX);
    let engine = tokio::task::spawn_blocking(move || -> Result<ChunkEngine, ChunkError> {
        let store = Arc::new(RocksStore::open(&db, io, block_cache_bytes)?);
        tracing::info!(direct_io = store.direct_io(), "chunk store open");
        ChunkEngine::open(store, open_space, block_size)
    })
    .await
    .map_err(|e| NodeError::Server { what: "open", message: e.to_string() })??;
    let engine = Arc::new(engine);
    let metrics = Arc::new(Metrics::new());
    let integrity = Arc::new(Integrity::new(engine.clone(), metrics.clone()));

    let grpc_listener = bind(config.listen).await?;
    let http_listener = bind(config.listen_http).await?;

    // Background work stops first (registration revokes the lease); servers get a grace period.
    let background = CancellationToken::new();
    let servers = CancellationToken::new();
    let mut tasks: JoinSet<Result<(), NodeError>> = JoinSet::new();

    let service = ChunkServiceServer::new(ChunkApi::new(engine.clone(), metrics.clone(), integrity.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let stop = servers.clone();
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener).map(|conn| {
            let conn = conn?;
            conn.set_nodelay(true)?;
            Ok::<_, std::io::Error>(conn)
        });
        tonic::transport::Server::builder()
            .initial_stream_window_size(GRPC_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(GRPC_CONNECTION_WINDOW_BYTES)
            .max_frame_size(GRPC_FRAME_BYTES_MAX)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await
            .map_err(|e| NodeError::Server { what: "grpc", message: e.to_string() })
    });

    let registration = Registration::new(
        RegistrationConfig {
            id: config.id,
            advertise_addr: config.advertise.clone(),
            coordinator_endpoints: config.coordinator_endpoints.clone(),
            lease_ttl: config.lease_ttl,
            rack: config.rack.clone(),
            zone: config.zone.clone(),
        },
        space.clone(),
        metrics.clone(),
    );
    let http_state = HttpState {
        id: config.id,
        advertise: config.advertise.clone(),
        engine: engine.clone(),
        metrics: metrics.clone(),
        integrity: integrity.clone(),
        registration: registration.state(),
        stopping: shutdown.clone(),
    };
    let stop = servers.clone();
    tasks.spawn(async move {
        http::serve(http_listener, http_state, stop)
            .await
            .map_err(|e| NodeError::Server { what: "http", message: e.to_string() })
    });

    let stop = background.clone();
    tasks.spawn(async move {
        registration.run(stop).await;
        Ok(())
    });
    let stop = background.clone();
    let scrub = ScrubConfig { rate_bytes_per_sec: config.scrub_rate_bytes_per_sec, interval: config.scrub_interval };
    let (scrub_engine, scrub_integrity) = (engine.clone(), integrity.clone());
    tasks.spawn(async move {
        scrubber::run(scrub_engine, scrub_integrity, scrub, stop).await;
        Ok(())
    });

    tracing::info!(
        id = %config.id,
        grpc = %config.listen,
        http = %config.listen_http,
        data_dir = %config.data_dir.display(),
        block_size_bytes = config.block_size_bytes,
        "chunkserver started"
    );

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(done) = tasks.join_next() => {
            result = match done {
                Ok(Ok(())) => Err(NodeError::Server { what: "task", message: "ended unexpectedly".into() }),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(NodeError::Server { what: "task", message: e.to_string() }),
            };
            shutdown.cancel();
        }
    }
    background.cancel();
    servers.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "while stopping");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight requests did not finish in time; aborting them");
        tasks.shutdown().await;
    }
    let sync_engine = engine.clone();
    match tokio::task::spawn_blocking(move || sync_engine.sync()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "sync at shutdown"),
        Err(e) => tracing::warn!(error = %e, "sync at shutdown"),
    }
    tracing::info!(id = %config.id, "chunkserver stopped");
    result
}
