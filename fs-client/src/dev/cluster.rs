//! [`Cluster`]: a local cluster owned by its creator (a test), killed when dropped.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use super::health::{self, wait_ready};
use super::layout::plan_nodes;
use super::logs::{scan_errors_in, scan_log_errors};
use super::mount::{spawn_mount, unmount_blocking, wait_mounted, MountRecord, Unmounted, PRIMARY_MOUNT};
use super::process::{is_alive, is_node_process, pid_of, signal, spawn_node, wait_until, Ownership};
use super::state::{ClusterState, NodeInfo};
use super::{bin_dir, ClusterSpec, DevError, LogLine, NodeId, NodeRef, NodeStatus, ServiceKind, Signal};
use crate::limits::{DEV_KILL_WAIT, DEV_MOUNT_READY_TIMEOUT, DEV_READY_POLL_INTERVAL, DEV_STOP_GRACE};

/// A running local cluster whose processes belong to this value.
///
/// Every child is SIGKILLed and reaped when the `Cluster` is dropped (a test that panics leaves
/// nothing behind unless the test process itself is killed; then `cairn dev down --dir DIR`
/// cleans up through `cluster.json`). Node operations take anything convertible to a
/// [`NodeRef`]; a bare [`NodeId`] means a coordinator.
///
/// The cluster tracks which nodes are *expected* to run: [`Cluster::kill`] with a terminating
/// signal and [`Cluster::stop`] clear that, [`Cluster::restart`] sets it, and
/// [`Cluster::wait_ready`] waits only for expected nodes — failing at once if one of them exits
/// on its own.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    bin_dir: PathBuf,
    state: ClusterState,
    children: HashMap<NodeRef, Child>,
    expected: HashSet<NodeRef>,
    /// Running mount processes by mount name (records are in `state.mounts`).
    mount_children: HashMap<String, Child>,
}

