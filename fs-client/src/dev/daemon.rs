//! `cairn dev up/down/status`: clusters that outlive the command that started them, found
//! again through `DIR/cluster.json`.

use std::path::{Path, PathBuf};
use std::process::Child;

use super::health::{fetch_status_json, wait_ready};
use super::layout::plan_nodes;
use super::mount::{
    is_mount_process, spawn_mount, unmount_blocking, wait_mounted, MountRecord, Unmounted, PRIMARY_MOUNT,
};
use super::process::{is_node_process, signal, spawn_node, wait_until, Ownership};
use super::state::{remove_if_exists, ClusterState, NodeInfo, CLUSTER_STATE_FILE};
use super::{bin_dir, binary_path, ClusterSpec, DevError, NodeRef, ServiceKind, Signal};
use crate::limits::{DEV_KILL_WAIT, DEV_MOUNT_READY_TIMEOUT, DEV_STOP_GRACE};

/// What [`up`] did.
#[derive(Debug, Clone)]
pub enum UpOutcome {
    /// Started the cluster; it is healthy.
    Started(ClusterState),
    /// Every node recorded in `cluster.json` was already running; nothing was started.
    AlreadyRunning(ClusterState),
}

impl UpOutcome {
    pub fn state(&self) -> &ClusterState {
        match self {
            UpOutcome::Started(state) | UpOutcome::AlreadyRunning(state) => state,
        }
    }
}

/// Starts a detached cluster in `spec.dir` and waits until it is healthy.
///
/// * If `cluster.json` lists nodes that are all still running, returns
///   [`UpOutcome::AlreadyRunning`]; if only some are, fails with
///   [`DevError::PartiallyRunning`].
/// * Otherwise reuses recorded data directories and (when free) ports, starts every node in its
///   own process group — kind by kind in the order of [`ServiceKind::ALL`], each kind once the
///   previous ones are healthy — records the pids in `cluster.json` *before* waiting (so `down`
///   can clean up an interrupted `up`), waits for health and writes `cluster.env`.
/// * If a node fails to start or the cluster is not healthy in time, every started node is
///   killed and the error (with log tails) is returned.
/// * With `spec.mount`, then mounts the cluster at `DIR/mnt` (a detached `cairn mount
///   --foreground`, recorded in `cluster.json` before waiting) and waits until the mount is
///   live; a failed mount stops everything like a failed node. A running cluster whose mount
///   is not running gets mounted again.
pub async fn up(spec: &ClusterSpec) -> Result<UpOutcome, DevError> {
    spec.validate()?;
    let dir = absolute(&spec.dir)?;
    std::fs::create_dir_all(&dir).map_err(|e| DevError::io(format!("create {}", dir.display()), e))?;

    let previous = ClusterState::read(&dir)?;
    if let Some(previous) = &previous {
        let (alive, dead): (Vec<&NodeInfo>, Vec<&NodeInfo>) =
            previous.nodes.iter().partition(|n| n.pid.is_some_and(|pid| is_node_process(pid, n)));
        if !alive.is_empty() {
            if dead.is_empty() {
                let mut state = previous.clone();
                if spec.mount && !mount_running(&state, PRIMARY_MOUNT) {
                    let bin_dir = match &spec.bin_dir {
                        Some(dir) => dir.clone(),
                        None => bin_dir()?,
                    };
                    mount_detached(spec, &bin_dir, &mut state).await?;
                }
                return Ok(UpOutcome::AlreadyRunning(state));
            }
            return Err(DevError::PartiallyRunning {
                dir,
                alive: alive.iter().map(|n| n.node_ref()).collect(),
                dead: dead.iter().map(|n| n.node_ref()).collect(),
            });
        }
    }

    let bin_dir = match &spec.bin_dir {
        Some(dir) => dir.clone(),
        None => bin_dir()?,
    };
    for &kind in ServiceKind::ALL {
        if spec.count(kind) > 0 {
            binary_path(&bin_dir, kind)?;
        }
    }

    let nodes = plan_nodes(spec, &dir, previous.as_ref())?;
    let mut state = ClusterState::new(dir, nodes);
    // Keep the recorded mounts (their mountpoints and logs), none of them running.
    state.mounts = previous.map(|p| p.mounts).unwrap_or_default();
    for mount in &mut state.mounts {
        mount.pid = None;
    }
    let mut children: Vec<Child> = Vec::new();
    let deadline = std::time::Instant::now() + spec.ready_timeout;
    let mut ready = Ok(());
    for &kind in ServiceKind::ALL {
        let mut started = Ok(());
        for index in 0..state.nodes.len() {
            if state.nodes[index].kind != kind {
                continue;
            }
            match spawn_node(spec, &bin_dir, &state.nodes[index], &state.nodes, Ownership::Detached) {
                Ok(child) => {
                    state.nodes[index].pid = Some(child.id());
                    children.push(child);
                }
                Err(e) => {
                    started = Err(e);
                    break;
                }
            }
        }
        let remaining =
            deadline.saturating_duration_since(std::time::Instant::now()).max(std::time::Duration::from_millis(100));
        let started_nodes: Vec<NodeInfo> = state.nodes.iter().filter(|n| n.pid.is_some()).cloned().collect();
        ready = match started.and_then(|()| state.write()) {
            Ok(()) => wait_ready(&started_nodes, remaining).await,
            Err(e) => Err(e),
        };
        if ready.is_err() {
            break;
        }
    }
    if ready.is_ok() && spec.mount {
        ready = mount_detached(spec, &bin_dir, &mut state).await;
    }
    if let Err(e) = ready.and_then(|()| state.write_env().map(drop)) {
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &mut state.nodes {
            node.pid = None;
        }
        let _ = state.write();
        return Err(e);
    }
    // Dropping a `Child` neither kills nor waits: the servers keep running after we exit.
    drop(children);
    Ok(UpOutcome::Started(state))
}

