//! Prometheus metrics of a coordinator node, named `cairn_coordinator_<what>_<unit>`. Values are
//! read from Raft and the store when scraped, so they cost nothing between scrapes.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::backend::Backend;

/// Renders the node's metrics in the Prometheus text format.
pub fn render(backend: &Backend) -> String {
    let mut registry = Registry::default();
    let m = backend.rsm().metrics().borrow().clone();
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let g: Gauge = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    };
    gauge(&mut registry, "cairn_coordinator_raft_term", "Current Raft term", m.current_term as i64);
    gauge(
        &mut registry,
        "cairn_coordinator_raft_is_leader",
        "1 if this node is the Raft leader",
        i64::from(m.current_leader == Some(backend.member_id())),
    );
    gauge(
        &mut registry,
        "cairn_coordinator_raft_last_log_index",
        "Index of the last Raft log entry",
        m.last_log_index.unwrap_or(0) as i64,
    );
    gauge(
        &mut registry,
        "cairn_coordinator_raft_applied_index",
        "Index of the last applied Raft log entry",
        m.last_applied.map(|l| l.index).unwrap_or(0) as i64,
    );
    gauge(
        &mut registry,
        "cairn_coordinator_raft_snapshot_index",
        "Index covered by the latest snapshot",
        m.snapshot.map(|l| l.index).unwrap_or(0) as i64,
    );
    gauge(
        &mut registry,
        "cairn_coordinator_kv_revision",
        "Current MVCC revision",
        backend.current_revision().unwrap_or(0),
    );
    gauge(
        &mut registry,
        "cairn_coordinator_db_size_bytes",
        "Bytes of RocksDB SST files",
        backend.rsm().store().size_bytes() as i64,
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encode metrics");
    }
    out
}
