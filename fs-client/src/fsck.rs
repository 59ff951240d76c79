//! `cairn fsck`: asks the metaservers which chunks are under-replicated, unavailable or orphaned,
//! and prints the answer. Any metaserver answers (followers forward the question to the leader,
//! which walks the chunk map and knows the orphan scan's findings).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use cairn_proto::meta::meta_service_client::MetaServiceClient;
use cairn_proto::meta::{ChunkReplica, ChunkserverSpace, FsckChunk, FsckRequest, FsckResponse};
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
    render_space(&mut out, report);
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

/// Each live chunkserver's advertised space, and how many can take a new chunk: a full one
/// makes writes fail with ENOSPC (or new chunks start under-replicated) long before any chunk
/// is lost, so fsck says so.
fn render_space(out: &mut String, report: &FsckResponse) {
    if report.space.is_empty() {
        return;
    }
    let roomy = report.space.iter().filter(|s| has_room(s, report.chunk_size_bytes)).count();
    let _ = writeln!(
        out,
        "chunkservers with room for a new chunk: {roomy} of {} (chunk size {})",
        report.space.len(),
        size_label(report.chunk_size_bytes)
    );
    for (server, space) in report.chunkservers.iter().zip(&report.space) {
        let full = if has_room(space, report.chunk_size_bytes) { "" } else { "  FULL: no new chunks here" };
        let _ = writeln!(
            out,
            "  {}: {} free of {}{full}",
            replica_label(server),
            size_label(space.free_bytes),
            size_label(space.capacity_bytes)
        );
    }
}

fn has_room(space: &ChunkserverSpace, chunk_size_bytes: u64) -> bool {
    space.free_bytes >= chunk_size_bytes
}

/// Bytes in the largest binary unit that keeps the figure at or above 1 (one decimal).
fn size_label(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
    fn render_flags_chunkservers_without_room() {
        let space = |id, free_bytes| ChunkserverSpace { chunkserver_id: id, capacity_bytes: 96 << 20, free_bytes };
        let report = FsckResponse {
            chunkservers: vec![replica(1), replica(2)],
            space: vec![space(1, 64 << 20), space(2, 10 << 20)],
            chunk_size_bytes: 64 << 20,
            ..Default::default()
        };
        let text = render(&report);
        assert!(text.contains("chunkservers with room for a new chunk: 1 of 2 (chunk size 64.0 MiB)\n"), "{text}");
        assert!(text.contains("  1@127.0.0.1:7001: 64.0 MiB free of 96.0 MiB\n"), "{text}");
        assert!(text.contains("  2@127.0.0.1:7002: 10.0 MiB free of 96.0 MiB  FULL: no new chunks here\n"), "{text}");
        // Space alone does not make the chunks unhealthy: the exit status is about replicas.
        assert!(healthy(&report) && text.ends_with("status: healthy\n"), "{text}");
        assert_eq!(
            (size_label(0), size_label(1536), size_label(3 << 40)),
            ("0 B".into(), "1.5 KiB".into(), "3.0 TiB".into())
        );
    }

    #[test]
    fn orphans_alone_leave_the_filesystem_healthy() {
        let orphan = FsckChunk { chunk_id: 3, ino: 0, index: 0, version: 1, replicas: vec![replica(2)] };
        let report = FsckResponse { chunks: 1, orphan_count: 1, orphans: vec![orphan], ..Default::default() };
        assert!(healthy(&report));
        assert!(render(&report).ends_with("status: healthy\n"));
    }
}
