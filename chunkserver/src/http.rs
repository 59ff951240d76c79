//! The HTTP side port: `/health` (200 once registered in the coordinator — at least once since
//! start — while the store answers and the server is not stopping),
//! `/status` (identity, registration, space, corrupt chunks, scrub progress as JSON) and
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::engine::ChunkEngine;
use crate::ids::{ChunkId, NodeId};
use crate::integrity::Integrity;
use crate::metrics::Metrics;
use crate::registry::RegistrationState;

#[derive(Debug, Clone)]
pub struct HttpState {
    pub id: NodeId,
    pub advertise: String,
    pub engine: Arc<ChunkEngine>,
    pub metrics: Arc<Metrics>,
    pub integrity: Arc<Integrity>,
    pub registration: Arc<RegistrationState>,
    pub stopping: CancellationToken,
}

/// Serves the endpoints until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}

fn json(code: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn health(State(state): State<HttpState>) -> axum::response::Response {
    if state.stopping.is_cancelled() {
        return json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": "stopping"}));
    }
    if !state.registration.ready() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": "not registered in the coordinator yet"}),
        );
    }
    let engine = state.engine.clone();
    match tokio::task::spawn_blocking(move || engine.list(ChunkId(0), 1)).await {
        Ok(Ok(_)) => json(StatusCode::OK, serde_json::json!({"health": "true"})),
        Ok(Err(e)) => {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": e.to_string()}))
        }
        Err(e) => {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"health": "false", "reason": e.to_string()}))
        }
    }
}

async fn status(State(state): State<HttpState>) -> axum::response::Response {
    let space = state.engine.space();
    json(
        StatusCode::OK,
        serde_json::json!({
            "node_id": state.id.0,
            "kind": "chunkserver",
            "state": if state.stopping.is_cancelled() { "Stopping" } else { "Serving" },
            "addr": state.advertise,
            "registered": state.registration.registered(),
            "lease_id": state.registration.lease_id(),
            "block_size_bytes": state.engine.block_size_bytes(),
            "stored_bytes": space.stored_bytes(),
            "free_bytes": space.free_bytes(),
            "capacity_bytes": space.capacity_bytes(),
            "corrupt_chunks": state.integrity.corrupt_chunks(),
            "scrub": state.integrity.scrub_progress(),
        }),
    )
}

async fn metrics(State(state): State<HttpState>) -> axum::response::Response {
    let body = state.metrics.render(state.engine.space());
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
