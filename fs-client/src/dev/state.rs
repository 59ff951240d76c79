//! `DIR/cluster.json` (what was started, where, with which pids) and `DIR/cluster.env`
//! (the shell-sourceable endpoints).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mount::{MountRecord, PRIMARY_MOUNT};
use super::{DevError, NodeAddrs, NodeId, NodeRef, ServiceKind};

/// File in the cluster directory recording the cluster.
pub const CLUSTER_STATE_FILE: &str = "cluster.json";
/// File in the cluster directory with `KEY=VALUE` lines for shells and tools.
pub const CLUSTER_ENV_FILE: &str = "cluster.env";

const STATE_FORMAT_VERSION: u32 = 1;

/// One server process of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub kind: ServiceKind,
    pub id: NodeId,
    /// Pid of the running process; `None` when it is not running (never started, stopped,
    /// or after `cairn dev down`).
    pub pid: Option<u32>,
    pub addrs: NodeAddrs,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl NodeInfo {
    pub fn node_ref(&self) -> NodeRef {
        NodeRef { kind: self.kind, id: self.id }
    }
}

/// The contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub format_version: u32,
    /// Absolute cluster directory.
    pub dir: PathBuf,
    pub nodes: Vec<NodeInfo>,
    /// FUSE mounts of the cluster (`cairn mount` processes), primary (`mnt`) first. Absent in
    /// records written before mounts existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountRecord>,
}

impl ClusterState {
    pub fn new(dir: PathBuf, nodes: Vec<NodeInfo>) -> Self {
        ClusterState { format_version: STATE_FORMAT_VERSION, dir, nodes, mounts: Vec::new() }
    }

    pub fn mount(&self, name: &str) -> Option<&MountRecord> {
        self.mounts.iter().find(|m| m.name == name)
    }

    pub(crate) fn mount_mut(&mut self, name: &str) -> Option<&mut MountRecord> {
        self.mounts.iter_mut().find(|m| m.name == name)
    }

    /// The mountpoint `CAIRN_MOUNT` names: the primary mount if it runs, else the first
    /// running one.
    pub fn active_mountpoint(&self) -> Option<&Path> {
        let running = || self.mounts.iter().filter(|m| m.pid.is_some());
        running().find(|m| m.name == PRIMARY_MOUNT).or_else(|| running().next()).map(|m| m.mountpoint.as_path())
    }

    pub fn node(&self, node: NodeRef) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.node_ref() == node)
    }

    pub fn count(&self, kind: ServiceKind) -> usize {
        self.nodes.iter().filter(|n| n.kind == kind).count()
    }

    /// Client addresses of the coordinators, ordered by id.
    pub fn coordinator_endpoints(&self) -> Vec<String> {
        self.addrs_of(ServiceKind::Coordinator, |a| a.client)
    }

    /// HTTP addresses of the coordinators, ordered by id.
    pub fn coordinator_http(&self) -> Vec<String> {
        self.addrs_of(ServiceKind::Coordinator, |a| a.http)
    }

    /// Chunk service (gRPC) addresses of the chunkservers, ordered by id.
    pub fn chunkserver_endpoints(&self) -> Vec<String> {
        self.addrs_of(ServiceKind::Chunkserver, |a| a.client)
    }

    /// HTTP addresses of the chunkservers, ordered by id.
    pub fn chunkserver_http(&self) -> Vec<String> {
        self.addrs_of(ServiceKind::Chunkserver, |a| a.http)
    }

    /// MetaService (gRPC) addresses of the metaservers, ordered by id.
    pub fn metaserver_endpoints(&self) -> Vec<String> {
        self.addrs_of(ServiceKind::Metaserver, |a| a.client)
    }

    /// HTTP addresses of the metaservers, ordered by id.
    pub fn metaserver_http(&self) -> Vec<String> {
        self.addrs_of(ServiceKind::Metaserver, |a| a.http)
    }

    fn addrs_of(&self, kind: ServiceKind, pick: fn(&NodeAddrs) -> std::net::SocketAddr) -> Vec<String> {
        let mut nodes: Vec<&NodeInfo> = self.nodes.iter().filter(|n| n.kind == kind).collect();
        nodes.sort_by_key(|n| n.id);
        nodes.iter().map(|n| pick(&n.addrs).to_string()).collect()
    }

    /// `cluster.json` in `dir`, or `None` if there is none.
    pub fn read(dir: &Path) -> Result<Option<ClusterState>, DevError> {
        let path = dir.join(CLUSTER_STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DevError::io(format!("read {}", path.display()), e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| DevError::State { path, source })
    }

    /// Writes `cluster.json` atomically (temporary file, then rename).
    pub fn write(&self) -> Result<(), DevError> {
        let path = self.dir.join(CLUSTER_STATE_FILE);
        let text =
            serde_json::to_string_pretty(self).map_err(|source| DevError::State { path: path.clone(), source })?;
        write_atomically(&path, text.as_bytes())
    }

    /// Writes `cluster.env` (see [`render_env`]).
    pub fn write_env(&self) -> Result<PathBuf, DevError> {
        let path = self.env_path();
        write_atomically(&path, render_env(self).as_bytes())?;
        Ok(path)
    }

    pub fn env_path(&self) -> PathBuf {
        self.dir.join(CLUSTER_ENV_FILE)
    }

    /// Removes `cluster.env` (it describes a running cluster); a missing file is fine.
    pub fn remove_env(&self) -> Result<(), DevError> {
        remove_if_exists(&self.env_path())
    }
}

