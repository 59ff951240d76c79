//! Prometheus metrics of a metaserver node, named `cairn_metaserver_<what>_<unit>`: operations
//! by type and outcome, their latency, and the Raft state (read from the runtime at scrape time).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use cairn_coordinator::rsm::RaftMetrics;

type Labels = Vec<(&'static str, &'static str)>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The metrics of one node.
pub struct Metrics {
    registry: Registry,
    ops: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    term: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    chunk_events: Family<Labels, Counter>,
    chunks: Gauge,
    chunks_under_replicated: Gauge,
    chunks_unavailable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let ops = Family::<Labels, Counter>::default();
        registry.register(
            "cairn_metaserver_ops",
            "Namespace operations by type and outcome (ok, an errno name, or a cluster error)",
            ops.clone(),
        );
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "cairn_metaserver_op_latency_seconds",
            "Latency of namespace operations on this node",
            latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let term = gauge(&mut registry, "cairn_metaserver_raft_term", "Current Raft term");
        let is_leader = gauge(&mut registry, "cairn_metaserver_raft_is_leader", "1 if this node is the Raft leader");
        let last_log_index =
            gauge(&mut registry, "cairn_metaserver_raft_last_log_index", "Index of the last Raft log entry");
        let applied_index =
            gauge(&mut registry, "cairn_metaserver_raft_applied_index", "Index of the last applied Raft log entry");
        let snapshot_index =
            gauge(&mut registry, "cairn_metaserver_raft_snapshot_index", "Index covered by the latest snapshot");
        let chunk_events = Family::<Labels, Counter>::default();
        registry.register(
            "cairn_metaserver_chunk_events",
            "Leader chunk work by kind: gc_deleted, orphan_deleted, healed, heal_failed, version_bump, truncate",
            chunk_events.clone(),
        );
        let chunks = gauge(&mut registry, "cairn_metaserver_chunks", "Chunks in the map (leader's last healing round)");
        let chunks_under_replicated = gauge(
            &mut registry,
            "cairn_metaserver_chunks_under_replicated",
            "Chunks with fewer live replicas than the replication factor, but at least one (leader)",
        );
        let chunks_unavailable =
            gauge(&mut registry, "cairn_metaserver_chunks_unavailable", "Chunks without a live replica (leader)");
        Metrics {
            registry,
            ops,
            latency,
            term,
            is_leader,
            last_log_index,
            applied_index,
            snapshot_index,
            chunk_events,
            chunks,
            chunks_under_replicated,
            chunks_unavailable,
        }
    }

    /// Records one operation: its name, outcome label and duration.
    pub fn observe(&self, op: &'static str, outcome: &'static str, elapsed: Duration) {
        self.ops.get_or_create(&vec![("op", op), ("outcome", outcome)]).inc();
        self.latency.get_or_create(&vec![("op", op)]).observe(elapsed.as_secs_f64());
    }

    /// Counts one piece of the leader's chunk work.
    pub fn chunk_event(&self, kind: &'static str) {
        self.chunk_events(kind, 1);
    }

    pub fn chunk_events(&self, kind: &'static str, n: u64) {
        self.chunk_events.get_or_create(&vec![("kind", kind)]).inc_by(n);
    }

    /// The leader's latest count of chunks, under-replicated and unavailable ones.
    pub fn set_chunk_counts(&self, chunks: u64, under_replicated: u64, unavailable: u64) {
        self.chunks.set(chunks as i64);
        self.chunks_under_replicated.set(under_replicated as i64);
        self.chunks_unavailable.set(unavailable as i64);
    }

    /// Renders every metric in the Prometheus text format, with Raft state from `raft`.
    pub fn render(&self, raft: &RaftMetrics, node_id: u64) -> String {
        self.term.set(raft.current_term as i64);
        self.is_leader.set(i64::from(raft.current_leader == Some(node_id)));
        self.last_log_index.set(raft.last_log_index.unwrap_or(0) as i64);
        self.applied_index.set(raft.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        self.snapshot_index.set(raft.snapshot.map(|l| l.index).unwrap_or(0) as i64);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encode metrics");
        }
        out
    }
}
