//! What a cluster looks like on disk and on the network, and the command line of each node.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mount::DEFAULT_MOUNT_OPTIONS;
use super::state::{ClusterState, NodeInfo};
use super::{DevError, NodeId, NodeRef, PortAllocator, ServiceKind};
use crate::limits::{DEV_CHUNKSERVERS_MAX, DEV_COORDINATORS_MAX, DEV_METASERVERS_MAX, DEV_READY_TIMEOUT_DEFAULT};

/// What cluster to start and where.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster directory: node data dirs, `logs/`, `cluster.json`, `cluster.env`.
    pub dir: PathBuf,
    /// Size of the coordinator Raft group (ids `1..=coordinators`).
    pub coordinators: usize,
    /// Number of chunkservers (ids `1..=chunkservers`); 0 runs none. They start once the
    /// coordinators are healthy and register in them.
    pub chunkservers: usize,
    /// Size of the metaserver Raft group (ids `1..=metaservers`); 0 runs none. They start
    /// after the coordinators and chunkservers are healthy.
    pub metaservers: usize,
    /// Overall deadline for every node to report healthy.
    pub ready_timeout: Duration,
    /// Where the server binaries are; `None` means [`super::bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// Extra arguments appended to every coordinator's command line (e.g. tuning flags a test
    /// needs). Must be flags the coordinator understands.
    pub coordinator_args: Vec<OsString>,
    /// Extra arguments appended to every chunkserver's command line (e.g. `--scrub-interval`).
    pub chunkserver_args: Vec<OsString>,
    /// Extra arguments appended to every metaserver's command line (e.g. Raft timings).
    pub metaserver_args: Vec<OsString>,
    /// Extra environment for every server and mount process (e.g. `RUST_LOG`). `NO_COLOR=1` is
    /// always set so logs stay greppable.
    pub env: Vec<(OsString, OsString)>,
    /// Mount the cluster at `DIR/mnt` once every server is healthy (`cairn mount --foreground`
    /// as a supervised child). Needs metaservers and chunkservers.
    pub mount: bool,
    /// `-o` options of every mount the launcher makes (default: `allow_other`).
    pub mount_options: Vec<String>,
    /// Extra arguments appended to every `cairn mount` command line.
    pub mount_args: Vec<OsString>,
}

impl ClusterSpec {
    /// Three coordinators, three chunkservers and three metaservers in `dir`, with default
    /// timeouts.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            dir: dir.into(),
            coordinators: 3,
            chunkservers: 3,
            metaservers: 3,
            ready_timeout: DEV_READY_TIMEOUT_DEFAULT,
            bin_dir: None,
            coordinator_args: Vec::new(),
            chunkserver_args: Vec::new(),
            metaserver_args: Vec::new(),
            env: Vec::new(),
            mount: false,
            mount_options: DEFAULT_MOUNT_OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
            mount_args: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), DevError> {
        if self.coordinators == 0 || self.coordinators > DEV_COORDINATORS_MAX {
            return Err(DevError::InvalidSpec(format!(
                "coordinators must be between 1 and {DEV_COORDINATORS_MAX}, not {}",
                self.coordinators
            )));
        }
        if self.chunkservers > DEV_CHUNKSERVERS_MAX {
            return Err(DevError::InvalidSpec(format!(
                "chunkservers must be at most {DEV_CHUNKSERVERS_MAX}, not {}",
                self.chunkservers
            )));
        }
        if self.metaservers > DEV_METASERVERS_MAX {
            return Err(DevError::InvalidSpec(format!(
                "metaservers must be at most {DEV_METASERVERS_MAX}, not {}",
                self.metaservers
            )));
        }
        if self.mount && (self.metaservers == 0 || self.chunkservers == 0) {
            return Err(DevError::InvalidSpec("a mount needs metaservers and chunkservers".into()));
        }
        if self.ready_timeout.is_zero() {
            return Err(DevError::InvalidSpec("ready_timeout must be positive".into()));
        }
        Ok(())
    }

    /// How many nodes of `kind` this spec asks for.
    pub(crate) fn count(&self, kind: ServiceKind) -> usize {
        match kind {
            ServiceKind::Coordinator => self.coordinators,
            ServiceKind::Chunkserver => self.chunkservers,
            ServiceKind::Metaserver => self.metaservers,
        }
    }

    pub(crate) fn extra_args(&self, kind: ServiceKind) -> &[OsString] {
        match kind {
            ServiceKind::Coordinator => &self.coordinator_args,
            ServiceKind::Chunkserver => &self.chunkserver_args,
            ServiceKind::Metaserver => &self.metaserver_args,
        }
    }
}

