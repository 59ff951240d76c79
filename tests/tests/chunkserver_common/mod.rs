//! Fixtures shared by the chunkserver multi-process tests (`chunkserver_*.rs`): a dev cluster of
//! three coordinators and three chunkservers (no metaservers) started through the same launcher
//! as `cairn dev up`, registry and HTTP probes, and a polling helper.
//!
//! A test ends with [`ChunkCluster::finish`], which fails on unexpected ERROR lines in any
//! server log. A test that fails before that keeps its cluster directory for inspection.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_chunkserver::client::ChunkClient;
use cairn_chunkserver::registry::{RegistryEntry, REGISTRY_PREFIX};
use cairn_fs_client::dev::{Cluster, ClusterSpec, NodeId, NodeRef};
use cairn_tests::keep_for_diagnosis;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tonic::Code;

pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
pub const MIB: usize = 1 << 20;

/// ERROR lines of the coordinators' Raft library (openraft): refused or slow peer RPCs while a
/// cluster forms or while a loaded 2-core machine starves a heartbeat, membership changes racing
/// the bootstrap. The coordinator tests judge those; these tests are about chunkservers, whose
/// logs are checked strictly (no chunkserver line comes from openraft).
pub const COORDINATOR_STARTUP_NOISE: &[&str] = &[" ERROR openraft::"];