/// `KEY=VALUE` lines describing the cluster, sourceable by POSIX shells (values are quoted only
/// when they need it, so the file also works as a plain env file when paths are ordinary).
///
/// Extension point: each [`ServiceKind`] contributes its keys in the match below. A running
/// mount adds `CAIRN_MOUNT`.
pub fn render_env(state: &ClusterState) -> String {
    let mut entries: Vec<(&str, String)> = vec![("CAIRN_DIR", state.dir.display().to_string())];
    for &kind in ServiceKind::ALL {
        if state.count(kind) == 0 {
            continue;
        }
        match kind {
            ServiceKind::Coordinator => {
                entries.push(("CAIRN_COORDINATOR_ENDPOINTS", state.coordinator_endpoints().join(",")));
                entries.push(("CAIRN_COORDINATOR_HTTP", state.coordinator_http().join(",")));
            }
            ServiceKind::Chunkserver => {
                entries.push(("CAIRN_CHUNKSERVER_ENDPOINTS", state.chunkserver_endpoints().join(",")));
                entries.push(("CAIRN_CHUNKSERVER_HTTP", state.chunkserver_http().join(",")));
            }
            ServiceKind::Metaserver => {
                entries.push(("CAIRN_METASERVER_ENDPOINTS", state.metaserver_endpoints().join(",")));
                entries.push(("CAIRN_METASERVER_HTTP", state.metaserver_http().join(",")));
            }
        }
    }
    if let Some(mountpoint) = state.active_mountpoint() {
        entries.push(("CAIRN_MOUNT", mountpoint.display().to_string()));
    }
    entries.into_iter().map(|(key, value)| format!("{key}={}\n", shell_quote(&value))).collect()
}

