//! The `cairn` command line (clap derive). Parsing only; `commands.rs` does the work.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::kv::{KvBenchConfig, KvOp};
use crate::bench::lock::{LockBenchConfig, LockOp};
use crate::bench::meta::{MetaBenchConfig, MetaOp, Route};
use crate::fuse::MountOptions;
use crate::limits::{BENCH_CLIENTS_MAX, BENCH_CLIENTS_PER_CHANNEL};

/// Cairn: a distributed filesystem and an etcd-v3-compatible coordinator.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local development cluster.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Benchmark servers.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Mount a Cairn filesystem with FUSE.
    Mount(MountArgs),
    /// Unmount a Cairn filesystem.
    Umount(UmountArgs),
    /// Report under-replicated, unavailable and orphan chunks (exit status 1 when any chunk
    /// lacks replicas).
    Fsck(FsckArgs),
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Comma-separated metaserver gRPC endpoints (host:port); any of them answers.
    #[arg(long, env = "CAIRN_METASERVER_ENDPOINTS", value_delimiter = ',', required = true)]
    pub metaserver: Vec<String>,
    /// Most chunks listed per category (the counts are always complete).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// How long one metaserver may take to answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Comma-separated metaserver gRPC endpoints (host:port).
    #[arg(long, env = "CAIRN_METASERVER_ENDPOINTS", value_delimiter = ',', required = true)]
    pub metaserver: Vec<String>,
    /// Stay in the foreground until unmounted (SIGTERM/SIGINT unmount cleanly).
    #[arg(long)]
    pub foreground: bool,
    /// Log file (daemon mode: the daemon's output; foreground: instead of stderr).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Log filter when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Mount options: ro, rw, allow_other, default_permissions (default),
    /// no_default_permissions, nosuid, nodev, noexec, noatime, attr_ttl_ms=N, entry_ttl_ms=N,
    /// timeout_ms=N.
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Kernel attribute cache lifetime.
    #[arg(long)]
    pub attr_ttl_ms: Option<u64>,
    /// Kernel directory-entry cache lifetime.
    #[arg(long)]
    pub entry_ttl_ms: Option<u64>,
    /// How long an operation retries an unreachable cluster before failing with EIO.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
}

impl MountArgs {
    pub fn options(&self) -> Result<MountOptions, String> {
        let mut o = MountOptions::new(self.mountpoint.clone(), self.metaserver.clone());
        for list in &self.options {
            o.apply_o(list)?;
        }
        o.foreground = self.foreground;
        o.log_file = self.log_file.clone();
        o.log_level = self.log_level.clone();
        if let Some(ms) = self.attr_ttl_ms {
            o.attr_ttl = Duration::from_millis(ms);
        }
        if let Some(ms) = self.entry_ttl_ms {
            o.entry_ttl = Duration::from_millis(ms);
        }
        if let Some(ms) = self.timeout_ms {
            o.timeout = Duration::from_millis(ms);
        }
        Ok(o)
    }
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Detach now even if busy; the kernel finishes when the last user lets go.
    #[arg(long, short = 'l')]
    pub lazy: bool,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start a cluster in DIR (or report the one already running there).
    Up(DevUpArgs),
    /// Stop the cluster in DIR, keeping its data unless --purge.
    Down(DevDownArgs),
    /// Show each node of the cluster in DIR: pid, liveness, /status.
    Status(DevDirArgs),
}

