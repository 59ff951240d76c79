//! Local multi-process Cairn clusters, shared by `cairn dev up/down/status` and by the
//! multi-process integration tests (which must start servers exactly as developers do).
//!
//! # What it promises
//! * Servers are the real binaries (`cairn-coordinator`, ...), found by [`bin_dir`], started
//!   as separate processes on free `127.0.0.1` ports, each with its own data directory under
//!   the cluster directory and its stdout+stderr appended to `DIR/logs/<node>.log`.
//! * Every start records the cluster in `DIR/cluster.json` (node ids, pids, addresses) and
//!   writes the shell-sourceable `DIR/cluster.env`, so a cluster leaked by a crashed test can be
//!   inspected and cleaned up with `cairn dev down --dir DIR`.
//! * A restarted cluster reuses the data directories and, when they are still free, the ports
//!   recorded in `cluster.json`, so data (and the Raft membership's addresses) survive.
//! * Readiness means every expected node answers `GET /health` with 200; a node that exits
//!   while being waited for fails the wait at once, and every failure carries the tail of the
//!   nodes' logs.
//!
//! * With [`ClusterSpec::mount`], the cluster is also mounted at `DIR/mnt` by a supervised
//!   `cairn mount --foreground` child (log `DIR/logs/mount-mnt.log`), and the mount is live
//!   before the start returns; `cluster.env` then names it (`CAIRN_MOUNT`). Tests add more mounts
//!   of the same cluster with [`Cluster::add_mount`]. Mounts are unmounted before the servers stop.
//!
//! # Two owners
//! * [`Cluster`]: owned by a test. Children stay in the caller's process group and are
//!   SIGKILLed and reaped on drop.
//! * [`up`] / [`down`] / [`status`]: `cairn dev`. Children get their own process group (so a
//!   Ctrl-C at the terminal does not reach them) and outlive the `cairn` process; `down` finds
//!   them again through `cluster.json`, checking `/proc/<pid>/cmdline` so a reused pid is never
//!   signalled.
//!
//! # What it never does
//! It never starts or imitates a service whose binary does not exist yet: the service kinds are
//! the variants of [`ServiceKind`], and new services are added there (see the extension-point
//! comments in `layout.rs` and `state.rs`).
//!
//! Ports are found by binding port 0 and releasing it; another process may grab a port before
//! the server binds it. That race is accepted for a development and test tool.

mod binaries;
mod cluster;
mod daemon;
mod error;
mod health;
mod layout;
mod logs;
mod mount;
mod ports;
mod process;
mod state;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use binaries::{bin_dir, bin_dir_from, binary_path, BIN_DIR_ENV};
pub use cluster::Cluster;
pub use daemon::{down, status, up, DownReport, NodeReport, UpOutcome};
pub use error::DevError;
pub use health::{fetch_status, leader, probe_health, NodeStatus};
pub use layout::{disk_available_bytes, initial_cluster, initial_cluster_of, ClusterSpec, NodeAddrs};
pub use logs::{scan_log_errors, tail_lines, LogLine};
pub use mount::{
    force_unmount, is_fuse_mounted, mount_fstype, unmount_blocking, MountRecord, Unmounted, DEFAULT_MOUNT_OPTIONS,
    MOUNT_BINARY, PRIMARY_MOUNT,
};
pub use nix::sys::signal::Signal;
pub use ports::{pick_free_ports, PortAllocator};
pub use state::{render_env, ClusterState, NodeInfo, CLUSTER_ENV_FILE, CLUSTER_STATE_FILE};

/// A server's id inside its Raft group (`--node-id`), 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The kinds of server process a dev cluster can run.
///
/// Extension point: a new service joins here with its binary name, its command line
/// (`layout.rs`) and its `cluster.env` keys (`state.rs`). Kinds start in the order of
/// [`ServiceKind::ALL`], each kind once the previous ones are healthy (chunkservers register in
/// the coordinators; metaservers start last, after the coordinators and chunkservers they will
/// use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServiceKind {
    Coordinator,
    Chunkserver,
    Metaserver,
}

impl ServiceKind {
    /// Every kind, in start order.
    pub const ALL: &'static [ServiceKind] =
        &[ServiceKind::Coordinator, ServiceKind::Chunkserver, ServiceKind::Metaserver];

    /// Short name used in file names and messages (`coordinator`).
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Coordinator => "coordinator",
            ServiceKind::Chunkserver => "chunkserver",
            ServiceKind::Metaserver => "metaserver",
        }
    }

    /// File name of the server binary.
    pub fn binary_name(self) -> &'static str {
        match self {
            ServiceKind::Coordinator => "cairn-coordinator",
            ServiceKind::Chunkserver => "cairn-chunkserver",
            ServiceKind::Metaserver => "cairn-metaserver",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one server process of a cluster: its kind and its id within that kind.
///
/// A bare [`NodeId`] converts into a coordinator reference, the only Raft group that exists
/// today, so tests can write `cluster.kill(NodeId(2), Signal::SIGKILL)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    pub kind: ServiceKind,
    pub id: NodeId,
}

impl NodeRef {
    pub const fn coordinator(id: NodeId) -> Self {
        NodeRef { kind: ServiceKind::Coordinator, id }
    }

    pub const fn chunkserver(id: NodeId) -> Self {
        NodeRef { kind: ServiceKind::Chunkserver, id }
    }

    pub const fn metaserver(id: NodeId) -> Self {
        NodeRef { kind: ServiceKind::Metaserver, id }
    }
}

impl From<NodeId> for NodeRef {
    fn from(id: NodeId) -> Self {
        NodeRef::coordinator(id)
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind, self.id)
    }
}
