//! Multi-process test of the metaserver's chunk map: three coordinators, four chunkservers and
//! three metaservers from the dev launcher, driven the way the FUSE client drives them — chunk
//! entries from the metaserver, data through the chunkservers' gRPC service, commits back.
//!
//! One cluster, in phases:
//! 1. allocate + chain write + commit + read back (a write across a chunk boundary);
//! 2. truncate inside a chunk, then extend: the cut range reads zeros, the dropped chunk is
//!    deleted from every chunkserver;
//! 3. unlink: the file's chunks are deleted on the chunkservers; a chunk planted on a
//!    chunkserver under an id the map does not know is deleted by the orphan scan;
//! 4. SIGKILL a chunkserver holding replicas (replication factor 3 over 4 servers): without any
//!    client asking, every chunk gets back to 3 live replicas (Fsck says so) and the data reads
//!    back byte-identical from every replica; the restarted chunkserver's stale replicas are
//!    deleted;
//! 5. a chain write through a dead replica, the client's failure report, healing after close;
//! 6. the leader dies between committing a truncation and cutting the replicas;
//! 7. replicas ahead of the map (a bump whose map update never committed): the map catches up.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use cairn_chunkserver::client::ChunkClient;
use cairn_fs_client::dev::{bin_dir, Cluster, ClusterSpec, NodeId, NodeRef, Signal, MOUNT_BINARY};
use cairn_proto::chunk::WriteHeader;
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_service_client::MetaServiceClient;
use cairn_tests::{keep_for_diagnosis, metaserver_metric_sum, poll_until};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// Deletions run every 0.5 s on the leader; the orphan scan every 2 s (flag below).
const GC_TIMEOUT: Duration = Duration::from_secs(60);
/// Lease expiry (2 s TTL) + healing rounds + copies, on a loaded 2-core machine.
const HEAL_TIMEOUT: Duration = Duration::from_secs(120);
const ROOT: u64 = 1;
const MIB: usize = 1 << 20;
const CHUNK: u64 = 64 << 20;

/// ERROR lines other components may log when a chunkserver is killed or while the cluster
/// forms; the metaservers' own lines are judged by the test's outcome.
const ALLOWED_ERRORS: &[&str] =
    &[" ERROR openraft::", "Unreachable node", "timeout after ", "failed replica", "connection refused"];

type Meta = MetaServiceClient<Channel>;

fn root() -> Option<pb::Credentials> {
    Some(pb::Credentials { uid: 0, gid: 0, groups: Vec::new() })
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

fn cs(n: u64) -> NodeRef {
    NodeRef::chunkserver(NodeId(n))
}

struct Fixture {
    cluster: Cluster,
    dir: Option<tempfile::TempDir>,
    meta: Meta,
    session: u64,
    heartbeat: tokio::task::JoinHandle<()>,
}

fn meta_client(addr: std::net::SocketAddr) -> anyhow::Result<Meta> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(RPC_TIMEOUT)
        .connect_lazy();
    Ok(MetaServiceClient::new(channel))
}

/// Keeps the session alive (its handles make chunk allocation and commits legal).
fn heartbeat(meta: Meta, session: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Errors (a leader change) are retried at the next beat; the TTL is 60 s.
            let _ = meta.clone().heartbeat(pb::HeartbeatRequest { session }).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    })
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if let Some(dir) = self.dir.take() {
            eprintln!("test did not finish: cluster kept in {}", keep_for_diagnosis(dir));
        }
    }
}

/// A file as the test wrote it: its bytes (zeros in holes).
struct Model {
    ino: u64,
    bytes: Vec<u8>,
}

impl Fixture {
    async fn start() -> anyhow::Result<Fixture> {
        // A dead chunkserver leaves the registry within 2 s.
        Fixture::start_with_lease_ttl("2s").await
    }

