//! [`TestCluster`]: a coordinator cluster owned by one test, in its own temporary directory.

use std::borrow::Cow;
use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use cairn_fs_client::dev::{Cluster, ClusterSpec, NodeId};
use etcd_client::Client;
use serde::Deserialize;
use tempfile::TempDir;

use crate::limits::{CLUSTER_READY_TIMEOUT, HTTP_REQUEST_TIMEOUT, LEADER_TIMEOUT, LOG_LINES_QUOTED_MAX};
use crate::{connect, keep_for_diagnosis, poll_until, Etcdctl};

/// Raft timings and snapshot policy of the coordinators of a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `--heartbeat-interval`.
    pub heartbeat_interval: &'static str,
    /// `--election-timeout` (the minimum; the server's maximum is twice this).
    pub election_timeout: &'static str,
    /// `--snapshot-count`; `None` keeps the server's default.
    pub snapshot_count: Option<u64>,
    /// Further coordinator flags.
    pub extra_args: Vec<OsString>,
}

impl Default for ClusterOptions {
    /// Calm timings: two 3-node clusters share 2 cores during a test run, and a starved
    /// heartbeat must not trigger elections in tests that are not about them.
    fn default() -> Self {
        ClusterOptions {
            heartbeat_interval: "100ms",
            election_timeout: "1s",
            snapshot_count: None,
            extra_args: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// Fast elections, for fault tests that wait for a new leader.
    pub fn fast_failover() -> Self {
        ClusterOptions {
            heartbeat_interval: "50ms",
            election_timeout: "500ms",
            snapshot_count: None,
            extra_args: Vec::new(),
        }
    }

    fn coordinator_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--heartbeat-interval".into(),
            self.heartbeat_interval.into(),
            "--election-timeout".into(),
            self.election_timeout.into(),
        ];
        if let Some(count) = self.snapshot_count {
            args.extend(["--snapshot-count".into(), count.to_string().into()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// An ERROR log line a test tolerates: lines containing `pattern` are not reported.
#[derive(Debug, Clone)]
pub struct AllowedError {
    pub pattern: Cow<'static, str>,
    /// Why this error is expected in that test; documentation for the reader.
    pub reason: &'static str,
}

impl AllowedError {
    /// An allowance with a fixed pattern, usable in a `const`.
    pub const fn fixed(pattern: &'static str, reason: &'static str) -> AllowedError {
        AllowedError { pattern: Cow::Borrowed(pattern), reason }
    }

    pub fn new(pattern: impl Into<Cow<'static, str>>, reason: &'static str) -> AllowedError {
        AllowedError { pattern: pattern.into(), reason }
    }
}

/// openraft logs a failed connection to a peer at ERROR. Peers start one after another (the
/// first vote requests meet closed ports), so every test allows it.
pub const PEER_UNREACHABLE: AllowedError = AllowedError::fixed(
    "Unreachable node",
    "openraft reports refused peer connections at ERROR; peers start one by one",
);

/// openraft bounds each AppendEntries RPC by the heartbeat interval (100 ms here, 50 ms in fault
/// tests) and logs a missed deadline at ERROR before retrying. On 2 cores shared with another
/// cluster (and compilers), a live peer sometimes answers late; that is not a failure.
pub const PEER_RPC_TIMEOUT: AllowedError = AllowedError::fixed(
    "timeout after ",
    "peer RPCs bounded by the heartbeat interval sometimes miss it on 2 loaded cores; openraft retries",
);

/// A node's `GET /status`, every field the coordinator reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RaftStatus {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: String,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub revision: i64,
}

/// A coordinator cluster in a fresh temporary directory, killed when dropped. Dereferences to
/// the launcher's [`Cluster`] for node operations (`kill`, `restart`, `leader_id`, ...).
#[derive(Debug)]
pub struct TestCluster {
    name: String,
    cluster: Cluster,
    /// `None` once the directory is handed over to the reader of a failed test.
    dir: Option<TempDir>,
    finished: bool,
}

impl TestCluster {
    /// Starts a 3-coordinator cluster with [`ClusterOptions::default`] and waits until every node
    /// is healthy. `name` prefixes the directory, so a kept one is easy to attribute.
    pub async fn start(name: &str) -> anyhow::Result<TestCluster> {
        TestCluster::start_with(name, ClusterOptions::default()).await
    }

    pub async fn start_with(name: &str, options: ClusterOptions) -> anyhow::Result<TestCluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-{name}-"))
            .tempdir()
            .context("create the cluster directory")?;
        let mut spec = ClusterSpec::new(dir.path());
        // Coordinators only: these fixtures test the coordinator, and on 2 cores every extra
        // process steals time from heartbeats.
        spec.chunkservers = 0;
        spec.metaservers = 0;
        spec.ready_timeout = CLUSTER_READY_TIMEOUT;
        spec.coordinator_args = options.coordinator_args();
        match Cluster::start(spec).await {
            Ok(cluster) => Ok(TestCluster { name: name.to_owned(), cluster, dir: Some(dir), finished: false }),
            Err(e) => {
                let kept = keep_for_diagnosis(dir);
                Err(anyhow::Error::new(e).context(format!("start the {name} cluster (directory kept: {kept})")))
            }
        }
    }

    /// The cluster directory (node data, `logs/`, `cluster.json`).
    pub fn dir(&self) -> PathBuf {
        self.cluster.dir().to_path_buf()
    }

    /// The client (etcd gRPC) address of one coordinator, `host:port`.
    pub fn endpoint(&self, node: NodeId) -> anyhow::Result<String> {
        Ok(self.cluster.node(node)?.addrs.client.to_string())
    }

    /// An etcd-client connected to every coordinator.
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.cluster.endpoints()).await
    }

    /// An etcd-client connected to one coordinator only.
    pub async fn client_for(&self, node: NodeId) -> anyhow::Result<Client> {
        connect(&[self.endpoint(node)?]).await
    }

    /// etcdctl pointed at every coordinator.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.cluster.endpoints())
    }