fn mount_running(state: &ClusterState, name: &str) -> bool {
    state.mount(name).is_some_and(|m| m.pid.is_some_and(|pid| is_mount_process(pid, m)))
}

/// Starts the primary mount as a detached process, records it, and waits until it is live. On
/// failure the mount is cleaned up (process and kernel mount) and recorded as not running.
async fn mount_detached(spec: &ClusterSpec, bin_dir: &Path, state: &mut ClusterState) -> Result<(), DevError> {
    let mut record = MountRecord::new(&state.dir, PRIMARY_MOUNT, None, spec.mount_options.clone());
    if let Some(old) = state.mount(PRIMARY_MOUNT) {
        record.mountpoint = old.mountpoint.clone();
        record.log_path = old.log_path.clone();
    }
    let mut child =
        spawn_mount(bin_dir, &record, &state.metaserver_endpoints(), &spec.mount_args, &spec.env, Ownership::Detached)?;
    record.pid = Some(child.id());
    match state.mount_mut(PRIMARY_MOUNT) {
        Some(slot) => *slot = record.clone(),
        None => state.mounts.insert(0, record.clone()),
    }
    state.write()?;
    let result = wait_mounted(&record, child.id(), DEV_MOUNT_READY_TIMEOUT).await;
    if result.is_err() {
        let pid = record.pid;
        let cleanup = record.clone();
        let _ = tokio::task::spawn_blocking(move || unmount_blocking(&cleanup, pid)).await;
        let _ = child.kill();
        let _ = child.wait();
        if let Some(m) = state.mount_mut(PRIMARY_MOUNT) {
            m.pid = None;
        }
        state.write()?;
    }
    result
}

/// What [`down`] did.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// Whether `cluster.json` existed.
    pub found: bool,
    /// Nodes that exited after SIGTERM.
    pub stopped: Vec<NodeRef>,
    /// Nodes that had to be SIGKILLed after the grace period.
    pub killed: Vec<NodeRef>,
    /// Mounts unmounted, with how (mounts that were not mounted are not listed).
    pub unmounted: Vec<(PathBuf, Unmounted)>,
    /// Whether data directories, logs and records were removed.
    pub purged: bool,
}

