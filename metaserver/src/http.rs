//! The HTTP side port: `/health` (200 only when a linearizable read succeeds and the filesystem
//! is formatted), `/status` (Raft state and the namespace digest as JSON, for tools and tests),
//! `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::chunks::ChunkManager;
use crate::namespace::read;
use crate::node::namespace::NamespaceNode;

struct HttpState {
    node: NamespaceNode,
    chunks: Arc<ChunkManager>,
    coordinators: Vec<String>,
}

/// Serves the HTTP endpoints until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: NamespaceNode,
    chunks: Arc<ChunkManager>,
    coordinators: Vec<String>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(HttpState { node, chunks, coordinators }));
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}

fn json(code: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn health(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    let probe = state.node.read("health", |s| read::fs_params(s));
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(Ok(Some(_)))) => json(StatusCode::OK, serde_json::json!({"health": "true"})),
        Ok(Ok(Ok(None))) => {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": "not formatted"}))
        }
        Ok(Ok(Err(e))) => {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": e.to_string()}))
        }
        Ok(Err(e)) => {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": e.to_string()}))
        }
        Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": "timed out"})),
    }
}

async fn status(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    let rsm = state.node.rsm();
    let m = rsm.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let learners: Vec<u64> = m.membership_config.membership().learner_ids().collect();
    let digest = state.node.local_digest().ok();
    json(
        StatusCode::OK,
        serde_json::json!({
            "node_id": rsm.node_id(),
            "leader": m.current_leader,
            "term": m.current_term,
            "state": format!("{:?}", m.state),
            "last_log_index": m.last_log_index.unwrap_or(0),
            "last_applied": m.last_applied.map(|l| l.index).unwrap_or(0),
            "snapshot_index": m.snapshot.map(|l| l.index).unwrap_or(0),
            "purged_index": m.purged.map(|l| l.index).unwrap_or(0),
            "voters": voters,
            "learners": learners,
            "namespace_digest": digest.as_ref().map(|d| d.digest.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            "namespace_rows": digest.as_ref().map(|d| d.rows),
            "coordinator_endpoints": state.coordinators,
            "chunkservers": state.chunks.registry().live().map(|servers| servers
                .iter()
                .map(|s| serde_json::json!({"id": s.id, "addr": s.addr, "free_bytes": s.free_bytes, "rack": s.rack, "zone": s.zone}))
                .collect::<Vec<_>>()),
        }),
    )
}

async fn metrics(State(state): State<Arc<HttpState>>) -> axum::response::Response {
    let raft = state.node.rsm().metrics().borrow().clone();
    let body = state.node.metrics().render(&raft, state.node.rsm().node_id());
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