    /// `start` with the chunkservers' registry lease TTL.
    async fn start_with_lease_ttl(lease_ttl: &str) -> anyhow::Result<Fixture> {
        let dir = tempfile::Builder::new().prefix("cairn-meta-chunks-").tempdir()?;
        let mut spec = ClusterSpec::new(dir.path());
        spec.chunkservers = 4;
        spec.metaservers = 3;
        spec.ready_timeout = READY_TIMEOUT;
        let calm = ["--heartbeat-interval", "100ms", "--election-timeout", "1s"];
        spec.coordinator_args = calm.iter().map(OsString::from).collect();
        spec.metaserver_args = calm.iter().chain(&["--orphan-scan-interval", "2s"]).map(OsString::from).collect();
        spec.chunkserver_args = ["--lease-ttl", lease_ttl].iter().map(OsString::from).collect();
        let cluster = match Cluster::start(spec).await {
            Ok(c) => c,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("start cluster (kept {})", keep_for_diagnosis(dir))));
            }
        };
        let meta = meta_client(cluster.node(NodeRef::metaserver(NodeId(2)))?.addrs.client)?;
        let request = pb::OpenSessionRequest {
            cred: root(),
            client_name: "metaserver_chunks".into(),
            host: "test".into(),
            pid: std::process::id(),
            ttl_ms: 60_000,
            time: None,
        };
        let session = poll_until("a session", READY_TIMEOUT, || {
            let mut m = meta.clone();
            let r = request.clone();
            async move {
                match m.open_session(r).await {
                    Ok(r) if r.get_ref().errno == 0 => Ok(r.get_ref().session),
                    Ok(r) => Err(format!("errno {}", r.get_ref().errno)),
                    Err(s) => Err(s.to_string()),
                }
            }
        })
        .await?;
        // Placement needs the registry: wait until every chunkserver is in the leader's view.
        poll_until("4 chunkservers in the metaserver's registry view", READY_TIMEOUT, || {
            let mut m = meta.clone();
            async move {
                let r = m.fsck(pb::FsckRequest { limit: 0 }).await.map_err(|s| s.to_string())?.into_inner();
                if r.chunkservers.len() == 4 {
                    Ok(())
                } else {
                    Err(format!("{} chunkservers", r.chunkservers.len()))
                }
            }
        })
        .await?;
        let beat = heartbeat(meta.clone(), session);
        Ok(Fixture { cluster, dir: Some(dir), meta, session, heartbeat: beat })
    }

    async fn create(&mut self, name: &str) -> anyhow::Result<Model> {
        let r = pb::CreateRequest {
            cred: root(),
            time: None,
            parent: ROOT,
            name: name.as_bytes().to_vec(),
            mode: 0o644,
            umask: 0,
            exclusive: true,
            session: self.session,
            open: Some(pb::OpenMode { read: true, write: true, truncate: false }),
            ..Default::default()
        };
        let r = self.meta.create(r).await?.into_inner();
        ensure!(r.errno == 0, "create {name}: errno {}", r.errno);
        Ok(Model { ino: r.attr.context("attr")?.ino, bytes: Vec::new() })
    }

    async fn open(&mut self, ino: u64) -> anyhow::Result<()> {
        let r = pb::OpenRequest {
            cred: root(),
            time: None,
            ino,
            session: self.session,
            open: Some(pb::OpenMode { read: true, write: true, truncate: false }),
        };
        let r = self.meta.open(r).await?.into_inner();
        ensure!(r.errno == 0, "open: errno {}", r.errno);
        Ok(())
    }

    async fn report(&mut self, ino: u64, entry: &pb::ChunkEntry, failed: &str) -> anyhow::Result<pb::ChunkResponse> {
        let r = pb::ReportChunkFailureRequest {
            cred: root(),
            time: None,
            ino,
            session: self.session,
            index: entry.index,
            chunk_id: entry.chunk_id,
            version: entry.version,
            failed_addresses: vec![failed.to_owned()],
            corrupt: false,
        };
        Ok(self.meta.report_chunk_failure(r).await?.into_inner())
    }

    async fn close(&mut self, ino: u64) -> anyhow::Result<()> {
        let r = pb::CloseRequest {
            cred: root(),
            time: None,
            ino,
            session: self.session,
            open: Some(pb::OpenMode { read: true, write: true, truncate: false }),
        };
        let r = self.meta.close(r).await?.into_inner();
        ensure!(r.errno == 0, "close: errno {}", r.errno);
        Ok(())
    }

    async fn allocate(&mut self, ino: u64, index: u64) -> anyhow::Result<pb::ChunkEntry> {
        let r = pb::AllocateChunkRequest { cred: root(), time: None, ino, session: self.session, index };
        let r = self.meta.allocate_chunk(r).await?.into_inner();
        ensure!(r.errno == 0, "allocate chunk {index} of {ino}: errno {}", r.errno);
        ensure!(r.chunk_size_bytes == CHUNK, "chunk size {}", r.chunk_size_bytes);
        r.chunk.context("chunk entry")
    }

    /// Writes `data` at `offset` as a client would: chunk by chunk through the chain, then one
    /// commit.
    async fn write(&mut self, file: &mut Model, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        let mut done = 0usize;
        let mut indexes = Vec::new();
        while done < data.len() {
            let at = offset + done as u64;
            let index = at / CHUNK;
            let within = at % CHUNK;
            let n = ((CHUNK - within) as usize).min(data.len() - done);
            let entry = self.allocate(file.ino, index).await?;
            ensure!(entry.replicas.len() == 3, "chunk {index} placed on {} servers", entry.replicas.len());
            let addrs: Vec<String> = entry.replicas.iter().map(|r| r.address.clone()).collect();
            let header = WriteHeader {
                chunk_id: entry.chunk_id,
                version: entry.version,
                create: entry.fresh,
                chunk_size_bytes: CHUNK,
                chain: addrs[1..].to_vec(),
                sync: true,
                stream_bytes: 0,
            };
            let primary = ChunkClient::connect_lazy(&addrs[0])?;
            let ack = primary.write(header, within, &data[done..done + n], MIB).await?;
            ensure!(ack.replicas == 3, "{} replicas acknowledged", ack.replicas);
            indexes.push(index);
            done += n;
        }
        let end = offset + data.len() as u64;
        let r = self.commit(file.ino, end, indexes).await?;
        ensure!(r.errno == 0, "commit: errno {}", r.errno);
        ensure!(r.attr.context("attr")?.size == (end).max(file.bytes.len() as u64), "size after commit");
        if file.bytes.len() < end as usize {
            file.bytes.resize(end as usize, 0);
        }
        file.bytes[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }

    /// CommitWrite of `size` after writes to `chunk_indexes`, by this fixture's session.
    async fn commit(&mut self, ino: u64, size: u64, chunk_indexes: Vec<u64>) -> anyhow::Result<pb::AttrResponse> {
        let r = pb::CommitWriteRequest {
            cred: root(),
            time: None,
            ino,
            session: self.session,
            size,
            chunk_indexes,
            then_set: None,
        };
        Ok(self.meta.commit_write(r).await?.into_inner())
    }

    async fn chunks(&mut self, ino: u64) -> anyhow::Result<pb::GetChunksResponse> {
        let r = pb::GetChunksRequest { cred: root(), ino, first_index: 0, count: 0 };
        let r = self.meta.get_chunks(r).await?.into_inner();
        ensure!(r.errno == 0, "get chunks of {ino}: errno {}", r.errno);
        Ok(r)
    }

    /// Reads `[offset, offset + len)` of the file from replica `which` of each chunk (cut at
    /// the file size; holes and bytes past a chunk's length are zeros).
    async fn read(&mut self, ino: u64, offset: u64, len: u64, which: usize) -> anyhow::Result<Vec<u8>> {
        let map = self.chunks(ino).await?;
        let end = (offset + len).min(map.size);
        let by_index: BTreeMap<u64, pb::ChunkEntry> = map.chunks.into_iter().map(|c| (c.index, c)).collect();
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let index = at / CHUNK;
            let within = at % CHUNK;
            let n = (CHUNK - within).min(end - at);
            match by_index.get(&index) {
                None => out.resize(out.len() + n as usize, 0),
                Some(entry) => {
                    let replica = entry.replicas.get(which).context("no such replica")?;
                    let client = ChunkClient::connect_lazy(&replica.address)?;
                    let mut data = client.read(entry.chunk_id, entry.version, within, n).await?;
                    data.resize(n as usize, 0);
                    out.extend_from_slice(&data);
                }
            }
            at += n;
        }
        Ok(out)
    }

    /// Checks the file reads back as the model, in the given ranges, from every replica.
    async fn verify(&mut self, file: &Model, ranges: &[(u64, u64)]) -> anyhow::Result<()> {
        for &(offset, len) in ranges {
            let want_end = (offset + len).min(file.bytes.len() as u64) as usize;
            let want = &file.bytes[offset as usize..want_end];
            for which in 0..3 {
                let got = self.read(file.ino, offset, len, which).await?;
                ensure!(got.len() == want.len(), "read {} bytes at {offset}, want {}", got.len(), want.len());
                if got != want {
                    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                    bail!("replica {which}: bytes differ at {} (range at {offset})", offset + first as u64);
                }
            }
        }
        Ok(())
    }

    async fn set_size(&mut self, file: &mut Model, size: u64) -> anyhow::Result<()> {
        let r = pb::SetAttrRequest {
            cred: root(),
            ino: file.ino,
            size: Some(size),
            through_write_handle: true,
            ..Default::default()
        };
        let r = self.meta.set_attr(r).await?.into_inner();
        ensure!(r.errno == 0, "truncate: errno {}", r.errno);
        file.bytes.resize(size as usize, 0);
        Ok(())
    }

    fn chunkserver_addrs(&self) -> anyhow::Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for id in self.cluster.chunkserver_ids() {
            if self.cluster.is_running(cs(id.0)) {
                out.push((id.0, self.cluster.node(cs(id.0))?.addrs.client.to_string()));
            }
        }
        Ok(out)
    }

    /// Which running chunkservers hold chunk `id`.
    async fn holders(&self, id: u64) -> anyhow::Result<Vec<u64>> {
        let mut out = Vec::new();
        for (n, addr) in self.chunkserver_addrs()? {
            match ChunkClient::connect_lazy(&addr)?.stat(id, false).await {
                Ok(_) => out.push(n),
                Err(e) if e.status().map(|s| s.code()) == Some(tonic::Code::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn wait_deleted(&self, id: u64) -> anyhow::Result<()> {
        poll_until(&format!("chunk {id} deleted on every chunkserver"), GC_TIMEOUT, || async move {
            match self.holders(id).await {
                Ok(h) if h.is_empty() => Ok(()),
                Ok(h) => Err(format!("still on chunkservers {h:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        metaserver_metric_sum(&self.cluster, name).await
    }

    /// The metaserver that says it leads.
    async fn meta_leader(&self) -> anyhow::Result<u64> {
        poll_until("a metaserver leader", READY_TIMEOUT, || async {
            for id in self.cluster.metaserver_ids() {
                let Ok(node) = self.cluster.node(NodeRef::metaserver(id)) else { continue };
                let Ok(r) = cairn_fs_client::http::get(node.addrs.http, "/status", Duration::from_secs(5)).await else {
                    continue;
                };
                let Ok(status) = serde_json::from_slice::<serde_json::Value>(&r.body) else { continue };
                if status["state"] == "Leader" {
                    return Ok(id.0);
                }
            }
            Err("no metaserver says it leads".to_string())
        })
        .await
    }

    fn finish(self) -> anyhow::Result<()> {
        self.finish_allowing(&[])
    }

    /// `finish`, also allowing ERROR lines that contain one of `more`.
    fn finish_allowing(mut self, more: &[&str]) -> anyhow::Result<()> {
        let allowed: Vec<&str> = ALLOWED_ERRORS.iter().chain(more).copied().collect();
        let found = self.cluster.unexpected_errors(&allowed)?;
        if !found.is_empty() {
            let lines: Vec<String> = found.iter().take(20).map(ToString::to_string).collect();
            bail!("unexpected ERROR lines:\n{}", lines.join("\n"));
        }
        self.dir.take();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_map_gc_and_healing() -> anyhow::Result<()> {
    let mut fx = Fixture::start().await?;

    // 1. A write across the boundary of chunks 0 and 1, and one at the start.
    let mut f = fx.create("f").await?;
    let head = random_bytes(100_000, 1);
    let across = random_bytes(MIB, 2);
    fx.write(&mut f, 0, &head).await?;
    fx.write(&mut f, CHUNK - (MIB as u64 / 2), &across).await?;
    let map = fx.chunks(f.ino).await?;
    ensure!(map.size == CHUNK + MIB as u64 / 2 && map.chunks.len() == 2, "map after writes: {map:?}");
    ensure!(map.chunks.iter().all(|c| !c.fresh && c.replicas.len() == 3), "committed chunks: {map:?}");
    fx.verify(&f, &[(0, 200_000), (CHUNK - MIB as u64, 2 * MIB as u64)]).await?;
    let statfs = fx.meta.stat_fs(pb::StatFsRequest { cred: root() }).await?.into_inner();
    ensure!(statfs.errno == 0 && statfs.bytes_used == map.size, "statfs: {statfs:?}");
    ensure!(statfs.chunkserver_free_bytes > 0, "statfs: chunkserver capacity {statfs:?}");
    ensure!(statfs.chunkserver_capacity_bytes >= statfs.chunkserver_free_bytes, "statfs: {statfs:?}");
    eprintln!("phase 1: write + commit + read back ok");

    // 2. Truncate inside chunk 0 (chunk 1 goes), then extend by a write: zeros in between.
    let dropped = map.chunks[1].chunk_id;
    fx.set_size(&mut f, 50_000).await?;
    let after = fx.chunks(f.ino).await?;
    ensure!(after.size == 50_000 && after.chunks.len() == 1, "map after truncate: {after:?}");
    ensure!(after.chunks[0].version > map.chunks[0].version, "the cut chunk got a new version");
    let tail = random_bytes(10, 3);
    fx.write(&mut f, 200_000, &tail).await?;
    fx.verify(&f, &[(0, 200_010)]).await?;
    ensure!(f.bytes[50_000..200_000].iter().all(|b| *b == 0), "model: the cut range is zeros");
    fx.wait_deleted(dropped).await?;
    eprintln!("phase 2: truncate + extend reads zeros; the dropped chunk was deleted");

    // 3. Unlink: chunks deleted. Then an orphan planted under that id is deleted by the scan.
    let mut g = fx.create("g").await?;
    fx.write(&mut g, 0, &random_bytes(300_000, 4)).await?;
    let g_chunk = fx.chunks(g.ino).await?.chunks[0].chunk_id;
    ensure!(fx.holders(g_chunk).await?.len() == 3, "g's chunk on 3 servers");
    fx.close(g.ino).await?;
    let r = fx.meta.unlink(pb::RemoveRequest { cred: root(), time: None, parent: ROOT, name: b"g".to_vec() }).await?;
    ensure!(r.get_ref().errno == 0, "unlink: errno {}", r.get_ref().errno);
    fx.wait_deleted(g_chunk).await?;
    let (_, addr) = fx.chunkserver_addrs()?[0].clone();
    let plant = WriteHeader {
        chunk_id: g_chunk,
        version: 1,
        create: true,
        chunk_size_bytes: CHUNK,
        chain: vec![],
        sync: true,
        stream_bytes: 0,
    };
    ChunkClient::connect_lazy(&addr)?.write(plant, 0, b"orphan", MIB).await?;
    ensure!(!fx.holders(g_chunk).await?.is_empty(), "orphan planted");
    fx.wait_deleted(g_chunk).await?;
    eprintln!("phase 3: unlinked file's chunks and a planted orphan were deleted");

    // 4. Healing. More data first: a second file of three chunks' worth of sparse writes.
    let mut h = fx.create("h").await?;
    for i in 0..3u64 {
        fx.write(&mut h, i * CHUNK + 4096 * i, &random_bytes(256 * 1024 + i as usize, 10 + i)).await?;
    }
    // Healing leaves files open for writing alone: close every handle.
    fx.close(f.ino).await?;
    fx.close(h.ino).await?;
    let victim_addr = fx.chunks(h.ino).await?.chunks[0].replicas[0].address.clone();
    let victim = fx
        .chunkserver_addrs()?
        .into_iter()
        .find(|(_, a)| *a == victim_addr)
        .map(|(n, _)| n)
        .context("victim chunkserver")?;
    eprintln!("phase 4: SIGKILL chunkserver-{victim} ({victim_addr})");
    fx.cluster.kill(cs(victim), Signal::SIGKILL)?;
    let meta = fx.meta.clone();
    let report = poll_until("every chunk back to 3 live replicas", HEAL_TIMEOUT, || {
        let mut m = meta.clone();
        let victim_addr = victim_addr.clone();
        async move {
            let r = m.fsck(pb::FsckRequest { limit: 10 }).await.map_err(|s| s.to_string())?.into_inner();
            if r.chunkservers.iter().any(|c| c.address == victim_addr) {
                return Err("the killed chunkserver is still registered".to_string());
            }
            if r.under_replicated_count > 0 || r.unavailable_count > 0 {
                return Err(format!(
                    "{} under-replicated, {} unavailable",
                    r.under_replicated_count, r.unavailable_count
                ));
            }
            Ok(r)
        }
    })
    .await?;
    ensure!(report.chunks == 4, "chunks in the map (f: 1, h: 3): {}", report.chunks);
    for file in [&f, &h] {
        for c in fx.chunks(file.ino).await?.chunks {
            ensure!(c.replicas.len() == 3, "chunk {} has {} replicas", c.chunk_id, c.replicas.len());
            ensure!(c.replicas.iter().all(|r| r.address != victim_addr), "chunk {} lists the dead server", c.chunk_id);
        }
    }
    fx.verify(&f, &[(0, 200_010)]).await?;
    let h_len = h.bytes.len() as u64;
    fx.verify(&h, &[(0, 300_000), (CHUNK, 300_000), (2 * CHUNK, h_len - 2 * CHUNK)]).await?;
    eprintln!("phase 4: healed; data identical on every replica");
    // The operator's view of the same state: `cairn fsck` says healthy and exits 0.
    let fsck = std::process::Command::new(bin_dir()?.join(MOUNT_BINARY))
        .args(["fsck", "--limit", "5", "--metaserver", &fx.cluster.metaserver_endpoints().join(",")])
        .output()?;
    let text = String::from_utf8_lossy(&fsck.stdout);
    ensure!(
        fsck.status.success()
            && text.contains("chunks: 4\n")
            && text.contains("live chunkservers: 3 ")
            && text.contains("status: healthy\n"),
        "cairn fsck: {}\n{text}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stderr)
    );
    let healed = fx.metric_sum("cairn_metaserver_chunk_events_total{kind=\"healed\"}").await?;
    ensure!(healed >= 1.0, "healed chunks in the metaservers' metrics: {healed}");
    let gc = fx.metric_sum("cairn_metaserver_chunk_events_total{kind=\"gc_deleted\"}").await?;
    ensure!(gc >= 2.0, "deleted chunks in the metaservers' metrics: {gc}");

    // The killed chunkserver returns with stale replicas: the orphan scan deletes them.
    fx.cluster.restart(cs(victim)).await?;
    let mut current: BTreeMap<u64, u64> = BTreeMap::new();
    for file in [&f, &h] {
        for c in fx.chunks(file.ino).await?.chunks {
            current.insert(c.chunk_id, c.version);
        }
    }
    let returning = ChunkClient::connect_lazy(&victim_addr)?;
    poll_until("the returning chunkserver holds no stale replica", GC_TIMEOUT, || {
        let returning = returning.clone();
        let current = current.clone();
        async move {
            let list = returning.list(0, 0).await.map_err(|e| e.to_string())?;
            let stale: Vec<(u64, u64)> = list
                .chunks
                .iter()
                .filter(|c| current.get(&c.chunk_id) != Some(&c.version))
                .map(|c| (c.chunk_id, c.version))
                .collect();
            if stale.is_empty() {
                Ok(())
            } else {
                Err(format!("stale (id, version): {stale:?}"))
            }
        }
    })
    .await?;
    eprintln!("phase 4: the returning chunkserver's stale replicas were deleted");

    // 5. A chain write fails on a dead replica while the file is open for writing: the client
    //    reports it, gets the chunk at a new version without the dead replica, writes again.
    //    Healing then restores the third replica while the file is still open.
    fx.open(h.ino).await?;
    let entry = fx.chunks(h.ino).await?.chunks[1].clone();
    let dead_addr = entry.replicas[1].address.clone();
    let dead =
        fx.chunkserver_addrs()?.into_iter().find(|(_, a)| *a == dead_addr).map(|(n, _)| n).context("second victim")?;
    eprintln!("phase 5: SIGKILL chunkserver-{dead} ({dead_addr}), the second replica of chunk {}", entry.chunk_id);
    fx.cluster.kill(cs(dead), Signal::SIGKILL)?;
    let addrs: Vec<String> = entry.replicas.iter().map(|r| r.address.clone()).collect();
    let header = |e: &pb::ChunkEntry, chain: Vec<String>| WriteHeader {
        chunk_id: e.chunk_id,
        version: e.version,
        create: false,
        chunk_size_bytes: CHUNK,
        chain,
        sync: true,
        stream_bytes: 0,
    };
    let patch = random_bytes(4096, 20);
    let failed = ChunkClient::connect_lazy(&addrs[0])?.write(header(&entry, addrs[1..].to_vec()), 0, &patch, MIB).await;
    let status = failed.err().context("a chain write through a dead replica must fail")?;
    let named = status.status().and_then(cairn_chunkserver::client::failed_replica);
    ensure!(named.as_deref() == Some(dead_addr.as_str()), "the error names {named:?}, not {dead_addr}");
    let repaired = fx.report(h.ino, &entry, &dead_addr).await?;
    ensure!(repaired.errno == 0, "report: errno {}", repaired.errno);
    let repaired = repaired.chunk.context("repaired entry")?;
    ensure!(repaired.version == entry.version + 1, "version {} after the report", repaired.version);
    let kept: Vec<String> = repaired.replicas.iter().map(|r| r.address.clone()).collect();
    ensure!(kept.len() == 2 && !kept.contains(&dead_addr), "replicas after the report: {kept:?}");
    let stale = fx.report(h.ino, &entry, &dead_addr).await?;
    ensure!(stale.errno == 116, "a report at the old version: errno {} (want ESTALE)", stale.errno);
    let ack = ChunkClient::connect_lazy(&kept[0])?.write(header(&repaired, kept[1..].to_vec()), 0, &patch, MIB).await?;
    ensure!(ack.replicas == 2, "{} replicas acknowledged", ack.replicas);
    ensure!(fx.commit(h.ino, CHUNK + patch.len() as u64, vec![1]).await?.errno == 0, "commit after repair");
    h.bytes[CHUNK as usize..CHUNK as usize + patch.len()].copy_from_slice(&patch);
    // Still open for writing: healing restores 3 replicas anyway (once the server's lease is
    // gone), at a new version, and the writer's chain at the repaired version is refused.
    poll_until("healing while the file is open for writing", HEAL_TIMEOUT, || {
        let mut m = fx.meta.clone();
        let dead_addr = dead_addr.clone();
        async move {
            let r = m.fsck(pb::FsckRequest { limit: 10 }).await.map_err(|s| s.to_string())?.into_inner();
            if r.chunkservers.iter().any(|c| c.address == dead_addr) {
                return Err("the dead server is still registered".to_string());
            }
            if r.under_replicated_count > 0 || r.unavailable_count > 0 {
                return Err(format!(
                    "{} under-replicated, {} unavailable",
                    r.under_replicated_count, r.unavailable_count
                ));
            }
            Ok(())
        }
    })
    .await?;
    let healed = fx.chunks(h.ino).await?.chunks[1].clone();
    ensure!(healed.version > repaired.version && healed.replicas.len() == 3, "healed entry: {healed:?}");
    let late = random_bytes(4096, 21);
    let refused =
        ChunkClient::connect_lazy(&kept[0])?.write(header(&repaired, kept[1..].to_vec()), 8192, &late, MIB).await;
    let code = refused.err().context("a write at the pre-heal version must be refused")?.status().map(|s| s.code());
    ensure!(code == Some(tonic::Code::FailedPrecondition), "the refused write answered {code:?}");
    // The writer fetches the entry again and writes through the healed chain.
    let current = fx.allocate(h.ino, 1).await?;
    ensure!(current == healed, "AllocateChunk answers the healed entry: {current:?}");
    let chain: Vec<String> = current.replicas.iter().map(|r| r.address.clone()).collect();
    let ack =
        ChunkClient::connect_lazy(&chain[0])?.write(header(&current, chain[1..].to_vec()), 8192, &late, MIB).await?;
    ensure!(ack.replicas == 3, "{} replicas acknowledged the write after healing", ack.replicas);
    ensure!(fx.commit(h.ino, h.bytes.len() as u64, vec![1]).await?.errno == 0, "commit after healing");
    h.bytes[CHUNK as usize + 8192..CHUNK as usize + 8192 + late.len()].copy_from_slice(&late);
    fx.close(h.ino).await?;
    fx.verify(&h, &[(0, 300_000), (CHUNK, 300_000), (2 * CHUNK, h_len - 2 * CHUNK)]).await?;
    eprintln!("phase 5: failure report, rewrite, healing while open, rewrite; data identical on every replica");

    // 6. The leader dies between committing a truncation and cutting the replicas (they are
    //    frozen, so it cannot cut them): its successor does it, and an extension never shows
    //    the old bytes.
    fx.open(f.ino).await?;
    fx.write(&mut f, 100_000, &random_bytes(100_000, 30)).await?;
    let before = fx.chunks(f.ino).await?.chunks[0].clone();
    let frozen: Vec<u64> = fx
        .chunkserver_addrs()?
        .into_iter()
        .filter(|(_, a)| before.replicas.iter().any(|r| r.address == *a))
        .map(|(n, _)| n)
        .collect();
    ensure!(frozen.len() == 3, "replicas of f's chunk on {frozen:?}");
    let leader = fx.meta_leader().await?;
    let follower =
        fx.cluster.metaserver_ids().into_iter().map(|id| id.0).find(|id| *id != leader).context("follower")?;
    fx.meta = meta_client(fx.cluster.node(NodeRef::metaserver(NodeId(follower)))?.addrs.client)?;
    for &n in &frozen {
        fx.cluster.kill(cs(n), Signal::SIGSTOP)?;
    }
    eprintln!("phase 6: froze chunkservers {frozen:?}; truncating through metaserver-{follower}");
    fx.set_size(&mut f, 120_000).await?;
    eprintln!("phase 6: truncation committed; SIGKILL metaserver-{leader} (the leader)");
    fx.cluster.kill(NodeRef::metaserver(NodeId(leader)), Signal::SIGKILL)?;
    let pending = fx.chunks(f.ino).await?.chunks[0].clone();
    ensure!(pending.version == before.version + 1, "the map's version moved on at once: {pending:?}");
    ensure!(pending.replicas.is_empty(), "frozen servers' leases expired: no live replica listed: {pending:?}");
    for &n in &frozen {
        fx.cluster.kill(cs(n), Signal::SIGCONT)?;
    }
    // Writes at the new version succeed once the new leader has cut the replicas.
    let tail = random_bytes(10, 31);
    let mut attempts = 0;
    poll_until("a write after the new leader cut the chunk", HEAL_TIMEOUT, || {
        attempts += 1;
        // The frozen servers come back under the same addresses (not yet live again for the
        // metaserver, maybe): write straight to them at the map's new version.
        let addrs: Vec<String> = before.replicas.iter().map(|r| r.address.clone()).collect();
        let version = pending.version;
        let chunk_id = pending.chunk_id;
        let tail = tail.clone();
        async move {
            let header = WriteHeader {
                chunk_id,
                version,
                create: false,
                chunk_size_bytes: CHUNK,
                chain: addrs[1..].to_vec(),
                sync: true,
                stream_bytes: 0,
            };
            let client = ChunkClient::connect_lazy(&addrs[0]).map_err(|e| e.to_string())?;
            client.write(header, 300_000, &tail, MIB).await.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await?;
    eprintln!("phase 6: the new leader cut the replicas ({attempts} write attempts)");
    ensure!(fx.commit(f.ino, 300_010, vec![0]).await?.errno == 0, "commit after the cut");
    f.bytes.resize(300_010, 0);
    f.bytes[300_000..].copy_from_slice(&tail);
    ensure!(f.bytes[120_000..300_000].iter().all(|b| *b == 0), "model: the cut range is zeros");
    fx.verify(&f, &[(0, 300_010)]).await?;
    fx.close(f.ino).await?;
    fx.cluster.restart(NodeRef::metaserver(NodeId(leader))).await?;
    eprintln!("phase 6: the cut range reads zeros on every replica");

    // 7. A version bump reached the chunkservers but its map update never committed (a leader
    //    died in between) and nothing bumps the chunk again: two of its three replicas are one
    //    version ahead of the map. Without any client asking, the leader's orphan scan catches
    //    the map up — bringing the third replica along — and the data reads back at it.
    // First the frozen chunkservers of phase 6 back in the registry, every chunk at 3 replicas.
    poll_until("3 live chunkservers and every chunk at 3 live replicas", HEAL_TIMEOUT, || {
        let mut m = fx.meta.clone();
        async move {
            let r = m.fsck(pb::FsckRequest { limit: 10 }).await.map_err(|s| s.to_string())?.into_inner();
            if r.chunkservers.len() != 3 || r.under_replicated_count > 0 || r.unavailable_count > 0 {
                return Err(format!(
                    "{} chunkservers, {} under-replicated, {} unavailable",
                    r.chunkservers.len(),
                    r.under_replicated_count,
                    r.unavailable_count
                ));
            }
            Ok(())
        }
    })
    .await?;
    let entry = fx.chunks(h.ino).await?.chunks[0].clone();
    ensure!(entry.replicas.len() == 3, "h's chunk 0 before the bump: {entry:?}");
    let ahead = entry.version + 1;
    for replica in &entry.replicas[..2] {
        ChunkClient::connect_lazy(&replica.address)?.update_version(entry.chunk_id, entry.version, ahead).await?;
    }
    let stale = ChunkClient::connect_lazy(&entry.replicas[0].address)?.read(entry.chunk_id, entry.version, 0, 10).await;
    ensure!(stale.is_err(), "a read at the map's version from a replica ahead of it must fail");
    eprintln!("phase 7: chunk {} at version {ahead} on 2 replicas, {} in the map", entry.chunk_id, entry.version);
    let caught_up = poll_until("the map caught up with its replicas", GC_TIMEOUT, || {
        let mut m = fx.meta.clone();
        let ino = h.ino;
        async move {
            let r = pb::GetChunksRequest { cred: root(), ino, first_index: 0, count: 1 };
            let r = m.get_chunks(r).await.map_err(|s| s.to_string())?.into_inner();
            match r.chunks.first() {
                Some(c) if c.version == ahead => Ok(c.clone()),
                other => Err(format!("map entry {other:?}")),
            }
        }
    })
    .await?;
    let listed: Vec<&str> = caught_up.replicas.iter().map(|r| r.address.as_str()).collect();
    let before: Vec<&str> = entry.replicas.iter().map(|r| r.address.as_str()).collect();
    ensure!(listed == before, "the caught-up map keeps every replica: {listed:?}, was {before:?}");
    fx.verify(&h, &[(0, 300_000)]).await?;
    eprintln!("phase 7: the map caught up to version {ahead}; data identical on every replica");
    // A reader that meets replicas ahead reports the chunk naming no replica: by the answer,
    // the map has caught up (by this report, or by a scan that came first: then ESTALE).
    let entry = fx.chunks(h.ino).await?.chunks[1].clone();
    let ahead = entry.version + 1;
    for replica in &entry.replicas {
        ChunkClient::connect_lazy(&replica.address)?.update_version(entry.chunk_id, entry.version, ahead).await?;
    }
    let r = pb::ReportChunkFailureRequest {
        cred: root(),
        time: None,
        ino: h.ino,
        session: fx.session,
        index: entry.index,
        chunk_id: entry.chunk_id,
        version: entry.version,
        failed_addresses: Vec::new(),
        corrupt: false,
    };
    let r = fx.meta.report_chunk_failure(r).await?.into_inner();
    ensure!(r.errno == 0 || r.errno == 116, "report naming no replica: errno {}", r.errno);
    let now = fx.chunks(h.ino).await?.chunks[1].clone();
    ensure!(now.version == ahead && now.replicas.len() == 3, "after the report: {now:?}, want version {ahead}");
    if r.errno == 0 {
        ensure!(r.chunk.as_ref() == Some(&now), "the report answers the caught-up entry: {:?}", r.chunk);
    }
    fx.verify(&h, &[(CHUNK, 300_000)]).await?;
    // Naming no replica with nothing ahead changes nothing (no bump of its own).
    let again = pb::ReportChunkFailureRequest {
        cred: root(),
        time: None,
        ino: h.ino,
        session: fx.session,
        index: now.index,
        chunk_id: now.chunk_id,
        version: now.version,
        failed_addresses: Vec::new(),
        corrupt: false,
    };
    let again = fx.meta.report_chunk_failure(again).await?.into_inner();
    ensure!(again.errno == 0 && again.chunk.as_ref() == Some(&now), "a report with nothing ahead: {again:?}");
    eprintln!("phase 7: a report naming no replica caught the map up to version {ahead} (errno {})", r.errno);
    fx.finish()
}

/// A replica its chunkserver found corrupt (a read failed a block's checksum) is dropped from the
/// chunk's set by the orphan scan and deleted, and healing puts a verified copy of a good replica
/// in its place, without any client asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_replica_is_dropped_and_replaced() -> anyhow::Result<()> {
    // A long lease: the victim's restart (to corrupt its disk) must not look like its death,
    // which would heal the chunk elsewhere before the corruption is ever seen.
    let mut fx = Fixture::start_with_lease_ttl("60s").await?;
    let mut f = fx.create("c").await?;
    fx.write(&mut f, 0, &random_bytes(3 * MIB, 7)).await?;
    // Closed: chunks of files open for writing are not healed.
    fx.close(f.ino).await?;
    let entry = fx.chunks(f.ino).await?.chunks[0].clone();
    let victim_addr = entry.replicas[1].address.clone();
    let victim = fx.chunkserver_addrs()?.into_iter().find(|(_, a)| *a == victim_addr).context("victim")?.0;

    // Flip a byte of block 2 on the victim's disk (through RocksDB, while it is down). Killed,
    // not stopped: a clean stop withdraws its registry entry, which would look like its death.
    fx.cluster.kill(cs(victim), Signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + RPC_TIMEOUT;
    while fx.cluster.is_running(cs(victim)) {
        ensure!(tokio::time::Instant::now() < deadline, "chunkserver {victim} still running after SIGKILL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let data_dir = fx.cluster.node(cs(victim))?.data_dir;
    cairn_chunkserver::debug::corrupt_block(&data_dir, cairn_chunkserver::ids::ChunkId(entry.chunk_id), 2)?;
    fx.cluster.restart(cs(victim)).await?;
    fx.cluster.wait_node_ready(cs(victim), READY_TIMEOUT).await?;

    // A read there fails its checksum; the chunkserver flags the replica as corrupt. Its
    // scrubber's first pass after the restart may have found the corruption first, and the
    // orphan scan (every 2 s here) may already have deleted the flagged replica: then the read
    // finds no chunk at all, which is as good (the metric below shows why it went).
    let victim_client = ChunkClient::connect_lazy(&victim_addr)?;
    match victim_client.read(entry.chunk_id, entry.version, 0, 3 * MIB as u64).await {
        Ok(data) => bail!("read of the corrupt replica returned {} bytes", data.len()),
        Err(err) => {
            let code = err.status().map(|s| s.code());
            ensure!(
                matches!(code, Some(tonic::Code::DataLoss | tonic::Code::NotFound)),
                "read of the corrupt replica: {err}"
            );
        }
    }

    let deadline = tokio::time::Instant::now() + HEAL_TIMEOUT;
    loop {
        let now = fx.chunks(f.ino).await?.chunks[0].clone();
        let flagged = victim_client.list(0, 0).await?.chunks.iter().any(|c| c.chunk_id == entry.chunk_id && c.corrupt);
        if now.replicas.len() == 3 && now.version > entry.version && !flagged {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "not healed: {now:?}, still flagged corrupt: {flagged}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fx.verify(&f, &[(0, 3 * MIB as u64)]).await?;
    let dropped = fx.metric_sum("cairn_metaserver_chunk_events_total{kind=\"corrupt_replica_dropped\"}").await?;
    ensure!(dropped >= 1.0, "corrupt_replica_dropped events: {dropped}");
    fx.finish_allowing(&["corrupt chunk replica"])
}