/// The three listening addresses of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// Client API (etcd gRPC for a coordinator, the chunk service for a chunkserver).
    pub client: SocketAddr,
    /// Raft transport between replicas (reserved but unused by a chunkserver, which replicates
    /// over its client port).
    pub peer: SocketAddr,
    /// Plain HTTP: `/health`, `/metrics`, `/status`.
    pub http: SocketAddr,
}

/// `1=127.0.0.1:P1,2=127.0.0.1:P2,...` from the coordinators' peer addresses, ordered by id.
pub fn initial_cluster(nodes: &[NodeInfo]) -> String {
    initial_cluster_of(nodes, ServiceKind::Coordinator)
}

/// `1=127.0.0.1:P1,...` from the peer addresses of the nodes of one Raft group (`kind`),
/// ordered by id.
pub fn initial_cluster_of(nodes: &[NodeInfo], kind: ServiceKind) -> String {
    let mut members: Vec<(NodeId, SocketAddr)> =
        nodes.iter().filter(|n| n.kind == kind).map(|n| (n.id, n.addrs.peer)).collect();
    members.sort();
    members.iter().map(|(id, addr)| format!("{id}={addr}")).collect::<Vec<_>>().join(",")
}

/// `127.0.0.1:P1,127.0.0.1:P2,...`: the coordinators' client addresses, ordered by id.
pub fn coordinator_endpoints(nodes: &[NodeInfo]) -> String {
    let mut members: Vec<(NodeId, SocketAddr)> =
        nodes.iter().filter(|n| n.kind == ServiceKind::Coordinator).map(|n| (n.id, n.addrs.client)).collect();
    members.sort();
    members.iter().map(|(_, addr)| addr.to_string()).collect::<Vec<_>>().join(",")
}

/// The command line (without the binary) that starts `node` of the cluster `nodes`.
///
/// Extension point: each new [`ServiceKind`] gets its arm here, following its binary's CLI.
pub(crate) fn command_args(node: &NodeInfo, nodes: &[NodeInfo], extra: &[OsString]) -> Vec<OsString> {
    let mut args: Vec<OsString> = match node.kind {
        ServiceKind::Coordinator => vec![
            "--node-id".into(),
            node.id.to_string().into(),
            "--data-dir".into(),
            node.data_dir.clone().into_os_string(),
            "--listen-client".into(),
            node.addrs.client.to_string().into(),
            "--listen-peer".into(),
            node.addrs.peer.to_string().into(),
            "--listen-http".into(),
            node.addrs.http.to_string().into(),
            "--initial-cluster".into(),
            initial_cluster(nodes).into(),
        ],
        ServiceKind::Chunkserver => vec![
            "--id".into(),
            node.id.to_string().into(),
            "--data-dir".into(),
            node.data_dir.clone().into_os_string(),
            "--listen".into(),
            node.addrs.client.to_string().into(),
            "--listen-http".into(),
            node.addrs.http.to_string().into(),
            "--coordinator-endpoints".into(),
            coordinator_endpoints(nodes).into(),
        ],
        ServiceKind::Metaserver => vec![
            "--node-id".into(),
            node.id.to_string().into(),
            "--data-dir".into(),
            node.data_dir.clone().into_os_string(),
            "--listen-client".into(),
            node.addrs.client.to_string().into(),
            "--listen-peer".into(),
            node.addrs.peer.to_string().into(),
            "--listen-http".into(),
            node.addrs.http.to_string().into(),
            "--initial-cluster".into(),
            initial_cluster_of(nodes, ServiceKind::Metaserver).into(),
            "--coordinator-endpoints".into(),
            coordinator_endpoints(nodes).into(),
        ],
    };
    args.extend(extra.iter().cloned());
    args
}