/// Stops the cluster recorded in `dir`. First its mounts: SIGTERM to each mount process, then
/// `fusermount3 -u` (lazily if need be) for whatever is still mounted, so nothing is left
/// stuck. Then the servers: SIGTERM to every recorded process that is still the node's server,
/// up to 10 s of grace, SIGKILL for the rest. Clears the pids in `cluster.json`
/// (keeping its ports and data directories for the next `up`) and removes `cluster.env`. With
/// `purge`, also removes every node's data directory and log, the records, and `dir` itself if
/// that leaves it empty — never anything outside `dir`.
pub async fn down(dir: &Path, purge: bool) -> Result<DownReport, DevError> {
    let dir = absolute(dir)?;
    let Some(mut state) = ClusterState::read(&dir)? else {
        return Ok(DownReport::default());
    };
    let mut report = DownReport { found: true, ..DownReport::default() };

    for mount in state.mounts.clone() {
        let pid = mount.pid;
        let record = mount.clone();
        let outcome = tokio::task::spawn_blocking(move || unmount_blocking(&record, pid))
            .await
            .map_err(|e| DevError::io("unmount", std::io::Error::other(e.to_string())))??;
        if outcome != Unmounted::NotMounted {
            report.unmounted.push((mount.mountpoint.clone(), outcome));
        }
    }
    for mount in &mut state.mounts {
        mount.pid = None;
    }
    // Recorded now: if stopping a server fails below, the mounts are already known to be gone.
    state.write()?;

    let running: Vec<(NodeInfo, u32)> = state
        .nodes
        .iter()
        .filter_map(|n| n.pid.filter(|&pid| is_node_process(pid, n)).map(|pid| (n.clone(), pid)))
        .collect();
    for (node, pid) in &running {
        signal(node, *pid, Signal::SIGTERM)?;
        // Ignored on purpose: it may already be gone. Thaws a SIGSTOPped node so it can exit.
        let _ = signal(node, *pid, Signal::SIGCONT);
    }
    let alive = |running: &[(NodeInfo, u32)]| -> Vec<(NodeInfo, u32)> {
        running.iter().filter(|(n, pid)| is_node_process(*pid, n)).cloned().collect()
    };
    wait_until(DEV_STOP_GRACE, || alive(&running).is_empty()).await;
    let leftovers = alive(&running);
    for (node, pid) in &leftovers {
        tracing::warn!(node = %node.node_ref(), pid, "did not stop within the grace period; sending SIGKILL");
        let _ = signal(node, *pid, Signal::SIGKILL);
    }
    wait_until(DEV_KILL_WAIT, || alive(&leftovers).is_empty()).await;
    if let Some((node, pid)) = alive(&leftovers).into_iter().next() {
        return Err(DevError::NodeRunning { node: node.node_ref(), pid });
    }
    report.killed = leftovers.iter().map(|(n, _)| n.node_ref()).collect();
    report.stopped = running.iter().map(|(n, _)| n.node_ref()).filter(|n| !report.killed.contains(n)).collect();

    for node in &mut state.nodes {
        node.pid = None;
    }
    state.remove_env()?;
    if purge {
        purge_cluster(&state)?;
        report.purged = true;
    } else {
        state.write()?;
    }
    Ok(report)
}

/// One node as `cairn dev status` shows it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub node: NodeInfo,
    /// Whether the recorded pid is alive and still this node's server.
    pub alive: bool,
    /// The node's `GET /status` JSON, or why it could not be fetched.
    pub status: Result<serde_json::Value, String>,
}

/// The nodes recorded in `dir` with their liveness and `/status`; `None` if there is no
/// `cluster.json`.
pub async fn status(dir: &Path) -> Result<Option<Vec<NodeReport>>, DevError> {
    let dir = absolute(dir)?;
    let Some(state) = ClusterState::read(&dir)? else {
        return Ok(None);
    };
    let mut reports = Vec::new();
    for node in state.nodes {
        let alive = node.pid.is_some_and(|pid| is_node_process(pid, &node));
        let status = if alive {
            fetch_status_json(node.addrs.http).await.map_err(|e| e.to_string())
        } else {
            Err("not running".to_owned())
        };
        reports.push(NodeReport { node, alive, status });
    }
    Ok(Some(reports))
}