    /// The node's `GET /status`, with every field (the launcher's `status` parses only some).
    pub async fn raft_status(&self, node: NodeId) -> anyhow::Result<RaftStatus> {
        let addr = self.cluster.node(node)?.addrs.http;
        let response = cairn_fs_client::http::get(addr, "/status", HTTP_REQUEST_TIMEOUT)
            .await
            .with_context(|| format!("GET /status of node {node}"))?;
        if response.status != 200 {
            bail!("GET /status of node {node}: HTTP {}: {}", response.status, response.body_text());
        }
        serde_json::from_slice(&response.body)
            .with_context(|| format!("parse /status of node {node}: {}", response.body_text()))
    }

    /// Waits until some node names a leader other than `old` (which may be dead), and that
    /// leader itself agrees it leads.
    pub async fn wait_for_new_leader(&self, old: NodeId) -> anyhow::Result<NodeId> {
        poll_until(&format!("a leader other than node {old}"), LEADER_TIMEOUT, || async {
            let Some(leader) = self.cluster.leader_id().await else { return Err("no node names a leader".to_owned()) };
            if leader == old {
                return Err(format!("node {leader} is still named leader"));
            }
            match self.raft_status(leader).await {
                Ok(status) if status.state == "Leader" => Ok(leader),
                Ok(status) => Err(format!("node {leader} is named leader but says it is {}", status.state)),
                Err(e) => Err(format!("node {leader} is named leader but: {e:#}")),
            }
        })
        .await
    }

    /// Ends the test: fails if a server logged an ERROR line (or panicked) that matches none of
    /// `allowed`, [`PEER_UNREACHABLE`] and [`PEER_RPC_TIMEOUT`] (openraft's reports of peers that
    /// were not up yet or answered late on 2 loaded cores, which every test allows). On success
    /// the directory is deleted when the cluster is dropped.
    pub fn finish(mut self, allowed: &[AllowedError]) -> anyhow::Result<()> {
        let always = [PEER_UNREACHABLE, PEER_RPC_TIMEOUT];
        let patterns: Vec<&str> = allowed.iter().chain(&always).map(|a| a.pattern.as_ref()).collect();
        let found = self.cluster.unexpected_errors(&patterns).context("scan the server logs")?;
        if !found.is_empty() {
            let quoted: Vec<String> = found.iter().take(LOG_LINES_QUOTED_MAX).map(ToString::to_string).collect();
            bail!(
                "{} unexpected ERROR line(s) in the server logs of the {} cluster:\n{}",
                found.len(),
                self.name,
                quoted.join("\n")
            );
        }
        self.finished = true;
        Ok(())
    }
}

impl Deref for TestCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The launcher's `Cluster` (a field) kills the servers after this runs.
        if !self.finished {
            if let Some(dir) = self.dir.take() {
                let kept = keep_for_diagnosis(dir);
                eprintln!("test did not finish: the {} cluster's logs are kept in {kept}", self.name);
            }
        }
    }
}
