//! Metaserver configuration: command-line flags over an optional TOML file over defaults,
//! validated once into [`MetaConfig`]. The flags mirror the coordinator's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_coordinator::config::{read_toml, ReplicaSettings};
use cairn_coordinator::rsm::NodeId;
use serde::Deserialize;

use crate::limits::{CHUNK_SIZES_BYTES, ORPHAN_SCAN_INTERVAL_DEFAULT, REPLICATION_FACTOR_MAX};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file, or a setting every replica shares (the coordinator's rules).
    #[error(transparent)]
    Replica(#[from] cairn_coordinator::config::ConfigError),
    #[error("invalid {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// Command-line flags of `cairn-metaserver`. Each overrides the same key of the config file.
#[derive(Debug, Default, clap::Parser)]
#[command(name = "cairn-metaserver", version, about = "Cairn metaserver: the Raft-replicated filesystem namespace")]
pub struct Flags {
    /// TOML config file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id within the metaserver group (a positive integer).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Directory holding this node's RocksDB and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the MetaService gRPC API.
    #[arg(long)]
    pub listen_client: Option<SocketAddr>,
    /// Address for Raft traffic between metaservers.
    #[arg(long)]
    pub listen_peer: Option<SocketAddr>,
    /// Address for /health, /status and /metrics over HTTP.
    #[arg(long)]
    pub listen_http: Option<SocketAddr>,
    /// Peer address this node announces (defaults to --listen-peer).
    #[arg(long)]
    pub advertise_peer: Option<String>,
    /// Client address this node announces (defaults to --listen-client).
    #[arg(long)]
    pub advertise_client: Option<String>,
    /// Human-readable member name (defaults to metaserver-<node id>).
    #[arg(long)]
    pub name: Option<String>,
    /// Members of a new group: `1=127.0.0.1:2480,2=...` (peer addresses). Used only when the
    /// data dir is empty; the lowest id bootstraps the group.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Coordinator client endpoints, `host:port,...`: the chunkserver registry is watched there.
    #[arg(long)]
    pub coordinator_endpoints: Option<String>,
    /// Raft heartbeat interval, e.g. "100ms".
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// Minimum election timeout, e.g. "1s" (the maximum is twice this).
    #[arg(long)]
    pub election_timeout: Option<String>,
    /// Applied entries between snapshots.
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Chunk size recorded when the filesystem is formatted: "64MiB" (default) or "128MiB".
    #[arg(long)]
    pub chunk_size: Option<String>,
    /// Replication factor recorded when the filesystem is formatted (default 3).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Pause between two scans of every chunkserver's inventory for orphan and stale replicas
    /// (leader only), e.g. "60s" (default).
    #[arg(long)]
    pub orphan_scan_interval: Option<String>,
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
    coordinator_endpoints: Option<String>,
    heartbeat_interval: Option<String>,
    election_timeout: Option<String>,
    snapshot_count: Option<u64>,
    chunk_size: Option<String>,
    replication_factor: Option<u32>,
    orphan_scan_interval: Option<String>,
}

/// Validated configuration of one metaserver node.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub listen_client: SocketAddr,
    pub listen_peer: SocketAddr,
    pub listen_http: SocketAddr,
    pub advertise_peer: String,
    pub advertise_client: String,
    pub name: String,
    pub initial_cluster: BTreeMap<NodeId, String>,
    pub coordinator_endpoints: Vec<String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub chunk_size_bytes: u64,
    pub replication_factor: u32,
    pub orphan_scan_interval_ms: u64,
}

/// Parses a size such as "64MiB", "128 MiB", "1GiB" or a plain number of bytes.
pub fn parse_size_bytes(field: &'static str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let invalid = || ConfigError::Invalid { field, message: format!("{text:?} is not a size like \"64MiB\"") };
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    n.checked_mul(multiplier).ok_or_else(invalid)
}

impl Flags {
    /// Merges flags over the config file and validates the result.
    pub fn resolve(self) -> Result<MetaConfig, ConfigError> {
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
        let replica = flags.resolve(from_file, "metaserver")?;
        let coordinator_endpoints = self
            .coordinator_endpoints
            .or(file.coordinator_endpoints)
            .map(|t| t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default();
        let chunk_size_bytes = match self.chunk_size.or(file.chunk_size) {
            Some(t) => parse_size_bytes("chunk_size", &t)?,
            None => CHUNK_SIZES_BYTES[0],
        };
        if !CHUNK_SIZES_BYTES.contains(&chunk_size_bytes) {
            return Err(ConfigError::Invalid {
                field: "chunk_size",
                message: format!("{chunk_size_bytes} bytes; must be 64MiB or 128MiB"),
            });
        }
        let replication_factor = self.replication_factor.or(file.replication_factor).unwrap_or(3);
        if replication_factor == 0 || replication_factor > REPLICATION_FACTOR_MAX {
            return Err(ConfigError::Invalid {
                field: "replication_factor",
                message: format!("{replication_factor}; must be between 1 and {REPLICATION_FACTOR_MAX}"),
            });
        }
        let orphan_scan_interval_ms = match self.orphan_scan_interval.or(file.orphan_scan_interval) {
            Some(t) => cairn_coordinator::config::parse_duration_ms("orphan_scan_interval", &t)?,
            None => ORPHAN_SCAN_INTERVAL_DEFAULT.as_millis() as u64,
        };
        if orphan_scan_interval_ms == 0 {
            return Err(ConfigError::Invalid { field: "orphan_scan_interval", message: "must be positive".into() });
        }
        Ok(MetaConfig {
            node_id: replica.node_id,
            data_dir: replica.data_dir,
            listen_client: replica.listen_client,
            listen_peer: replica.listen_peer,
            listen_http: replica.listen_http,
            advertise_peer: replica.advertise_peer,
            advertise_client: replica.advertise_client,
            name: replica.name,
            initial_cluster: replica.initial_cluster,
            coordinator_endpoints,
            heartbeat_interval_ms: replica.heartbeat_interval_ms,
            election_timeout_ms: replica.election_timeout_ms,
            snapshot_count: replica.snapshot_count,
            chunk_size_bytes,
            replication_factor,
            orphan_scan_interval_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size_bytes("s", "64MiB").expect("64MiB"), 64 << 20);
        assert_eq!(parse_size_bytes("s", "128 MiB").expect("128 MiB"), 128 << 20);
        assert_eq!(parse_size_bytes("s", "4096").expect("bytes"), 4096);
        assert!(parse_size_bytes("s", "64MB").is_err());
        assert!(parse_size_bytes("s", "MiB").is_err());
    }

    #[test]
    fn flags_override_file_and_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "node_id = 2\ndata_dir = \"/tmp/x\"\nlisten_client = \"127.0.0.1:1\"\nlisten_peer = \"127.0.0.1:2\"\n\
             listen_http = \"127.0.0.1:3\"\nchunk_size = \"128MiB\"\ncoordinator_endpoints = \"a:1, b:2\"\n",
        )
        .expect("write");
        let c =
            Flags { config: Some(path.clone()), node_id: Some(1), ..Default::default() }.resolve().expect("resolve");
        assert_eq!((c.node_id, c.chunk_size_bytes, c.replication_factor), (1, 128 << 20, 3));
        assert_eq!(c.coordinator_endpoints, ["a:1", "b:2"]);
        assert_eq!(c.initial_cluster[&1], "127.0.0.1:2");
        let bad = Flags { config: Some(path.clone()), chunk_size: Some("32MiB".into()), ..Default::default() };
        assert!(bad.resolve().is_err());
        let bad = Flags { config: Some(path.clone()), replication_factor: Some(0), ..Default::default() };
        assert!(bad.resolve().is_err());
        std::fs::write(&path, "bogus = 1\n").expect("write");
        assert!(Flags { config: Some(path), ..Default::default() }.resolve().is_err());
        assert!(Flags::default().resolve().is_err());
    }
}
