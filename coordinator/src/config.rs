//! Coordinator configuration: command-line flags over an optional TOML file over defaults,
//! validated once into [`CoordinatorConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::rsm::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parse config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0} is required (flag or config file)")]
    Missing(&'static str),
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// Command-line flags of `cairn-coordinator`. Each overrides the same key of the config file.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "cairn-coordinator",
    version,
    about = "Cairn coordinator: Raft-replicated, etcd-v3-compatible KV, watch and leases"
)]
pub struct Flags {
    /// TOML config file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id within the cluster (a positive integer).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Directory holding this node's RocksDB and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for etcd-v3 gRPC clients, e.g. 127.0.0.1:2379.
    #[arg(long)]
    pub listen_client: Option<SocketAddr>,
    /// Address for Raft traffic between coordinators, e.g. 127.0.0.1:2380.
    #[arg(long)]
    pub listen_peer: Option<SocketAddr>,
    /// Address for /health, /status and /metrics over HTTP.
    #[arg(long)]
    pub listen_http: Option<SocketAddr>,
    /// Peer address this node announces (defaults to --listen-peer).
    #[arg(long)]
    pub advertise_peer: Option<String>,
    /// Client address this node announces in the member list (defaults to --listen-client).
    #[arg(long)]
    pub advertise_client: Option<String>,
    /// Human-readable member name (defaults to coordinator-<node id>).
    #[arg(long)]
    pub name: Option<String>,
    /// Members of a new cluster: `1=127.0.0.1:2380,2=127.0.0.1:2381,...` (peer addresses).
    /// Used only when the data dir is empty; the lowest id bootstraps the cluster.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Raft heartbeat interval, e.g. "100ms".
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// Minimum election timeout, e.g. "1s" (the maximum is twice this).
    #[arg(long)]
    pub election_timeout: Option<String>,
    /// Applied entries between snapshots (the log is purged behind a snapshot).
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Interval of progress notifications on watches that asked for them, e.g. "10m".
    #[arg(long)]
    pub watch_progress_notify_interval: Option<String>,
    /// Raise the NOSPACE alarm (refuse writes) when the data dir's disk has less free space.
    #[arg(long)]
    pub disk_free_min_bytes: Option<u64>,
}

/// The config file: same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen_client: Option<SocketAddr>,
    listen_peer: Option<SocketAddr>,
    listen_http: Option<SocketAddr>,
    advertise_peer: Option<String>,
    advertise_client: Option<String>,
    name: Option<String>,
    initial_cluster: Option<String>,
    heartbeat_interval: Option<String>,
    election_timeout: Option<String>,
    snapshot_count: Option<u64>,
    watch_progress_notify_interval: Option<String>,
    disk_free_min_bytes: Option<u64>,
}

/// Validated configuration of one coordinator node.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen_client: SocketAddr,
    pub listen_peer: SocketAddr,
    pub listen_http: SocketAddr,
    pub advertise_peer: String,
    pub advertise_client: String,
    pub name: String,
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub watch_progress_notify_interval_ms: u64,
    pub disk_free_min_bytes: u64,
}

/// Parses a humane duration ("100ms", "1s") into milliseconds.
pub fn parse_duration_ms(field: &'static str, text: &str) -> Result<u64, ConfigError> {
    humantime::parse_duration(text)
        .map(|d: Duration| d.as_millis() as u64)
        .map_err(|e| ConfigError::Invalid { field, message: format!("{text:?}: {e}") })
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| ConfigError::Invalid {
            field: "initial_cluster",
            message: format!("{part:?} is not id=host:port"),
        })?;
        let id: NodeId = id.trim().parse().map_err(|_| ConfigError::Invalid {
            field: "initial_cluster",
            message: format!("{id:?} is not a node id"),
        })?;
        if id == 0 {
            return Err(ConfigError::Invalid { field: "initial_cluster", message: "node id 0 is reserved".into() });
        }
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(ConfigError::Invalid { field: "initial_cluster", message: format!("node {id} listed twice") });
        }
    }
    Ok(members)
}