/// The `n`th chunkserver (1-based).
pub fn cs(n: u64) -> NodeRef {
    NodeRef::chunkserver(NodeId(n))
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

/// Calls `probe` until it returns `Ok`, or fails after `timeout` with the last reason.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => bail!("{what}: not after {timeout:?}: {reason}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Three coordinators and three chunkservers in a temporary directory, killed when dropped.
pub struct ChunkCluster {
    pub cluster: Cluster,
    name: String,
    dir: Option<TempDir>,
    finished: bool,
}

impl ChunkCluster {
    /// Starts the cluster (chunkservers get `chunkserver_args` too) and waits until all three
    /// chunkservers are registered in the coordinator.
    pub async fn start(name: &str, chunkserver_args: &[&str]) -> anyhow::Result<ChunkCluster> {
        let dir = tempfile::Builder::new().prefix(&format!("cairn-{name}-")).tempdir().context("create cluster dir")?;
        let mut spec = ClusterSpec::new(dir.path());
        spec.ready_timeout = READY_TIMEOUT;
        // Calm Raft timings: these tests are about chunkservers, not elections.
        spec.coordinator_args =
            ["--heartbeat-interval", "100ms", "--election-timeout", "1s"].iter().map(OsString::from).collect();
        spec.chunkserver_args = chunkserver_args.iter().map(OsString::from).collect();
        // Only what chunkservers need: coordinators for their registration.
        spec.metaservers = 0;
        assert_eq!(spec.chunkservers, 3, "the dev launcher starts three chunkservers by default");
        let cluster = match Cluster::start(spec).await {
            Ok(cluster) => cluster,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("start cluster (kept {})", keep_for_diagnosis(dir))));
            }
        };
        let cluster = ChunkCluster { cluster, name: name.to_owned(), dir: Some(dir), finished: false };
        cluster.wait_registered(&[1, 2, 3]).await?;
        Ok(cluster)
    }

    /// gRPC address (host:port) of chunkserver `n`.
    pub fn addr(&self, n: u64) -> String {
        self.cluster.chunkserver_endpoints()[(n - 1) as usize].clone()
    }

    pub fn client(&self, n: u64) -> ChunkClient {
        ChunkClient::connect_lazy(&self.addr(n)).expect("valid address")
    }

    pub fn data_dir(&self, n: u64) -> std::path::PathBuf {
        self.cluster.node(cs(n)).expect("node").data_dir
    }

    /// The chunkserver entries in the coordinator's registry.
    pub async fn registry(&self) -> anyhow::Result<Vec<RegistryEntry>> {
        let mut client = etcd_client::Client::connect(self.cluster.endpoints(), None).await?;
        let response = client.get(REGISTRY_PREFIX, Some(etcd_client::GetOptions::new().with_prefix())).await?;
        response.kvs().iter().map(|kv| serde_json::from_slice(kv.value()).context("parse a registry entry")).collect()
    }

    /// Waits until exactly the chunkservers `ids` are registered, each with its address.
    pub async fn wait_registered(&self, ids: &[u64]) -> anyhow::Result<Vec<RegistryEntry>> {
        poll("chunkserver registration", REGISTER_TIMEOUT, || async {
            let entries = self.registry().await.map_err(|e| format!("{e:#}"))?;
            let mut got: Vec<u64> = entries.iter().map(|e| e.id).collect();
            got.sort();
            if got != ids {
                return Err(format!("registered: {got:?}"));
            }
            for entry in &entries {
                if entry.addr != self.addr(entry.id) {
                    return Err(format!("chunkserver {} registered {}", entry.id, entry.addr));
                }
            }
            Ok(entries)
        })
        .await
    }

    async fn http_get(&self, n: u64, path: &str) -> anyhow::Result<String> {
        let addr = self.cluster.node(cs(n))?.addrs.http;
        let response = cairn_fs_client::http::get(addr, path, HTTP_TIMEOUT).await?;
        if response.status != 200 {
            bail!("GET {path} of chunkserver {n}: HTTP {}", response.status);
        }
        Ok(response.body_text())
    }

    /// `GET /status` of chunkserver `n`.
    pub async fn status(&self, n: u64) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.http_get(n, "/status").await?)?)
    }

    /// The value of an unlabelled metric of chunkserver `n`.
    pub async fn metric(&self, n: u64, name: &str) -> anyhow::Result<f64> {
        let text = self.http_get(n, "/metrics").await?;
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .context(format!("metric {name} missing"))?
            .trim()
            .parse()
            .context("parse metric")
    }

    /// Fails on ERROR lines in the server logs that contain none of `allowed` (nor
    /// [`COORDINATOR_STARTUP_NOISE`]).
    pub fn finish(mut self, allowed: &[&str]) -> anyhow::Result<()> {
        let allowed: Vec<&str> = allowed.iter().chain(COORDINATOR_STARTUP_NOISE).copied().collect();
        let found = self.cluster.unexpected_errors(&allowed)?;
        if !found.is_empty() {
            let lines: Vec<String> = found.iter().take(20).map(ToString::to_string).collect();
            bail!("unexpected ERROR lines in the {} cluster:\n{}", self.name, lines.join("\n"));
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for ChunkCluster {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(dir) = self.dir.take() {
                eprintln!("{} cluster directory kept for inspection: {}", self.name, keep_for_diagnosis(dir));
            }
        }
    }
}

/// Every replica in `replicas` that has `chunk` holds a prefix of `source` and says so
/// truthfully: its reported length is readable (checksums pass) and matches `source`.
pub async fn assert_truthful_prefix(
    cluster: &ChunkCluster,
    replicas: &[u64],
    chunk: u64,
    source: &[u8],
) -> anyhow::Result<()> {
    for &n in replicas {
        let client = cluster.client(n);
        let stat = match client.stat(chunk, true).await {
            Ok(stat) => stat,
            Err(e) if e.status().map(|s| s.code()) == Some(Code::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        let length = stat.length_bytes as usize;
        eprintln!("chunkserver-{n} holds {length} bytes of chunk {chunk} ({} sent)", source.len());
        assert!(length <= source.len(), "chunkserver-{n} reports {length} bytes, more than was sent");
        let back = client.read(chunk, 1, 0, stat.length_bytes).await?;
        assert_eq!(back.len(), length, "chunkserver-{n} reports {length} bytes but returns {}", back.len());
        assert!(back == source[..length], "chunkserver-{n} returns bytes that were never written");
        assert_eq!(stat.blake3, blake3::hash(&source[..length]).as_bytes().to_vec(), "digest of chunkserver-{n}");
    }
    Ok(())
}