impl Cluster {
    /// Starts the cluster described by `spec` and waits until every node is healthy (up to
    /// `spec.ready_timeout` in all). Kinds start in the order of [`ServiceKind::ALL`], each once
    /// the kinds before it are healthy (chunkservers after the coordinators they register in).
    /// A directory that holds a previous, stopped cluster is reused: same data directories and,
    /// when still free, the same ports.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, DevError> {
        let deadline = Instant::now() + spec.ready_timeout;
        let mut cluster = Cluster::prepare(spec)?;
        for &kind in ServiceKind::ALL {
            let refs: Vec<NodeRef> =
                cluster.state.nodes.iter().filter(|n| n.kind == kind).map(NodeInfo::node_ref).collect();
            if refs.is_empty() {
                continue;
            }
            for node in refs {
                cluster.start_node(node)?;
            }
            cluster.state.write_env()?;
            let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            cluster.wait_ready(remaining).await?;
        }
        if cluster.spec.mount {
            let options = cluster.spec.mount_options.clone();
            cluster.add_mount(PRIMARY_MOUNT, &options).await?;
        }
        Ok(cluster)
    }

    /// Like [`Cluster::start`] but starts every node at once and returns as soon as the
    /// processes are started (chunkservers keep retrying their registration until the
    /// coordinators are up).
    pub fn spawn(spec: ClusterSpec) -> Result<Cluster, DevError> {
        let mut cluster = Cluster::prepare(spec)?;
        // If a start fails, dropping `cluster` kills the nodes already started.
        let refs: Vec<NodeRef> = cluster.state.nodes.iter().map(NodeInfo::node_ref).collect();
        for node in refs {
            cluster.start_node(node)?;
        }
        cluster.state.write_env()?;
        Ok(cluster)
    }

    /// Plans the cluster (directories, ports) without starting anything.
    fn prepare(spec: ClusterSpec) -> Result<Cluster, DevError> {
        spec.validate()?;
        let dir =
            std::path::absolute(&spec.dir).map_err(|e| DevError::io(format!("resolve {}", spec.dir.display()), e))?;
        std::fs::create_dir_all(&dir).map_err(|e| DevError::io(format!("create {}", dir.display()), e))?;
        let bin_dir = match &spec.bin_dir {
            Some(dir) => dir.clone(),
            None => bin_dir()?,
        };

        let previous = ClusterState::read(&dir)?;
        if let Some(previous) = &previous {
            let alive: Vec<NodeRef> = previous
                .nodes
                .iter()
                .filter(|n| n.pid.is_some_and(|pid| is_node_process(pid, n)))
                .map(NodeInfo::node_ref)
                .collect();
            if !alive.is_empty() {
                return Err(DevError::AlreadyRunning { dir, alive });
            }
        }
        let nodes = plan_nodes(&spec, &dir, previous.as_ref())?;
        for &kind in ServiceKind::ALL {
            if spec.count(kind) > 0 {
                super::binary_path(&bin_dir, kind)?;
            }
        }
        Ok(Cluster {
            spec,
            bin_dir,
            state: ClusterState::new(dir, nodes),
            children: HashMap::new(),
            expected: HashSet::new(),
            mount_children: HashMap::new(),
        })
    }

    /// The absolute cluster directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// What `cluster.json` records: every node with its addresses and current pid.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Coordinator client (etcd gRPC) addresses, `host:port`, ordered by node id.
    pub fn endpoints(&self) -> Vec<String> {
        self.state.coordinator_endpoints()
    }

    /// Coordinator HTTP addresses, `host:port`, ordered by node id.
    pub fn http_endpoints(&self) -> Vec<String> {
        self.state.coordinator_http()
    }

    /// Ids of the coordinators, ascending.
    pub fn coordinator_ids(&self) -> Vec<NodeId> {
        self.ids_of(ServiceKind::Coordinator)
    }

    /// Chunkserver gRPC addresses, `host:port`, ordered by id.
    pub fn chunkserver_endpoints(&self) -> Vec<String> {
        self.state.chunkserver_endpoints()
    }

    /// Chunkserver HTTP addresses, `host:port`, ordered by id.
    pub fn chunkserver_http_endpoints(&self) -> Vec<String> {
        self.state.chunkserver_http()
    }

    /// Metaserver (MetaService gRPC) addresses, `host:port`, ordered by id.
    pub fn metaserver_endpoints(&self) -> Vec<String> {
        self.state.metaserver_endpoints()
    }

    /// Metaserver HTTP addresses, `host:port`, ordered by id.
    pub fn metaserver_http_endpoints(&self) -> Vec<String> {
        self.state.metaserver_http()
    }

    /// Ids of the metaservers, ascending (name them with [`NodeRef::metaserver`]).
    pub fn metaserver_ids(&self) -> Vec<NodeId> {
        self.ids_of(ServiceKind::Metaserver)
    }

    /// Ids of the chunkservers, ascending (name them with [`NodeRef::chunkserver`]).
    pub fn chunkserver_ids(&self) -> Vec<NodeId> {
        self.ids_of(ServiceKind::Chunkserver)
    }

    fn ids_of(&self, kind: ServiceKind) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.state.nodes.iter().filter(|n| n.kind == kind).map(|n| n.id).collect();
        ids.sort();
        ids
    }

    /// A node's pid (if started), addresses, data directory and log path.
    pub fn node(&self, node: impl Into<NodeRef>) -> Result<NodeInfo, DevError> {
        self.info(node.into()).cloned()
    }

    /// Whether the node's process exists and has not exited (a SIGSTOPped node is running).
    pub fn is_running(&self, node: impl Into<NodeRef>) -> bool {
        self.info(node.into()).ok().and_then(|n| n.pid).is_some_and(is_alive)
    }

    /// Sends `sig` to the node. SIGKILL also reaps the process before returning, so the node is
    /// certainly dead afterwards; SIGKILL, SIGTERM, SIGINT and SIGQUIT mark the node as not
    /// expected to run. SIGSTOP/SIGCONT freeze and thaw it.
    pub fn kill(&mut self, node: impl Into<NodeRef>, sig: Signal) -> Result<(), DevError> {
        let node = node.into();
        let info = self.info(node)?.clone();
        let pid = self.running_pid(node)?;
        signal(&info, pid, sig)?;
        if matches!(sig, Signal::SIGKILL | Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
            self.expected.remove(&node);
        }
        if sig == Signal::SIGKILL {
            if let Some(child) = self.children.get_mut(&node) {
                child.wait().map_err(|e| DevError::io(format!("wait for {node}"), e))?;
            }
            self.reap(node);
        }
        Ok(())
    }

    /// Stops the node gracefully: SIGTERM (plus SIGCONT, in case it is frozen), then waits up to
    /// 10 s for it to exit. If it does not, it is SIGKILLed and [`DevError::StopTimeout`] is
    /// returned. Returns the exit status.
    pub async fn stop(&mut self, node: impl Into<NodeRef>) -> Result<ExitStatus, DevError> {
        let node = node.into();
        let info = self.info(node)?.clone();
        let pid = self.running_pid(node)?;
        self.expected.remove(&node);
        signal(&info, pid, Signal::SIGTERM)?;
        // Ignored on purpose: the process may have exited between the two signals.
        let _ = signal(&info, pid, Signal::SIGCONT);

        let child = self.children.get_mut(&node).ok_or(DevError::UnknownNode(node))?;
        let mut status = None;
        let exited = wait_until(DEV_STOP_GRACE, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })
        .await;
        if !exited {
            let _ = child.kill();
            let _ = wait_until(DEV_KILL_WAIT, || child.try_wait().ok().flatten().is_some()).await;
            self.reap(node);
            return Err(DevError::StopTimeout { node, grace: DEV_STOP_GRACE });
        }
        self.reap(node);
        status.ok_or(DevError::UnknownNode(node))
    }

    /// Starts the node again with the same ports, data directory and log (stopping it first,
    /// gracefully, if it is still running). Does not wait for it to become healthy: a lone
    /// restarted node may legitimately stay unhealthy until a quorum is back. Use
    /// [`Cluster::wait_node_ready`] or [`Cluster::wait_ready`].
    pub async fn restart(&mut self, node: impl Into<NodeRef>) -> Result<(), DevError> {
        let node = node.into();
        self.info(node)?;
        if self.is_running(node) {
            self.stop(node).await?;
        }
        self.reap(node);
        self.start_node(node)
    }

    /// Waits until every node expected to run is healthy (`GET /health` is 200).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), DevError> {
        let nodes: Vec<NodeInfo> =
            self.state.nodes.iter().filter(|n| self.expected.contains(&n.node_ref())).cloned().collect();
        wait_ready(&nodes, timeout).await
    }

    /// Waits until one node is healthy.
    pub async fn wait_node_ready(&self, node: impl Into<NodeRef>, timeout: Duration) -> Result<(), DevError> {
        let info = self.info(node.into())?.clone();
        wait_ready(std::slice::from_ref(&info), timeout).await
    }

    /// The node's `GET /status`.
    pub async fn status(&self, node: impl Into<NodeRef>) -> Result<NodeStatus, DevError> {
        let http = self.info(node.into())?.addrs.http;
        health::fetch_status(http).await
    }

    /// The coordinator leader as the coordinators report it now (see [`super::leader`]).
    pub async fn leader_id(&self) -> Option<NodeId> {
        health::leader(&self.coordinator_http_addrs()).await
    }

    /// Polls [`Cluster::leader_id`] until some coordinator names a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, DevError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader_id().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(DevError::NoLeader { timeout });
            }
            tokio::time::sleep(DEV_READY_POLL_INTERVAL).await;
        }
    }

    /// The leader of the Raft group of `kind` (coordinators or metaservers) as its members
    /// report it now (see [`super::leader`]).
    pub async fn leader_of(&self, kind: ServiceKind) -> Option<NodeId> {
        let addrs: Vec<SocketAddr> = self.state.nodes.iter().filter(|n| n.kind == kind).map(|n| n.addrs.http).collect();
        health::leader(&addrs).await
    }

    /// Error lines (` ERROR ` or `panicked at`) in every node's log that contain none of the
    /// `allowed` substrings. Tests call this at the end and fail if it is not empty.
    pub fn unexpected_errors(&self, allowed: &[&str]) -> Result<Vec<LogLine>, DevError> {
        let mut found = Vec::new();
        for node in &self.state.nodes {
            found.extend(scan_log_errors(node.node_ref(), &node.log_path, allowed)?);
        }
        Ok(found)
    }

    /// Like [`Cluster::unexpected_errors`] for the mounts' logs, as `mount-<name>:<line>: text`.
    pub fn unexpected_mount_errors(&self, allowed: &[&str]) -> Result<Vec<String>, DevError> {
        let mut found = Vec::new();
        for mount in &self.state.mounts {
            for (line_no, text) in scan_errors_in(&mount.log_path, allowed)? {
                found.push(format!("mount-{}:{line_no}: {text}", mount.name));
            }
        }
        Ok(found)
    }

    // ---- mounts ------------------------------------------------------------------------------

    /// Mounts the cluster at `DIR/<name>` with `-o options` (plus the spec's `mount_args`) and
    /// waits until the mount is live. Returns the mountpoint. A mount of that name that is not
    /// running (unmounted, killed) is started again at the same place.
    pub async fn add_mount(&mut self, name: &str, options: &[String]) -> Result<PathBuf, DevError> {
        if self.mount_children.contains_key(name) {
            return Err(DevError::MountExists(name.to_owned()));
        }
        let mut record = MountRecord::new(&self.state.dir, name, None, options.to_vec());
        if let Some(old) = self.state.mount(name) {
            record.mountpoint = old.mountpoint.clone();
            record.log_path = old.log_path.clone();
        }
        let child = spawn_mount(
            &self.bin_dir,
            &record,
            &self.metaserver_endpoints(),
            &self.spec.mount_args,
            &self.spec.env,
            Ownership::Attached,
        )?;
        let pid = child.id();
        record.pid = Some(pid);
        self.mount_children.insert(name.to_owned(), child);
        match self.state.mount_mut(name) {
            Some(slot) => *slot = record.clone(),
            None => self.state.mounts.push(record.clone()),
        }
        self.state.write()?;
        if let Err(e) = wait_mounted(&record, pid, DEV_MOUNT_READY_TIMEOUT).await {
            let _ = self.unmount(name).await;
            return Err(e);
        }
        self.state.write_env()?;
        Ok(record.mountpoint)
    }

    /// The mountpoint of mount `name` (whether or not it is running).
    pub fn mountpoint(&self, name: &str) -> Option<PathBuf> {
        self.state.mount(name).map(|m| m.mountpoint.clone())
    }

    /// The pid of mount `name`'s `cairn mount` process, if it runs.
    pub fn mount_pid(&self, name: &str) -> Option<u32> {
        self.state.mount(name).and_then(|m| m.pid).filter(|&pid| is_alive(pid))
    }

    /// Sends `sig` to mount `name`'s process. SIGKILL also reaps it; the kernel mount then stays
    /// behind, dead ("Transport endpoint is not connected"), until [`Cluster::unmount`].
    pub fn kill_mount(&mut self, name: &str, sig: Signal) -> Result<(), DevError> {
        let record = self.state.mount(name).ok_or_else(|| DevError::UnknownMount(name.to_owned()))?.clone();
        let pid = record.pid.filter(|&pid| is_alive(pid)).ok_or_else(|| DevError::UnknownMount(name.to_owned()))?;
        nix::sys::signal::kill(pid_of(pid), sig).map_err(|source| DevError::MountSignal {
            name: name.to_owned(),
            pid,
            signal: sig,
            source,
        })?;
        if sig == Signal::SIGKILL {
            if let Some(mut child) = self.mount_children.remove(name) {
                child.wait().map_err(|e| DevError::io(format!("wait for mount {name}"), e))?;
            }
            if let Some(m) = self.state.mount_mut(name) {
                m.pid = None;
            }
            let _ = self.state.write();
        }
        Ok(())
    }

    /// Unmounts `name` (see [`mount::unmount_blocking`]: SIGTERM, then force) and reaps its
    /// process. A mount that is not running, or a dead mount left by a kill, is cleaned up too.
    pub async fn unmount(&mut self, name: &str) -> Result<Unmounted, DevError> {
        let record = self.state.mount(name).ok_or_else(|| DevError::UnknownMount(name.to_owned()))?.clone();
        let pid = record.pid;
        let outcome = tokio::task::spawn_blocking(move || unmount_blocking(&record, pid))
            .await
            .map_err(|e| DevError::io("unmount", std::io::Error::other(e.to_string())))?;
        if let Some(mut child) = self.mount_children.remove(name) {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(m) = self.state.mount_mut(name) {
            m.pid = None;
        }
        let _ = self.state.write();
        let _ = self.state.write_env();
        outcome
    }

    /// Names of the mounts this cluster has made, primary first.
    pub fn mount_names(&self) -> Vec<String> {
        self.state.mounts.iter().map(|m| m.name.clone()).collect()
    }

    fn unmount_all_blocking(&mut self) {
        for record in self.state.mounts.clone() {
            if let Err(e) = unmount_blocking(&record, record.pid) {
                tracing::warn!(mount = %record.name, error = %e, "unmount dev-cluster mount");
                eprintln!("cairn dev: could not unmount {}: {e}", record.mountpoint.display());
            }
            if let Some(mut child) = self.mount_children.remove(&record.name) {
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
        }
        for m in &mut self.state.mounts {
            m.pid = None;
        }
    }

    /// Stops every running node gracefully (see [`Cluster::stop`]); the first error wins, but
    /// every node is stopped.
    pub async fn stop_all(&mut self) -> Result<(), DevError> {
        let mut first_error = None;
        let nodes: Vec<NodeRef> = self.state.nodes.iter().map(NodeInfo::node_ref).collect();
        for node in nodes {
            if self.is_running(node) {
                if let Err(e) = self.stop(node).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn info(&self, node: NodeRef) -> Result<&NodeInfo, DevError> {
        self.state.node(node).ok_or(DevError::UnknownNode(node))
    }

    fn info_mut(&mut self, node: NodeRef) -> Result<&mut NodeInfo, DevError> {
        self.state.nodes.iter_mut().find(|n| n.node_ref() == node).ok_or(DevError::UnknownNode(node))
    }

    fn running_pid(&self, node: NodeRef) -> Result<u32, DevError> {
        self.info(node)?.pid.filter(|&pid| is_alive(pid)).ok_or(DevError::NotRunning(node))
    }

    fn coordinator_http_addrs(&self) -> Vec<SocketAddr> {
        self.state.nodes.iter().filter(|n| n.kind == ServiceKind::Coordinator).map(|n| n.addrs.http).collect()
    }

    fn start_node(&mut self, node: NodeRef) -> Result<(), DevError> {
        if let Some(pid) = self.info(node)?.pid.filter(|&pid| is_alive(pid)) {
            return Err(DevError::NodeRunning { node, pid });
        }
        let info = self.info(node)?;
        let child = spawn_node(&self.spec, &self.bin_dir, info, &self.state.nodes, Ownership::Attached)?;
        self.info_mut(node)?.pid = Some(child.id());
        self.children.insert(node, child);
        self.expected.insert(node);
        self.state.write()
    }

    /// Forgets an exited node's process (waiting for it if it has not been reaped yet).
    fn reap(&mut self, node: NodeRef) {
        if let Some(mut child) = self.children.remove(&node) {
            if child.try_wait().ok().flatten().is_none() {
                // Still running: the callers only reap after an exit, so this is a kill race.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Ok(info) = self.info_mut(node) {
            info.pid = None;
        }
        // Best effort: the record only helps `cairn dev down` after a crash.
        let _ = self.state.write();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Mounts first: a client whose servers are gone would only wait for them.
        self.unmount_all_blocking();
        for (node, child) in &mut self.children {
            if child.try_wait().ok().flatten().is_none() {
                if let Err(e) = child.kill() {
                    tracing::warn!(%node, error = %e, "kill dev-cluster node");
                }
                let _ = child.wait();
            }
        }
        self.children.clear();
        for node in &mut self.state.nodes {
            node.pid = None;
        }
        let _ = self.state.write();
        let _ = self.state.remove_env();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::kv_client::KvClient;
    use cairn_proto::etcdserverpb::{PutRequest, RangeRequest};

    /// Needs `cairn-coordinator` next to the test binary's parent directory (run
    /// `cargo build -p cairn-coordinator` first): `cargo test -p cairn-fs-client -- --ignored`.
    #[tokio::test]
    #[ignore = "needs the cairn-coordinator binary"]
    async fn real_cluster_lifecycle() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let spec = ClusterSpec::new(tmp.path().join("c"));
        let mut cluster = Cluster::start(spec.clone()).await.expect("start");
        assert_eq!(cluster.endpoints().len(), 3);
        assert!(cluster.dir().join("cluster.env").exists());
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");

        let mut kv = KvClient::connect(format!("http://{}", cluster.endpoints()[0])).await.expect("connect");
        kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.expect("put");

        cluster.kill(leader, Signal::SIGKILL).expect("kill leader");
        assert!(!cluster.is_running(leader));
        assert_eq!(cluster.node(leader).expect("node").pid, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        let new_leader = loop {
            match cluster.leader_id().await {
                Some(l) if l != leader => break l,
                _ if Instant::now() > deadline => panic!("no new leader"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        cluster.wait_ready(Duration::from_secs(20)).await.expect("survivors ready");
        cluster.restart(leader).await.expect("restart");
        cluster.wait_ready(Duration::from_secs(30)).await.expect("all ready");

        let follower = cluster.coordinator_ids().into_iter().find(|&id| id != new_leader).expect("a follower");
        cluster.kill(follower, Signal::SIGSTOP).expect("freeze");
        cluster.kill(follower, Signal::SIGCONT).expect("thaw");
        let status = cluster.stop(follower).await.expect("stop");
        assert!(status.success(), "{status}");
        cluster.restart(follower).await.expect("restart");
        cluster.wait_ready(Duration::from_secs(30)).await.expect("ready again");

        // Dropping kills everything; a new Cluster on the same dir reuses ports and data.
        let endpoints = cluster.endpoints();
        drop(cluster);
        let cluster = Cluster::start(spec).await.expect("start again");
        assert_eq!(cluster.endpoints(), endpoints);
        let mut kv = KvClient::connect(format!("http://{}", cluster.endpoints()[1])).await.expect("connect");
        let response =
            kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.expect("range").into_inner();
        assert_eq!(response.kvs.first().map(|kv| kv.value.clone()), Some(b"v".to_vec()));
        for line in cluster.unexpected_errors(&[]).expect("scan") {
            eprintln!("error line: {line}");
        }
    }
}