/// Reads a TOML config file into `T`, or `T::default()` when there is none.
pub fn read_toml<T: serde::de::DeserializeOwned + Default>(path: Option<&std::path::Path>) -> Result<T, ConfigError> {
    let Some(path) = path else { return Ok(T::default()) };
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
}

/// The settings every replica of a Raft group takes (coordinators, metaservers), as one source
/// gives them: the flags or the config file. Each server declares its own flags (their help
/// differs) and fills one of these per source; [`ReplicaSettings::resolve`] applies the
/// defaults and the checks, the same for every server.
#[derive(Debug, Default, Clone)]
pub struct ReplicaSettings {
    pub node_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen_client: Option<SocketAddr>,
    pub listen_peer: Option<SocketAddr>,
    pub listen_http: Option<SocketAddr>,
    pub advertise_peer: Option<String>,
    pub advertise_client: Option<String>,
    pub name: Option<String>,
    pub initial_cluster: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub election_timeout: Option<String>,
    pub snapshot_count: Option<u64>,
}

/// Validated replica settings.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen_client: SocketAddr,
    pub listen_peer: SocketAddr,
    pub listen_http: SocketAddr,
    pub advertise_peer: String,
    pub advertise_client: String,
    pub name: String,
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
}

impl ReplicaSettings {
    /// Takes each setting from `self` (the flags), else from `file`, else its default; the
    /// default member name is `<name_prefix>-<node id>`.
    pub fn resolve(self, file: ReplicaSettings, name_prefix: &str) -> Result<ReplicaConfig, ConfigError> {
        let node_id = self.node_id.or(file.node_id).ok_or(ConfigError::Missing("node_id"))?;
        if node_id == 0 {
            return Err(ConfigError::Invalid { field: "node_id", message: "must be positive".into() });
        }
        let data_dir = self.data_dir.or(file.data_dir).ok_or(ConfigError::Missing("data_dir"))?;
        let listen_client = self.listen_client.or(file.listen_client).ok_or(ConfigError::Missing("listen_client"))?;
        let listen_peer = self.listen_peer.or(file.listen_peer).ok_or(ConfigError::Missing("listen_peer"))?;
        let listen_http = self.listen_http.or(file.listen_http).ok_or(ConfigError::Missing("listen_http"))?;
        let advertise_peer = self.advertise_peer.or(file.advertise_peer).unwrap_or_else(|| listen_peer.to_string());
        let advertise_client =
            self.advertise_client.or(file.advertise_client).unwrap_or_else(|| listen_client.to_string());
        let name = self.name.or(file.name).unwrap_or_else(|| format!("{name_prefix}-{node_id}"));
        let initial_cluster = match self.initial_cluster.or(file.initial_cluster) {
            Some(text) => parse_initial_cluster(&text)?,
            None => BTreeMap::from([(node_id, advertise_peer.clone())]),
        };
        if !initial_cluster.contains_key(&node_id) {
            return Err(ConfigError::Invalid {
                field: "initial_cluster",
                message: format!("does not list this node ({node_id})"),
            });
        }
        let heartbeat_interval_ms = match self.heartbeat_interval.or(file.heartbeat_interval) {
            Some(t) => parse_duration_ms("heartbeat_interval", &t)?,
            None => 100,
        };
        let election_timeout_ms = match self.election_timeout.or(file.election_timeout) {
            Some(t) => parse_duration_ms("election_timeout", &t)?,
            None => 1000,
        };
        if election_timeout_ms < 3 * heartbeat_interval_ms {
            return Err(ConfigError::Invalid {
                field: "election_timeout",
                message: format!(
                    "{election_timeout_ms}ms must be at least 3 heartbeat intervals ({heartbeat_interval_ms}ms)"
                ),
            });
        }
        let snapshot_count = self.snapshot_count.or(file.snapshot_count).unwrap_or(10_000).max(1);
        Ok(ReplicaConfig {
            node_id,
            data_dir,
            listen_client,
            listen_peer,
            listen_http,
            advertise_peer,
            advertise_client,
            name,
            initial_cluster,
            heartbeat_interval_ms,
            election_timeout_ms,
            snapshot_count,
        })
    }
}

