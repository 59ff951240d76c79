//! Chunkserver configuration: command-line flags over an optional TOML file over defaults,
//! validated once into [`ChunkserverConfig`]. Sizes are humane (`"64KiB"`, `"100GiB"`, or plain
//! bytes), durations too (`"10s"`, `"1h"`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::block::validate_block_size;
use crate::ids::NodeId;
use crate::limits::{
    BLOCK_CACHE_DEFAULT_BYTES, BLOCK_SIZE_DEFAULT_BYTES, DISK_RESERVE_DEFAULT_BYTES, LEASE_TTL_DEFAULT, LEASE_TTL_MIN,
    SCRUB_INTERVAL_DEFAULT, SCRUB_RATE_DEFAULT_BYTES_PER_SEC,
};

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

/// Flags of the server (`cairn-chunkserver [FLAGS]`). Each overrides the same key of the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// TOML config file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This chunkserver's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// Directory holding the chunk database.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the chunk gRPC service, e.g. 127.0.0.1:7100.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address for /health, /status and /metrics over HTTP.
    #[arg(long)]
    pub listen_http: Option<SocketAddr>,
    /// Address other servers and clients use to reach the gRPC service (defaults to --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Coordinator client endpoints (host:port), comma-separated, tried in turn.
    #[arg(long, value_delimiter = ',')]
    pub coordinator_endpoints: Option<Vec<String>>,
    /// Registry lease TTL, e.g. "10s".
    #[arg(long)]
    pub lease_ttl: Option<String>,
    /// Most chunk bytes to store, e.g. "500GiB" (default: whatever the disk holds).
    #[arg(long)]
    pub capacity: Option<String>,
    /// Disk space always left free; writes are refused rather than eat into it, e.g. "1GiB".
    #[arg(long)]
    pub disk_reserve: Option<String>,
    /// Rack label advertised in the registry.
    #[arg(long)]
    pub rack: Option<String>,
    /// Zone label advertised in the registry.
    #[arg(long)]
    pub zone: Option<String>,
    /// Block size of newly created chunks, a power of two from 4KiB to 4MiB.
    #[arg(long)]
    pub block_size: Option<String>,
    /// Scrub rate in bytes per second, e.g. "32MiB"; "0" disables the scrubber.
    #[arg(long)]
    pub scrub_rate: Option<String>,
    /// Pause between two scrub passes, e.g. "1h".
    #[arg(long)]
    pub scrub_interval: Option<String>,
    /// Chunk data bypasses the page cache with O_DIRECT ("true", the default, or "false").
    #[arg(long)]
    pub direct_io: Option<bool>,
    /// Memory for caching block values that small reads fetch, e.g. "256MiB"; "0" disables.
    #[arg(long)]
    pub block_cache: Option<String>,
}

/// The config file: the flags' keys in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    listen_http: Option<SocketAddr>,
    advertise: Option<String>,
    coordinator_endpoints: Option<Vec<String>>,
    lease_ttl: Option<String>,
    capacity: Option<String>,
    disk_reserve: Option<String>,
    rack: Option<String>,
    zone: Option<String>,
    block_size: Option<String>,
    scrub_rate: Option<String>,
    scrub_interval: Option<String>,
    direct_io: Option<bool>,
    block_cache: Option<String>,
}

/// Validated configuration of one chunkserver.
#[derive(Debug, Clone)]
pub struct ChunkserverConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub listen_http: SocketAddr,
    pub advertise: String,
    pub coordinator_endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub capacity_limit_bytes: Option<u64>,
    pub disk_reserve_bytes: u64,
    pub rack: String,
    pub zone: String,
    pub block_size_bytes: u32,
    pub scrub_rate_bytes_per_sec: u64,
    pub scrub_interval: Duration,
    /// Blob and table files use O_DIRECT (where the file system allows it).
    pub direct_io: bool,
    pub block_cache_bytes: u64,
}

/// Parses `"64KiB"`, `"1.5GiB"`, `"100MB"`, `"4096"` into bytes (binary and decimal units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

fn size(field: &'static str, text: &str) -> Result<u64, ConfigError> {
    parse_size(text).map_err(|message| ConfigError::Invalid { field, message })
}

fn duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError::Invalid { field, message: format!("{text:?}: {e}") })
}

