//! Asking servers how they are: `/health` for readiness, `/status` for Raft role and leader.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::logs::tail_lines;
use super::process::is_alive;
use super::state::NodeInfo;
use super::{DevError, NodeId};
use crate::http;
use crate::limits::{DEV_LOG_TAIL_LINES, DEV_READY_POLL_INTERVAL, HTTP_REQUEST_TIMEOUT};

/// A server's answer to `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied: u64,
    /// Raft role as the server names it: `Leader`, `Follower`, `Candidate`, `Learner`, ...
    pub state: String,
}

/// Whether the node at `http_addr` answers `GET /health` with 200 (and, when the body is JSON
/// with a `health` field, that field is `"true"`). The error explains why not.
pub async fn probe_health(http_addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let response = http::get(http_addr, "/health", timeout).await.map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("/health returned {}: {}", response.status, response.body_text().trim()));
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&response.body) {
        if let Some(health) = json.get("health") {
            if health != "true" && health != &serde_json::Value::Bool(true) {
                return Err(format!("/health says {json}"));
            }
        }
    }
    Ok(())
}

/// `GET /status` of the node at `http_addr`, as raw JSON.
pub(crate) async fn fetch_status_json(http_addr: SocketAddr) -> Result<serde_json::Value, DevError> {
    let response = http::get(http_addr, "/status", HTTP_REQUEST_TIMEOUT).await?;
    let bad = |reason: String| DevError::BadStatus { addr: http_addr.to_string(), reason };
    if response.status != 200 {
        return Err(bad(format!("HTTP {}: {}", response.status, response.body_text().trim())));
    }
    serde_json::from_slice(&response.body).map_err(|e| bad(e.to_string()))
}

/// `GET /status` of the node at `http_addr`.
pub async fn fetch_status(http_addr: SocketAddr) -> Result<NodeStatus, DevError> {
    let json = fetch_status_json(http_addr).await?;
    serde_json::from_value(json).map_err(|e| DevError::BadStatus { addr: http_addr.to_string(), reason: e.to_string() })
}

/// The leader according to the nodes at `http_addrs`, asked concurrently: the leader named by
/// the answer with the highest term. `None` if no node that answered knows a leader.
pub async fn leader(http_addrs: &[SocketAddr]) -> Option<NodeId> {
    let mut asks = JoinSet::new();
    for &addr in http_addrs {
        asks.spawn(fetch_status(addr));
    }
    let mut best: Option<NodeStatus> = None;
    while let Some(joined) = asks.join_next().await {
        let Ok(Ok(status)) = joined else { continue };
        if status.leader.is_some() && best.as_ref().is_none_or(|b| status.term > b.term) {
            best = Some(status);
        }
    }
    best.and_then(|s| s.leader)
}

/// Waits until every node in `nodes` is healthy. Fails at once if a node with a pid stops
/// running, and after `timeout` otherwise; both errors carry each node's log tail.
pub(crate) async fn wait_ready(nodes: &[NodeInfo], timeout: Duration) -> Result<(), DevError> {
    let deadline = Instant::now() + timeout;
    let mut problems: Vec<Option<String>> = vec![Some("not probed yet".into()); nodes.len()];
    loop {
        for (node, problem) in nodes.iter().zip(problems.iter_mut()) {
            if problem.is_none() {
                continue;
            }
            if let Some(pid) = node.pid.filter(|&pid| !is_alive(pid)) {
                *problem = Some(format!("process {pid} exited"));
                return Err(DevError::NotReady { timeout, report: readiness_report(nodes, &problems) });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let probe_timeout = HTTP_REQUEST_TIMEOUT.min(remaining).max(Duration::from_millis(100));
            *problem = probe_health(node.addrs.http, probe_timeout).await.err();
        }
        if problems.iter().all(Option::is_none) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DevError::NotReady { timeout, report: readiness_report(nodes, &problems) });
        }
        tokio::time::sleep(DEV_READY_POLL_INTERVAL).await;
    }
}

fn readiness_report(nodes: &[NodeInfo], problems: &[Option<String>]) -> String {
    let mut report = String::new();
    for (node, problem) in nodes.iter().zip(problems) {
        let pid = node.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let state = problem.as_deref().unwrap_or("ready");
        let _ = writeln!(report, "{} (pid {pid}, http {}): {state}", node.node_ref(), node.addrs.http);
    }
    for node in nodes {
        let _ = writeln!(report, "--- last lines of {} ---", node.log_path.display());
        match tail_lines(&node.log_path, DEV_LOG_TAIL_LINES) {
            Ok(lines) if lines.is_empty() => report.push_str("(empty)\n"),
            Ok(lines) => lines.iter().for_each(|l| {
                report.push_str(l);
                report.push('\n');
            }),
            Err(e) => {
                let _ = writeln!(report, "({e})");
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{NodeAddrs, ServiceKind};
    use std::path::PathBuf;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves `response` to every connection on a fresh port.
    async fn serve(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    fn json_response(body: &str) -> &'static str {
        let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        Box::leak(text.into_boxed_str())
    }

    #[test]
    fn status_json_parses() {
        let status: NodeStatus = serde_json::from_str(
            r#"{"node_id":2,"leader":1,"term":7,"last_applied":42,"state":"Follower","extra":true}"#,
        )
        .expect("parse");
        assert_eq!(status.leader, Some(NodeId(1)));
        let status: NodeStatus =
            serde_json::from_str(r#"{"node_id":2,"leader":null,"term":1,"last_applied":0,"state":"Candidate"}"#)
                .expect("parse");
        assert_eq!(status.leader, None);
    }

    #[tokio::test]
    async fn health_probe_and_leader() {
        let healthy = serve(json_response(r#"{"health":"true"}"#)).await;
        let unhealthy =
            serve("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 18\r\n\r\n{\"health\":\"false\"}").await;
        assert_eq!(probe_health(healthy, HTTP_REQUEST_TIMEOUT).await, Ok(()));
        assert!(probe_health(unhealthy, HTTP_REQUEST_TIMEOUT).await.is_err());

        let old = serve(json_response(r#"{"node_id":1,"leader":1,"term":3,"last_applied":5,"state":"Leader"}"#)).await;
        let new = serve(json_response(r#"{"node_id":2,"leader":2,"term":4,"last_applied":6,"state":"Leader"}"#)).await;
        let lost =
            serve(json_response(r#"{"node_id":3,"leader":null,"term":5,"last_applied":6,"state":"Candidate"}"#)).await;
        assert_eq!(leader(&[old, new, lost, unhealthy]).await, Some(NodeId(2)));
        assert_eq!(leader(&[lost]).await, None);
    }

    #[tokio::test]
    async fn wait_ready_reports_unready_nodes_with_log_tails() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log_path = tmp.path().join("coordinator-1.log");
        std::fs::write(&log_path, "booting\nstill booting\n").expect("write");
        let unhealthy = serve("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let node = NodeInfo {
            kind: ServiceKind::Coordinator,
            id: NodeId(1),
            pid: None,
            addrs: NodeAddrs { client: unhealthy, peer: unhealthy, http: unhealthy },
            data_dir: PathBuf::from("/nonexistent"),
            log_path,
        };
        let err = wait_ready(&[node], Duration::from_millis(300)).await.expect_err("not ready");
        let text = err.to_string();
        assert!(text.contains("coordinator-1"), "{text}");
        assert!(text.contains("503"), "{text}");
        assert!(text.contains("still booting"), "{text}");
    }
}