impl Flags {
    /// Merges flags over the config file and validates the result.
    pub fn resolve(self) -> Result<CoordinatorConfig, ConfigError> {
        let file: FileConfig = read_toml(self.config.as_deref())?;
        let flags = ReplicaSettings {
            node_id: self.node_id,
            data_dir: self.data_dir,
            listen_client: self.listen_client,
            listen_peer: self.listen_peer,
            listen_http: self.listen_http,
            advertise_peer: self.advertise_peer,
            advertise_client: self.advertise_client,
            name: self.name,
            initial_cluster: self.initial_cluster,
            heartbeat_interval: self.heartbeat_interval,
            election_timeout: self.election_timeout,
            snapshot_count: self.snapshot_count,
        };
        let from_file = ReplicaSettings {
            node_id: file.node_id,
            data_dir: file.data_dir,
            listen_client: file.listen_client,
            listen_peer: file.listen_peer,
            listen_http: file.listen_http,
            advertise_peer: file.advertise_peer,
            advertise_client: file.advertise_client,
            name: file.name,
            initial_cluster: file.initial_cluster,
            heartbeat_interval: file.heartbeat_interval,
            election_timeout: file.election_timeout,
            snapshot_count: file.snapshot_count,
        };
        let replica = flags.resolve(from_file, "coordinator")?;
        let watch_progress_notify_interval_ms =
            match self.watch_progress_notify_interval.or(file.watch_progress_notify_interval) {
                Some(t) => parse_duration_ms("watch_progress_notify_interval", &t)?,
                None => 10 * 60 * 1000,
            };
        let disk_free_min_bytes =
            self.disk_free_min_bytes.or(file.disk_free_min_bytes).unwrap_or(crate::limits::DISK_FREE_BYTES_MIN_DEFAULT);
        Ok(CoordinatorConfig {
            node_id: replica.node_id,
            data_dir: replica.data_dir,
            listen_client: replica.listen_client,
            listen_peer: replica.listen_peer,
            listen_http: replica.listen_http,
            advertise_peer: replica.advertise_peer,
            advertise_client: replica.advertise_client,
            name: replica.name,
            initial_cluster: replica.initial_cluster,
            heartbeat_interval_ms: replica.heartbeat_interval_ms,
            election_timeout_ms: replica.election_timeout_ms,
            snapshot_count: replica.snapshot_count,
            watch_progress_notify_interval_ms,
            disk_free_min_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_bad_input() {
        let m = parse_initial_cluster("1=127.0.0.1:1, 2=127.0.0.1:2").expect("parse");
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2], "127.0.0.1:2");
        assert!(parse_initial_cluster("1=a,1=b").is_err());
        assert!(parse_initial_cluster("x=a").is_err());
        assert!(parse_initial_cluster("0=a").is_err());
        assert!(parse_initial_cluster("1").is_err());
    }

    #[test]
    fn flags_override_file_and_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "node_id = 2\ndata_dir = \"/tmp/x\"\nlisten_client = \"127.0.0.1:1\"\nlisten_peer = \"127.0.0.1:2\"\nlisten_http = \"127.0.0.1:3\"\nelection_timeout = \"2s\"\n",
        )
        .expect("write");
        let flags = Flags { config: Some(path.clone()), node_id: Some(1), ..Default::default() };
        let c = flags.resolve().expect("resolve");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.election_timeout_ms, 2000);
        assert_eq!(c.initial_cluster[&1], "127.0.0.1:2");
        std::fs::write(&path, "bogus_key = 1\n").expect("write");
        assert!(Flags { config: Some(path), ..Default::default() }.resolve().is_err());
        assert!(Flags::default().resolve().is_err());
    }
}
