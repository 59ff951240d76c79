//! The HTTP side port: `/health` (etcd-style JSON; 200 only when a linearizable read succeeds),
//! `/status` (Raft state as JSON, for tools and tests), `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;

/// Serves the HTTP endpoints until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<Backend>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(backend);
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}

fn json(code: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn health(State(backend): State<Arc<Backend>>) -> axum::response::Response {
    match tokio::time::timeout(Duration::from_secs(2), backend.rsm().read_barrier()).await {
        Ok(Ok(())) => json(StatusCode::OK, serde_json::json!({"health": "true"})),
        Ok(Err(e)) => {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": e.to_string()}))
        }
        Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": "timed out"})),
    }
}

async fn status(State(backend): State<Arc<Backend>>) -> axum::response::Response {
    let m = backend.rsm().metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let learners: Vec<u64> = m.membership_config.membership().learner_ids().collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "node_id": backend.member_id(),
            "leader": m.current_leader,
            "term": m.current_term,
            "state": format!("{:?}", m.state),
            "last_log_index": m.last_log_index.unwrap_or(0),
            "last_applied": m.last_applied.map(|l| l.index).unwrap_or(0),
            "snapshot_index": m.snapshot.map(|l| l.index).unwrap_or(0),
            "purged_index": m.purged.map(|l| l.index).unwrap_or(0),
            "voters": voters,
            "learners": learners,
            "revision": backend.current_revision().unwrap_or(0),
        }),
    )
}

async fn metrics(State(backend): State<Arc<Backend>>) -> axum::response::Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render(&backend))
        .into_response()
}