/// Lays out the nodes of `spec` in the absolute directory `dir`. Nodes recorded in `previous`
/// keep their data directory, log and, where still free, their ports.
pub(crate) fn plan_nodes(
    spec: &ClusterSpec,
    dir: &Path,
    previous: Option<&ClusterState>,
) -> Result<Vec<NodeInfo>, DevError> {
    if let Some(previous) = previous {
        let recorded = previous.count(ServiceKind::Coordinator);
        if recorded != 0 && recorded != spec.coordinators {
            return Err(DevError::SizeMismatch { dir: dir.to_path_buf(), recorded, requested: spec.coordinators });
        }
    }

    let mut ports = PortAllocator::new();
    let mut nodes = Vec::new();
    for &kind in ServiceKind::ALL {
        for index in 1..=spec.count(kind) {
            let id = NodeId(index as u64);
            let node_ref = NodeRef { kind, id };
            let old = previous.and_then(|p| p.node(node_ref));
            let mut port = |pick: fn(&NodeAddrs) -> SocketAddr| -> Result<SocketAddr, DevError> {
                let preferred = old.map(|o| pick(&o.addrs).port());
                let port = ports.reserve(preferred)?;
                if let Some(preferred) = preferred.filter(|&p| p != port) {
                    // The Raft membership stored in the data directory still names the old
                    // address; the server must accept the new one from --initial-cluster.
                    tracing::warn!(node = %node_ref, preferred, port, "recorded port is busy; using another");
                }
                Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            };
            let addrs = NodeAddrs { client: port(|a| a.client)?, peer: port(|a| a.peer)?, http: port(|a| a.http)? };
            let name = node_ref.to_string();
            nodes.push(NodeInfo {
                kind,
                id,
                pid: None,
                addrs,
                data_dir: old.map_or_else(|| dir.join(&name), |o| o.data_dir.clone()),
                log_path: old.map_or_else(|| dir.join("logs").join(format!("{name}.log")), |o| o.log_path.clone()),
            });
        }
    }
    ports.release();
    Ok(nodes)
}

