//! Reading the servers' Prometheus metrics.

use std::time::Duration;

use cairn_fs_client::dev::{Cluster, NodeRef};

/// The sum over the metaservers of a metric line (`name` with its labels; a node without the
/// line counts 0). Leader work is counted where it ran, and leadership may move.
pub async fn metaserver_metric_sum(cluster: &Cluster, name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for id in cluster.metaserver_ids() {
        let http = cluster.node(NodeRef::metaserver(id))?.addrs.http;
        let metrics = cairn_fs_client::http::get(http, "/metrics", Duration::from_secs(5)).await?;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')) {
            sum += line[name.len()..].trim().parse::<f64>()?;
        }
    }
    Ok(sum)
}