impl Flags {
    /// Merges the flags over the config file and validates the result.
    pub fn resolve(self) -> Result<ChunkserverConfig, ConfigError> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
        };
        let id = self.id.or(file.id).ok_or(ConfigError::Missing("id"))?;
        if id == 0 {
            return Err(ConfigError::Invalid { field: "id", message: "must be positive".into() });
        }
        let data_dir = self.data_dir.or(file.data_dir).ok_or(ConfigError::Missing("data_dir"))?;
        let listen = self.listen.or(file.listen).ok_or(ConfigError::Missing("listen"))?;
        let listen_http = self.listen_http.or(file.listen_http).ok_or(ConfigError::Missing("listen_http"))?;
        let advertise = self.advertise.or(file.advertise).unwrap_or_else(|| listen.to_string());
        let coordinator_endpoints: Vec<String> = self
            .coordinator_endpoints
            .or(file.coordinator_endpoints)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        let lease_ttl = match self.lease_ttl.or(file.lease_ttl) {
            Some(text) => duration("lease_ttl", &text)?,
            None => LEASE_TTL_DEFAULT,
        };
        if lease_ttl < LEASE_TTL_MIN {
            return Err(ConfigError::Invalid {
                field: "lease_ttl",
                message: format!("{lease_ttl:?} is below the minimum {LEASE_TTL_MIN:?}"),
            });
        }
        let capacity_limit_bytes = self.capacity.or(file.capacity).map(|t| size("capacity", &t)).transpose()?;
        let disk_reserve_bytes = match self.disk_reserve.or(file.disk_reserve) {
            Some(text) => size("disk_reserve", &text)?,
            None => DISK_RESERVE_DEFAULT_BYTES,
        };
        let block_size_bytes = match self.block_size.or(file.block_size) {
            Some(text) => {
                let bytes = size("block_size", &text)?;
                let bytes = u32::try_from(bytes).map_err(|_| ConfigError::Invalid {
                    field: "block_size",
                    message: format!("{text:?} is too large"),
                })?;
                validate_block_size(bytes)
                    .map_err(|e| ConfigError::Invalid { field: "block_size", message: e.to_string() })?;
                bytes
            }
            None => BLOCK_SIZE_DEFAULT_BYTES,
        };
        let scrub_rate_bytes_per_sec = match self.scrub_rate.or(file.scrub_rate) {
            Some(text) => size("scrub_rate", &text)?,
            None => SCRUB_RATE_DEFAULT_BYTES_PER_SEC,
        };
        let scrub_interval = match self.scrub_interval.or(file.scrub_interval) {
            Some(text) => duration("scrub_interval", &text)?,
            None => SCRUB_INTERVAL_DEFAULT,
        };
        let block_cache_bytes = match self.block_cache.or(file.block_cache) {
            Some(text) => size("block_cache", &text)?,
            None => BLOCK_CACHE_DEFAULT_BYTES,
        };
        Ok(ChunkserverConfig {
            id: NodeId(id),
            data_dir,
            listen,
            listen_http,
            advertise,
            coordinator_endpoints,
            lease_ttl,
            capacity_limit_bytes,
            disk_reserve_bytes,
            rack: self.rack.or(file.rack).unwrap_or_default(),
            zone: self.zone.or(file.zone).unwrap_or_default(),
            block_size_bytes,
            scrub_rate_bytes_per_sec,
            scrub_interval,
            direct_io: self.direct_io.or(file.direct_io).unwrap_or(true),
            block_cache_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn flags_override_file_and_validate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "id = 2\ndata_dir = \"/tmp/x\"\nlisten = \"127.0.0.1:1\"\nlisten_http = \"127.0.0.1:2\"\n\
             coordinator_endpoints = [\"127.0.0.1:3\", \"127.0.0.1:4\"]\nblock_size = \"256KiB\"\n\
             capacity = \"10GiB\"\nrack = \"r7\"\n",
        )
        .expect("write");
        let flags =
            Flags { config: Some(path.clone()), id: Some(5), scrub_rate: Some("0".into()), ..Default::default() };
        let c = flags.resolve().expect("resolve");
        assert_eq!(c.id, NodeId(5));
        assert_eq!(c.block_size_bytes, 256 << 10);
        assert_eq!(c.capacity_limit_bytes, Some(10 << 30));
        assert_eq!(c.coordinator_endpoints, ["127.0.0.1:3", "127.0.0.1:4"]);
        assert_eq!(c.advertise, "127.0.0.1:1");
        assert_eq!(c.rack, "r7");
        assert_eq!(c.scrub_rate_bytes_per_sec, 0);
        assert_eq!(c.lease_ttl, LEASE_TTL_DEFAULT);
        assert!(c.direct_io);
        assert_eq!(c.block_cache_bytes, BLOCK_CACHE_DEFAULT_BYTES);

        let bad_block = Flags { config: Some(path.clone()), block_size: Some("3000".into()), ..Default::default() };
        assert!(bad_block.resolve().is_err());
        let short_ttl = Flags { config: Some(path.clone()), lease_ttl: Some("100ms".into()), ..Default::default() };
        assert!(short_ttl.resolve().is_err());
        std::fs::write(&path, "bogus = 1\n").expect("write");
        assert!(Flags { config: Some(path), ..Default::default() }.resolve().is_err());
        assert!(matches!(Flags::default().resolve(), Err(ConfigError::Missing("id"))));
    }
}