/// Bytes available to this process on the disk holding `dir` (none if `statvfs` fails): the
/// chunkservers of a cluster in `dir` refuse writes within their reserve of it.
pub fn disk_available_bytes(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    // The statvfs field types differ between platforms (u32 on some), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    Some((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, base: u16) -> NodeInfo {
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        NodeInfo {
            kind: ServiceKind::Coordinator,
            id: NodeId(id),
            pid: None,
            addrs: NodeAddrs { client: addr(base), peer: addr(base + 1), http: addr(base + 2) },
            data_dir: PathBuf::from(format!("/d/coordinator-{id}")),
            log_path: PathBuf::from(format!("/d/logs/coordinator-{id}.log")),
        }
    }

    #[test]
    fn initial_cluster_lists_peer_addrs_by_id() {
        let nodes = vec![node(2, 2000), node(1, 1000), node(3, 3000)];
        assert_eq!(initial_cluster(&nodes), "1=127.0.0.1:1001,2=127.0.0.1:2001,3=127.0.0.1:3001");
    }

    #[test]
    fn coordinator_command_line() {
        let nodes = vec![node(1, 1000), node(2, 2000)];
        let args = command_args(&nodes[1], &nodes, &["--extra".into()]);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--node-id",
                "2",
                "--data-dir",
                "/d/coordinator-2",
                "--listen-client",
                "127.0.0.1:2000",
                "--listen-peer",
                "127.0.0.1:2001",
                "--listen-http",
                "127.0.0.1:2002",
                "--initial-cluster",
                "1=127.0.0.1:1001,2=127.0.0.1:2001",
                "--extra",
            ]
        );
    }

    #[test]
    fn chunkserver_command_line() {
        let mut nodes = vec![node(1, 1000), node(2, 2000)];
        let mut chunkserver = node(1, 5000);
        chunkserver.kind = ServiceKind::Chunkserver;
        chunkserver.data_dir = PathBuf::from("/d/chunkserver-1");
        nodes.push(chunkserver.clone());
        let args = command_args(&chunkserver, &nodes, &["--scrub-interval".into(), "1s".into()]);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--id",
                "1",
                "--data-dir",
                "/d/chunkserver-1",
                "--listen",
                "127.0.0.1:5000",
                "--listen-http",
                "127.0.0.1:5002",
                "--coordinator-endpoints",
                "127.0.0.1:1000,127.0.0.1:2000",
                "--scrub-interval",
                "1s",
            ]
        );
    }

    #[test]
    fn metaserver_command_line() {
        let mut nodes = vec![node(1, 1000), node(2, 2000)];
        for (id, base) in [(1, 6000), (2, 6100)] {
            let mut m = node(id, base);
            m.kind = ServiceKind::Metaserver;
            m.data_dir = PathBuf::from(format!("/d/metaserver-{id}"));
            nodes.push(m);
        }
        let args = command_args(&nodes[3], &nodes, &[]);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--node-id",
                "2",
                "--data-dir",
                "/d/metaserver-2",
                "--listen-client",
                "127.0.0.1:6100",
                "--listen-peer",
                "127.0.0.1:6101",
                "--listen-http",
                "127.0.0.1:6102",
                "--initial-cluster",
                "1=127.0.0.1:6001,2=127.0.0.1:6101",
                "--coordinator-endpoints",
                "127.0.0.1:1000,127.0.0.1:2000",
            ]
        );
        let too_many = ClusterSpec { metaservers: DEV_METASERVERS_MAX + 1, ..ClusterSpec::new("/c") };
        assert!(too_many.validate().is_err());
    }

    #[test]
    fn plan_adds_chunkservers_after_coordinators() {
        let nodes = plan_nodes(&ClusterSpec::new("/c"), Path::new("/c"), None).expect("plan");
        let kinds: Vec<String> = nodes.iter().map(|n| n.node_ref().to_string()).collect();
        assert_eq!(
            kinds,
            [
                "coordinator-1",
                "coordinator-2",
                "coordinator-3",
                "chunkserver-1",
                "chunkserver-2",
                "chunkserver-3",
                "metaserver-1",
                "metaserver-2",
                "metaserver-3"
            ]
        );
        assert_eq!(nodes[3].data_dir, PathBuf::from("/c/chunkserver-1"));
        assert_eq!(nodes[6].data_dir, PathBuf::from("/c/metaserver-1"));
        let mut ports: Vec<u16> =
            nodes.iter().flat_map(|n| [n.addrs.client.port(), n.addrs.peer.port(), n.addrs.http.port()]).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 27);
        let too_many = ClusterSpec { chunkservers: DEV_CHUNKSERVERS_MAX + 1, ..ClusterSpec::new("/c") };
        assert!(too_many.validate().is_err());
    }

    #[test]
    fn plan_assigns_distinct_ports_and_dirs() {
        let spec = ClusterSpec { chunkservers: 0, metaservers: 0, ..ClusterSpec::new("/c") };
        let nodes = plan_nodes(&spec, Path::new("/c"), None).expect("plan");
        assert_eq!(nodes.len(), 3);
        let mut ports: Vec<u16> =
            nodes.iter().flat_map(|n| [n.addrs.client.port(), n.addrs.peer.port(), n.addrs.http.port()]).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 9);
        assert_eq!(nodes[0].data_dir, PathBuf::from("/c/coordinator-1"));
        assert_eq!(nodes[2].log_path, PathBuf::from("/c/logs/coordinator-3.log"));
    }

    #[test]
    fn plan_reuses_recorded_ports_and_dirs() {
        let first = plan_nodes(&ClusterSpec::new("/c"), Path::new("/c"), None).expect("plan");
        let mut previous = ClusterState::new(PathBuf::from("/c"), first.clone());
        previous.nodes[0].data_dir = PathBuf::from("/elsewhere/coordinator-1");
        let second = plan_nodes(&ClusterSpec::new("/c"), Path::new("/c"), Some(&previous)).expect("plan");
        // Ports were released after planning, so (barring a racing process) all are reused.
        assert_eq!(
            first.iter().map(|n| n.addrs).collect::<Vec<_>>(),
            second.iter().map(|n| n.addrs).collect::<Vec<_>>()
        );
        assert_eq!(second[0].data_dir, PathBuf::from("/elsewhere/coordinator-1"));
    }

    #[test]
    fn plan_rejects_a_different_group_size() {
        let first = plan_nodes(&ClusterSpec::new("/c"), Path::new("/c"), None).expect("plan");
        let previous = ClusterState::new(PathBuf::from("/c"), first);
        let spec = ClusterSpec { coordinators: 5, ..ClusterSpec::new("/c") };
        assert!(matches!(
            plan_nodes(&spec, Path::new("/c"), Some(&previous)),
            Err(DevError::SizeMismatch { recorded: 3, requested: 5, .. })
        ));
    }

    #[test]
    fn spec_validation() {
        assert!(ClusterSpec::new("/c").validate().is_ok());
        let zero = ClusterSpec { coordinators: 0, ..ClusterSpec::new("/c") };
        assert!(zero.validate().is_err());
    }
}