/// Single-quotes `value` for a POSIX shell unless every character is obviously safe.
fn shell_quote(value: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/.,:_-+=@%".contains(c);
    if !value.is_empty() && value.chars().all(safe) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DevError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| DevError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| DevError::io(format!("rename {} into place", tmp.display()), e))
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), DevError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(DevError::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn state(dir: &str) -> ClusterState {
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let nodes = (1..=3u16)
            .rev()
            .map(|i| NodeInfo {
                kind: ServiceKind::Coordinator,
                id: NodeId(u64::from(i)),
                pid: Some(100 + u32::from(i)),
                addrs: NodeAddrs { client: addr(2379 + i * 10), peer: addr(2380 + i * 10), http: addr(2381 + i * 10) },
                data_dir: PathBuf::from(format!("{dir}/coordinator-{i}")),
                log_path: PathBuf::from(format!("{dir}/logs/coordinator-{i}.log")),
            })
            .collect();
        ClusterState::new(PathBuf::from(dir), nodes)
    }

    #[test]
    fn env_lists_coordinator_endpoints_in_id_order() {
        assert_eq!(
            render_env(&state("/tmp/cairn")),
            "CAIRN_DIR=/tmp/cairn\n\
             CAIRN_COORDINATOR_ENDPOINTS=127.0.0.1:2389,127.0.0.1:2399,127.0.0.1:2409\n\
             CAIRN_COORDINATOR_HTTP=127.0.0.1:2391,127.0.0.1:2401,127.0.0.1:2411\n"
        );
    }

    #[test]
    fn env_lists_chunkserver_endpoints_after_coordinators() {
        let mut s = state("/tmp/cairn");
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        for i in [2u16, 1] {
            s.nodes.push(NodeInfo {
                kind: ServiceKind::Chunkserver,
                id: NodeId(u64::from(i)),
                pid: None,
                addrs: NodeAddrs { client: addr(7000 + i * 10), peer: addr(7001 + i * 10), http: addr(7002 + i * 10) },
                data_dir: PathBuf::from(format!("/tmp/cairn/chunkserver-{i}")),
                log_path: PathBuf::from(format!("/tmp/cairn/logs/chunkserver-{i}.log")),
            });
        }
        let env = render_env(&s);
        assert!(
            env.ends_with(
                "CAIRN_CHUNKSERVER_ENDPOINTS=127.0.0.1:7010,127.0.0.1:7020\n\
                 CAIRN_CHUNKSERVER_HTTP=127.0.0.1:7012,127.0.0.1:7022\n"
            ),
            "{env}"
        );
        assert_eq!(s.chunkserver_endpoints(), ["127.0.0.1:7010", "127.0.0.1:7020"]);
    }

    #[test]
    fn env_lists_metaserver_endpoints() {
        let mut s = state("/tmp/cairn");
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        for i in [2u16, 1] {
            s.nodes.push(NodeInfo {
                kind: ServiceKind::Metaserver,
                id: NodeId(u64::from(i)),
                pid: None,
                addrs: NodeAddrs { client: addr(8000 + i * 10), peer: addr(8001 + i * 10), http: addr(8002 + i * 10) },
                data_dir: PathBuf::from(format!("/tmp/cairn/metaserver-{i}")),
                log_path: PathBuf::from(format!("/tmp/cairn/logs/metaserver-{i}.log")),
            });
        }
        let env = render_env(&s);
        assert!(
            env.ends_with(
                "CAIRN_METASERVER_ENDPOINTS=127.0.0.1:8010,127.0.0.1:8020\n\
                 CAIRN_METASERVER_HTTP=127.0.0.1:8012,127.0.0.1:8022\n"
            ),
            "{env}"
        );
    }

    #[test]
    fn env_names_the_running_mount() {
        let mut s = state("/tmp/cairn");
        let mut record = MountRecord::new(Path::new("/tmp/cairn"), "mnt", None, vec!["allow_other".into()]);
        s.mounts.push(record.clone());
        assert!(!render_env(&s).contains("CAIRN_MOUNT"), "a stopped mount is not named");
        record.pid = Some(7);
        s.mounts[0] = record;
        assert!(render_env(&s).ends_with("CAIRN_MOUNT=/tmp/cairn/mnt\n"), "{}", render_env(&s));
        // Older records have no "mounts" field.
        let json = serde_json::to_string(&state("/x")).expect("json");
        assert!(!json.contains("mounts"));
        let parsed: ClusterState = serde_json::from_str(&json).expect("parse");
        assert!(parsed.mounts.is_empty());
    }

    #[test]
    fn env_quotes_unusual_paths() {
        let env = render_env(&state("/tmp/my cairn's"));
        assert!(env.starts_with("CAIRN_DIR='/tmp/my cairn'\\''s'\n"), "{env}");
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(ClusterState::read(tmp.path()).expect("read"), None);
        let mut s = state("/x");
        s.dir = tmp.path().to_path_buf();
        s.write().expect("write");
        assert_eq!(ClusterState::read(tmp.path()).expect("read"), Some(s.clone()));
        let env_path = s.write_env().expect("env");
        assert!(std::fs::read_to_string(env_path).expect("read env").contains("CAIRN_COORDINATOR_ENDPOINTS="));
        s.remove_env().expect("remove");
        s.remove_env().expect("remove twice");
    }
}
