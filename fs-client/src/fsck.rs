//! `cairn fsck`: asks the metaservers which chunks are under-replicated, unavailable or orphaned,
//! and prints the answer. Any metaserver answers (followers forward the question to the leader,
//! which walks the chunk map and knows the orphan scan's findings).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use cairn_proto::meta::meta_service_client::MetaServiceClient;
use cairn_proto::meta::{ChunkReplica, FsckChunk, FsckRequest, FsckResponse};
use tonic::transport::Endpoint;

use crate::bench::kv::endpoint_uri;
use crate::limits::MOUNT_CONNECT_TIMEOUT;

/// Asks the metaservers in turn until one answers; the error names every endpoint's failure.
pub async fn query(endpoints: &[String], limit: u32, timeout: Duration) -> anyhow::Result<FsckResponse> {
    anyhow::ensure!(!endpoints.is_empty(), "no metaserver endpoint given");
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match ask(endpoint, limit, timeout).await {
            Ok(answer) => return Ok(answer),
            Err(e) => failures.push(format!("{endpoint}: {e:#}")),
        }
    }
    anyhow::bail!("no metaserver answered the fsck query ({})", failures.join("; "))
}

async fn ask(endpoint: &str, limit: u32, timeout: Duration) -> anyhow::Result<FsckResponse> {
    let channel = Endpoint::from_shared(endpoint_uri(endpoint))
        .context("invalid endpoint")?
        .connect_timeout(MOUNT_CONNECT_TIMEOUT)
        .timeout(timeout)
        .connect()
        .await
        .context("connect")?;
    let answer = MetaServiceClient::new(channel).fsck(FsckRequest { limit }).await.context("fsck call")?.into_inner();
    anyhow::ensure!(answer.errno == 0, "the metaserver answered errno {}", answer.errno);
    Ok(answer)
}

/// Whether every chunk has all its replicas (orphans are only awaiting deletion).
pub fn healthy(report: &FsckResponse) -> bool {
    report.under_replicated_count == 0 && report.unavailable_count == 0
}

/// The report as text: counts first, then the chunks listed in each category.
pub fn render(report: &FsckResponse) -> String {
    let mut out = String::new();
    let servers: Vec<String> = report.chunkservers.iter().map(replica_label).collect();
    let _ = writeln!(out, "chunks: {}", report.chunks);
    let _ = writeln!(out, "live chunkservers: {} ({})", servers.len(), servers.join(", "));
    let categories = [
        ("unavailable (no live replica)", report.unavailable_count, &report.unavailable),
        ("under-replicated", report.under_replicated_count, &report.under_replicated),
        ("orphans (awaiting deletion)", report.orphan_count, &report.orphans),
    ];
    for (name, count, listed) in categories {
        let _ = writeln!(out, "{name}: {count}");
        for c in listed {
            let _ = writeln!(out, "  {}", chunk_line(c));
        }
        if (listed.len() as u64) < count {
            let _ = writeln!(out, "  ... {} more (raise --limit)", count - listed.len() as u64);
        }
    }
    let _ = writeln!(out, "status: {}", if healthy(report) { "healthy" } else { "DEGRADED" });
    out
}

/// `ID@ADDRESS` of a chunkserver.
fn replica_label(r: &ChunkReplica) -> String {
    format!("{}@{}", r.chunkserver_id, r.address)
}

fn chunk_line(c: &FsckChunk) -> String {
    let replicas: Vec<String> = c.replicas.iter().map(replica_label).collect();
    let replicas = if replicas.is_empty() { "none".to_owned() } else { replicas.join(",") };
    format!("chunk={} ino={} index={} version={} live_replicas={replicas}", c.chunk_id, c.ino, c.index, c.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: u64) -> ChunkReplica {
        ChunkReplica { chunkserver_id: id, address: format!("127.0.0.1:{}", 7000 + id) }
    }

    #[test]
    fn render_lists_counts_chunks_and_what_was_left_out() {
        let lost = FsckChunk { chunk_id: 9, ino: 5, index: 0, version: 3, replicas: vec![] };
        let thin = FsckChunk { chunk_id: 10, ino: 6, index: 1, version: 2, replicas: vec![replica(1)] };
        let report = FsckResponse {
            chunks: 12,
            unavailable_count: 1,
            under_replicated_count: 4,
            unavailable: vec![lost],
            under_replicated: vec![thin],
            chunkservers: vec![replica(1), replica(2)],
            ..Default::default()
        };
        let text = render(&report);
        assert!(!healthy(&report));
        assert!(text.contains("chunks: 12\n"), "{text}");
        assert!(text.contains("live chunkservers: 2 (1@127.0.0.1:7001, 2@127.0.0.1:7002)\n"), "{text}");
        assert!(
            text.contains("unavailable (no live replica): 1\n  chunk=9 ino=5 index=0 version=3 live_replicas=none\n")
        );
        assert!(
            text.contains("under-replicated: 4\n  chunk=10 ino=6 index=1 version=2 live_replicas=1@127.0.0.1:7001\n")
        );
        assert!(text.contains("  ... 3 more (raise --limit)\n"), "{text}");
        assert!(text.contains("orphans (awaiting deletion): 0\n"), "{text}");
        assert!(text.ends_with("status: DEGRADED\n"), "{text}");
    }

    #[test]
    fn orphans_alone_leave_the_filesystem_healthy() {
        let orphan = FsckChunk { chunk_id: 3, ino: 0, index: 0, version: 1, replicas: vec![replica(2)] };
        let report = FsckResponse { chunks: 1, orphan_count: 1, orphans: vec![orphan], ..Default::default() };
        assert!(healthy(&report));
        assert!(render(&report).ends_with("status: healthy\n"));
    }
}
