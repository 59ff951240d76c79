//! Prometheus metrics of a chunkserver, named `cairn_chunkserver_<what>_<unit>` (counters get
//! prometheus-client's `_total` suffix). Counters are bumped where the work happens; space
//! gauges are read when scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::space::Space;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub write_bytes: Counter,
    pub write_streams: Counter,
    pub bulk_streams: Counter,
    pub write_failures: Counter,
    pub read_bytes: Counter,
    pub read_requests: Counter,
    pub checksum_errors: Counter,
    pub wire_checksum_errors: Counter,
    pub replica_failures: Counter,
    pub scrub_bytes: Counter,
    pub scrub_passes: Counter,
    pub scrub_corrupt_chunks: Counter,
    pub copies: Counter,
    pub registered: Gauge,
    stored_bytes: Gauge,
    free_bytes: Gauge,
    capacity_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let write_bytes = counter("cairn_chunkserver_write_bytes", "Data bytes applied by write streams");
        let write_streams = counter("cairn_chunkserver_write_streams", "Write streams received");
        let bulk_streams = counter(
            "cairn_chunkserver_bulk_streams",
            "Write streams stored without the write-ahead log and persisted before their answer",
        );
        let write_failures = counter("cairn_chunkserver_write_failures", "Write streams that ended in an error");
        let read_bytes = counter("cairn_chunkserver_read_bytes", "Data bytes served by reads");
        let read_requests = counter("cairn_chunkserver_read_requests", "Read requests received");
        let checksum_errors =
            counter("cairn_chunkserver_checksum_errors", "Stored blocks that failed their checksum on read");
        let wire_checksum_errors =
            counter("cairn_chunkserver_wire_checksum_errors", "Received write messages whose CRC did not match");
        let replica_failures =
            counter("cairn_chunkserver_replica_failures", "Chain operations failed by a downstream replica");
        let scrub_bytes = counter("cairn_chunkserver_scrub_bytes", "Bytes read and verified by the scrubber");
        let scrub_passes = counter("cairn_chunkserver_scrub_passes", "Completed scrub passes over all chunks");
        let scrub_corrupt_chunks =
            counter("cairn_chunkserver_scrub_corrupt_chunks", "Chunks the scrubber found corrupt (per pass)");
        let copies = counter("cairn_chunkserver_copies", "Chunks installed from a peer");
        let mut gauge = |name: &str, help: &str| {
            let g: Gauge = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let registered = gauge("cairn_chunkserver_registered", "1 while registered in the coordinator");
        let stored_bytes = gauge("cairn_chunkserver_stored_bytes", "Sum of chunk lengths (logical bytes)");
        let free_bytes = gauge("cairn_chunkserver_free_bytes", "Bytes that may still be stored");
        let capacity_bytes = gauge("cairn_chunkserver_capacity_bytes", "Advertised capacity");
        Metrics {
            registry,
            write_bytes,
            write_streams,
            bulk_streams,
            write_failures,
            read_bytes,
            read_requests,
            checksum_errors,
            wire_checksum_errors,
            replica_failures,
            scrub_bytes,
            scrub_passes,
            scrub_corrupt_chunks,
            copies,
            registered,
            stored_bytes,
            free_bytes,
            capacity_bytes,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self, space: &Space) -> String {
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.stored_bytes.set(to_i64(space.stored_bytes()));
        self.free_bytes.set(to_i64(space.free_bytes()));
        self.capacity_bytes.set(to_i64(space.capacity_bytes()));
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encode metrics");
        }
        out
    }
}