fn purge_cluster(state: &ClusterState) -> Result<(), DevError> {
    let inside = |path: &Path| path.starts_with(&state.dir) && path != state.dir;
    let mut log_dirs: Vec<PathBuf> = Vec::new();
    for node in &state.nodes {
        if inside(&node.data_dir) {
            match std::fs::remove_dir_all(&node.data_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DevError::io(format!("remove {}", node.data_dir.display()), e));
                }
                _ => {}
            }
        }
        if inside(&node.log_path) {
            remove_if_exists(&node.log_path)?;
            if let Some(parent) = node.log_path.parent() {
                log_dirs.push(parent.to_path_buf());
            }
        }
    }
    for mount in &state.mounts {
        // Unmounted by now; only an empty mountpoint directory is removed, never its contents.
        if inside(&mount.mountpoint) {
            let _ = std::fs::remove_dir(&mount.mountpoint);
        }
        if inside(&mount.log_path) {
            remove_if_exists(&mount.log_path)?;
            if let Some(parent) = mount.log_path.parent() {
                log_dirs.push(parent.to_path_buf());
            }
        }
    }
    remove_if_exists(&state.dir.join(CLUSTER_STATE_FILE))?;
    // Directories go only if empty: anything else in them is not ours to delete.
    log_dirs.dedup();
    for log_dir in log_dirs {
        if inside(&log_dir) {
            let _ = std::fs::remove_dir(&log_dir);
        }
    }
    let _ = std::fs::remove_dir(&state.dir);
    Ok(())
}

fn absolute(dir: &Path) -> Result<PathBuf, DevError> {
    std::path::absolute(dir).map_err(|e| DevError::io(format!("resolve {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{NodeAddrs, NodeId};
    use std::net::{Ipv4Addr, SocketAddr};

    fn recorded(dir: &Path, pid: Option<u32>) -> ClusterState {
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let node = NodeInfo {
            kind: ServiceKind::Coordinator,
            id: NodeId(1),
            pid,
            addrs: NodeAddrs { client: addr(1), peer: addr(2), http: addr(3) },
            data_dir: dir.join("coordinator-1"),
            log_path: dir.join("logs").join("coordinator-1.log"),
        };
        ClusterState::new(dir.to_path_buf(), vec![node])
    }

    #[tokio::test]
    async fn down_without_a_cluster_is_a_no_op() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let report = down(tmp.path(), true).await.expect("down");
        assert!(!report.found);
    }

    #[tokio::test]
    async fn down_never_signals_a_pid_that_is_not_the_node() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Our own pid: alive, but its command line does not name the node's data dir.
        let state = recorded(tmp.path(), Some(std::process::id()));
        state.write().expect("write");
        state.write_env().expect("env");
        let report = down(tmp.path(), false).await.expect("down");
        assert!(report.found && report.stopped.is_empty() && report.killed.is_empty());
        let after = ClusterState::read(tmp.path()).expect("read").expect("state kept");
        assert_eq!(after.nodes[0].pid, None);
        assert!(!tmp.path().join("cluster.env").exists());
    }

    #[tokio::test]
    async fn purge_removes_only_what_the_cluster_owns() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("dev");
        let state = recorded(&dir, None);
        std::fs::create_dir_all(state.nodes[0].data_dir.join("db")).expect("mkdir");
        std::fs::create_dir_all(dir.join("logs")).expect("mkdir");
        std::fs::write(&state.nodes[0].log_path, "log").expect("write");
        std::fs::write(dir.join("notes.txt"), "mine").expect("write");
        state.write().expect("write");
        let report = down(&dir, true).await.expect("down");
        assert!(report.purged);
        assert!(!state.nodes[0].data_dir.exists());
        assert!(!dir.join("logs").exists());
        assert!(!dir.join(CLUSTER_STATE_FILE).exists());
        assert!(dir.join("notes.txt").exists(), "foreign files survive a purge");
    }

    #[tokio::test]
    async fn status_reports_dead_nodes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(status(tmp.path()).await.expect("status").is_none());
        recorded(tmp.path(), None).write().expect("write");
        let reports = status(tmp.path()).await.expect("status").expect("some");
        assert_eq!(reports.len(), 1);
        assert!(!reports[0].alive);
        assert!(reports[0].status.is_err());
    }
}