#[derive(Debug, Args)]
pub struct DevDirArgs {
    /// Cluster directory (data, logs, cluster.json, cluster.env).
    #[arg(long, env = "CAIRN_DIR", default_value = "./.cairn-dev")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DevUpArgs {
    #[command(flatten)]
    pub dir: DevDirArgs,
    /// How long to wait for every node to report healthy.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Number of coordinator replicas.
    #[arg(long, default_value_t = 3)]
    pub coordinators: usize,
    /// Number of chunkservers (0 for a coordinator-only cluster).
    #[arg(long, default_value_t = 3)]
    pub chunkservers: usize,
    /// Number of metaserver replicas (0 for none).
    #[arg(long, default_value_t = 3)]
    pub metaservers: usize,
    /// Start the servers only; do not mount the cluster at DIR/mnt.
    #[arg(long)]
    pub no_mount: bool,
    /// An extra argument for every chunkserver's command line (repeat it for more), e.g.
    /// `--chunkserver-arg=--block-size=32KiB`.
    #[arg(long = "chunkserver-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub chunkserver_args: Vec<OsString>,
    /// An extra argument for every metaserver's command line (repeat it for more).
    #[arg(long = "metaserver-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub metaserver_args: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct DevDownArgs {
    #[command(flatten)]
    pub dir: DevDirArgs,
    /// Also delete the nodes' data directories, logs and the cluster records.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Benchmark an etcd-v3 KV service (Cairn's coordinator or a real etcd).
    Kv(BenchKvArgs),
    /// Benchmark an etcd-v3 Lock service and lease keep-alives (Cairn's coordinator or etcd).
    Lock(BenchLockArgs),
    /// Benchmark the metaserver's namespace operations over gRPC.
    Meta(BenchMetaArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One `key=value` line per run.
    Text,
    /// One JSON object per run, one per line.
    Json,
}

#[derive(Debug, Args)]
pub struct BenchKvArgs {
    /// Comma-separated etcd gRPC endpoints (host:port).
    #[arg(long, env = "CAIRN_COORDINATOR_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Comma-separated concurrent client counts; one run per count and operation.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256",
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CLIENTS_MAX as i64))]
    pub clients: Vec<u32>,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Size of the key space (keys are 8-digit zero-padded decimals).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Size of each put value in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Comma-separated operations, run in this order.
    #[arg(long, value_delimiter = ',', default_value = "put,range")]
    pub ops: Vec<KvOp>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl BenchKvArgs {
    pub fn config(&self) -> KvBenchConfig {
        KvBenchConfig {
            endpoints: self.endpoints.clone(),
            clients: self.clients.iter().map(|&c| c as usize).collect(),
            duration: self.duration,
            warmup: self.warmup,
            keys: self.keys,
            value_size_bytes: self.value_size,
            ops: self.ops.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchLockArgs {
    /// Comma-separated etcd gRPC endpoints (host:port).
    #[arg(long, env = "CAIRN_COORDINATOR_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Comma-separated concurrent client counts; one run per count and operation.
    #[arg(long, value_delimiter = ',', default_value = "1,16",
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CLIENTS_MAX as i64))]
    pub clients: Vec<u32>,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Comma-separated operations, run in this order.
    #[arg(long, value_delimiter = ',', default_value = "uncontended,contended,keepalive")]
    pub ops: Vec<LockOp>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl BenchLockArgs {
    pub fn config(&self) -> LockBenchConfig {
        LockBenchConfig {
            endpoints: self.endpoints.clone(),
            clients: self.clients.iter().map(|&c| c as usize).collect(),
            duration: self.duration,
            warmup: self.warmup,
            ops: self.ops.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchMetaArgs {
    /// Comma-separated metaserver gRPC endpoints (host:port).
    #[arg(long, env = "CAIRN_METASERVER_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Comma-separated concurrent client counts; every operation runs once per count.
    #[arg(long, value_delimiter = ',', default_value = "1,64",
          value_parser = clap::value_parser!(u32).range(1..=BENCH_CLIENTS_MAX as i64))]
    pub clients: Vec<u32>,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Comma-separated operations, run in this order for each client count.
    #[arg(long, value_delimiter = ',', default_value = "create,stat,lookup,readdir,rename,unlink")]
    pub ops: Vec<MetaOp>,
    /// Files in the directory that `readdir` lists.
    #[arg(long, default_value_t = 10_000)]
    pub readdir_entries: usize,
    /// Entries per ReadDir page (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub readdir_page: u32,
    /// List with attributes (readdirplus).
    #[arg(long)]
    pub readdir_plus: bool,
    /// Files each worker holds (created untimed if needed) before stat, lookup, rename, unlink.
    #[arg(long, default_value_t = 1000)]
    pub min_files: usize,
    /// Keep the benchmark's directories and files instead of removing them at the end.
    #[arg(long)]
    pub keep: bool,
    /// Which metaserver each request goes to: `leader` follows the leader a follower names, as
    /// the FUSE client does; `rotate` spreads requests over every endpoint (two thirds reach a
    /// follower, which forwards changes and asks the leader before reads).
    #[arg(long, value_enum, default_value_t = Route::Leader)]
    pub route: Route,
    /// Clients that share one connection (HTTP/2 multiplexes their calls) to each metaserver,
    /// like etcd's benchmark `--clients` over `--conns`. A FUSE mount is one client process
    /// with one connection for all its requests.
    #[arg(long, default_value_t = BENCH_CLIENTS_PER_CHANNEL)]
    pub clients_per_connection: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl BenchMetaArgs {
    pub fn config(&self) -> MetaBenchConfig {
        MetaBenchConfig {
            endpoints: self.endpoints.clone(),
            clients: self.clients.iter().map(|&c| c as usize).collect(),
            duration: self.duration,
            warmup: self.warmup,
            ops: self.ops.clone(),
            readdir_entries: self.readdir_entries,
            readdir_page: self.readdir_page,
            readdir_plus: self.readdir_plus,
            min_files: self.min_files,
            keep: self.keep,
            route: self.route,
            clients_per_connection: self.clients_per_connection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cairn").chain(args.iter().copied()))
    }

    fn bench_kv(args: &[&str]) -> BenchKvArgs {
        let mut all = vec!["bench", "kv"];
        all.extend_from_slice(args);
        match parse(&all).expect("parse").command {
            Command::Bench(BenchCommand::Kv(args)) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dev_up_passes_server_flags_through() {
        let parsed = parse(&[
            "dev",
            "up",
            "--chunkserver-arg=--block-size=32KiB",
            "--chunkserver-arg",
            "--scrub-interval=1h",
            "--metaserver-arg=--snapshot-every=100",
        ])
        .expect("parse");
        let Command::Dev(DevCommand::Up(args)) = parsed.command else { panic!("not dev up: {parsed:?}") };
        assert_eq!(args.chunkserver_args, ["--block-size=32KiB", "--scrub-interval=1h"]);
        assert_eq!(args.metaserver_args, ["--snapshot-every=100"]);
        let Command::Dev(DevCommand::Up(args)) = parse(&["dev", "up"]).expect("parse").command else { panic!() };
        assert!(args.chunkserver_args.is_empty() && args.metaserver_args.is_empty());
    }

    #[test]
    fn bench_kv_defaults() {
        let args = bench_kv(&["--endpoints", "127.0.0.1:2379"]);
        let config = args.config();
        assert_eq!(config.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(config.clients, [1, 16, 256]);
        assert_eq!(config.duration, Duration::from_secs(10));
        assert_eq!(config.keys, 100_000);
        assert_eq!(config.value_size_bytes, 256);
        assert_eq!(config.ops, [KvOp::Put, KvOp::Range]);
        assert_eq!(args.output, OutputFormat::Text);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bench_kv_lists_and_units() {
        let args = bench_kv(&[
            "--endpoints",
            "a:1,b:2,c:3",
            "--clients",
            "4,64",
            "--duration",
            "1m 30s",
            "--warmup",
            "500ms",
            "--keys",
            "1000",
            "--value-size",
            "1024",
            "--ops",
            "range",
            "--output",
            "json",
        ]);
        let config = args.config();
        assert_eq!(config.endpoints, ["a:1", "b:2", "c:3"]);
        assert_eq!(config.clients, [4, 64]);
        assert_eq!(config.duration, Duration::from_secs(90));
        assert_eq!(config.warmup, Duration::from_millis(500));
        assert_eq!((config.keys, config.value_size_bytes), (1000, 1024));
        assert_eq!(config.ops, [KvOp::Range]);
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn bench_kv_rejects_bad_values() {
        assert!(parse(&["bench", "kv", "--endpoints", "a:1", "--clients", "0"]).is_err());
        assert!(parse(&["bench", "kv", "--endpoints", "a:1", "--ops", "delete"]).is_err());
        assert!(parse(&["bench", "kv", "--endpoints", "a:1", "--duration", "ten"]).is_err());
    }

    #[test]
    fn bench_lock_defaults_and_lists() {
        let parsed = parse(&["bench", "lock", "--endpoints", "a:1"]).expect("parse").command;
        let Command::Bench(BenchCommand::Lock(args)) = parsed else { panic!("unexpected {parsed:?}") };
        let config = args.config();
        assert_eq!(config.clients, [1, 16]);
        assert_eq!(config.ops, [LockOp::Uncontended, LockOp::Contended, LockOp::Keepalive]);
        assert!(config.validate().is_ok());
        let parsed = parse(&["bench", "lock", "--endpoints", "a:1,b:2", "--ops", "keepalive", "--clients", "64"])
            .expect("parse")
            .command;
        let Command::Bench(BenchCommand::Lock(args)) = parsed else { panic!("unexpected {parsed:?}") };
        assert_eq!((args.config().ops, args.config().clients), (vec![LockOp::Keepalive], vec![64]));
        assert!(parse(&["bench", "lock", "--endpoints", "a:1", "--ops", "put"]).is_err());
    }

    #[test]
    fn bench_meta_defaults_and_lists() {
        let parsed = parse(&["bench", "meta", "--endpoints", "a:1,b:2"]).expect("parse").command;
        let Command::Bench(BenchCommand::Meta(args)) = parsed else { panic!("unexpected {parsed:?}") };
        let config = args.config();
        assert_eq!(config.clients, [1, 64]);
        assert_eq!(
            config.ops,
            [MetaOp::Create, MetaOp::Stat, MetaOp::Lookup, MetaOp::Readdir, MetaOp::Rename, MetaOp::Unlink]
        );
        assert_eq!((config.readdir_entries, config.readdir_page, config.min_files), (10_000, 0, 1000));
        assert!(!config.keep && !config.readdir_plus);
        assert!(config.validate().is_ok());
        let parsed = parse(&["bench", "meta", "--endpoints", "a:1", "--ops", "readdir", "--readdir-plus"])
            .expect("parse")
            .command;
        let Command::Bench(BenchCommand::Meta(args)) = parsed else { panic!("unexpected {parsed:?}") };
        assert_eq!(args.config().ops, [MetaOp::Readdir]);
        assert!(args.config().readdir_plus);
        assert!(parse(&["bench", "meta", "--endpoints", "a:1", "--ops", "put"]).is_err());
    }

    #[test]
    fn dev_commands() {
        match parse(&["dev", "up", "--dir", "/tmp/c", "--timeout", "90s"]).expect("parse").command {
            Command::Dev(DevCommand::Up(args)) => {
                assert_eq!(args.dir.dir, PathBuf::from("/tmp/c"));
                assert_eq!(args.timeout, Duration::from_secs(90));
                assert_eq!(args.coordinators, 3);
                assert_eq!(args.chunkservers, 3);
                assert_eq!(args.metaservers, 3);
                assert!(!args.no_mount);
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse(&["dev", "down", "--dir", "/tmp/c", "--purge"]).expect("parse").command {
            Command::Dev(DevCommand::Down(args)) => assert!(args.purge),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn mount_commands() {
        let parsed = parse(&[
            "mount",
            "/mnt/cairn",
            "--metaserver",
            "a:1,b:2",
            "-o",
            "ro,allow_other",
            "--attr-ttl-ms",
            "200",
            "--timeout-ms",
            "3000",
            "--foreground",
        ])
        .expect("parse")
        .command;
        let Command::Mount(args) = parsed else { panic!("unexpected {parsed:?}") };
        let o = args.options().expect("options");
        assert_eq!(o.metaservers, ["a:1", "b:2"]);
        assert!(o.read_only && o.allow_other && o.foreground && o.default_permissions);
        assert_eq!(o.attr_ttl, Duration::from_millis(200));
        assert_eq!(o.timeout, Duration::from_secs(3));
        let parsed = parse(&["umount", "/mnt/cairn", "-l"]).expect("parse").command;
        assert!(matches!(parsed, Command::Umount(UmountArgs { lazy: true, .. })));
    }
}
