//! What each `cairn` subcommand does: thin glue between the parsed command line, the library
//! modules and the terminal.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::bench::{kv, lock, meta};
use crate::cli::{
    BenchCommand, BenchKvArgs, BenchLockArgs, BenchMetaArgs, Command, DevCommand, DevDownArgs, DevUpArgs, FsckArgs,
    OutputFormat,
};
use crate::dev::{self, ClusterSpec, UpOutcome};
use crate::limits::DEV_DISK_WARN_BYTES;

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(DevCommand::Up(args)) => dev_up(args).await,
        Command::Dev(DevCommand::Down(args)) => dev_down(args).await,
        Command::Dev(DevCommand::Status(args)) => dev_status(&args.dir).await,
        Command::Bench(BenchCommand::Kv(args)) => bench_kv(args).await,
        Command::Bench(BenchCommand::Lock(args)) => bench_lock(args).await,
        Command::Bench(BenchCommand::Meta(args)) => bench_meta(args).await,
        Command::Fsck(args) => fsck(args).await,
        // Mounting runs its own runtime and blocks; lib.rs handles it before starting this one.
        Command::Mount(_) | Command::Umount(_) => unreachable!("handled by crate::run"),
    }
}

async fn dev_up(args: DevUpArgs) -> anyhow::Result<ExitCode> {
    let spec = ClusterSpec {
        coordinators: args.coordinators,
        chunkservers: args.chunkservers,
        metaservers: args.metaservers,
        ready_timeout: args.timeout,
        mount: !args.no_mount && args.metaservers > 0 && args.chunkservers > 0,
        chunkserver_args: args.chunkserver_args,
        metaserver_args: args.metaserver_args,
        ..ClusterSpec::new(args.dir.dir)
    };
    let outcome = dev::up(&spec).await.context("start the dev cluster")?;
    let state = outcome.state();
    let mut out = String::new();
    let verb = match &outcome {
        UpOutcome::Started(_) => "started",
        UpOutcome::AlreadyRunning(_) => "already running",
    };
    let _ = writeln!(out, "cairn dev cluster {verb} in {}", state.dir.display());
    for node in &state.nodes {
        let pid = node.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(
            out,
            "  {} pid={pid} client={} http={} log={}",
            node.node_ref(),
            node.addrs.client,
            node.addrs.http,
            node.log_path.display()
        );
    }
    for mount in state.mounts.iter().filter(|m| m.pid.is_some()) {
        let pid = mount.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(out, "  mount {} pid={pid} log={}", mount.name, mount.log_path.display());
    }
    out.push_str(&dev::render_env(state));
    if let Some(mountpoint) = state.active_mountpoint() {
        let _ = writeln!(out, "mounted at {}", mountpoint.display());
    }
    let env = state.env_path();
    let _ = writeln!(out, "env file: {} (load it with: set -a; . {}; set +a)", env.display(), env.display());
    emit(&out)?;
    warn_if_disk_low(&state.dir);
    Ok(ExitCode::SUCCESS)
}

/// The dev cluster's chunkservers share one disk and each keeps 1 GiB of it free: below that
/// every write fails with ENOSPC, which is better said up front.
fn warn_if_disk_low(dir: &std::path::Path) {
    let Some(available_bytes) = dev::disk_available_bytes(dir) else { return };
    if available_bytes < DEV_DISK_WARN_BYTES {
        eprintln!(
            "warning: only {} MiB free on the disk of {}; chunkservers keep 1 GiB free and refuse writes \
             (ENOSPC) below that",
            available_bytes >> 20,
            dir.display()
        );
    }
}

async fn dev_down(args: DevDownArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir.dir;
    let report = dev::down(dir, args.purge).await.context("stop the dev cluster")?;
    if !report.found {
        emit(&format!("no cluster recorded in {}\n", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let names = |nodes: &[dev::NodeRef]| nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    for (mountpoint, how) in &report.unmounted {
        let how = match how {
            dev::Unmounted::Forced => " (forced)",
            _ => "",
        };
        let _ = writeln!(out, "unmounted {}{how}", mountpoint.display());
    }
    if report.stopped.is_empty() && report.killed.is_empty() {
        out.push_str("no node was running\n");
    }
    if !report.stopped.is_empty() {
        let _ = writeln!(out, "stopped: {}", names(&report.stopped));
    }
    if !report.killed.is_empty() {
        let _ = writeln!(out, "killed after the grace period: {}", names(&report.killed));
    }
    if report.purged {
        let _ = writeln!(out, "purged data, logs and records in {}", dir.display());
    } else {
        let _ = writeln!(out, "data kept in {} (`cairn dev down --purge` deletes it)", dir.display());
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

async fn dev_status(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(reports) = dev::status(dir).await.context("read the dev cluster status")? else {
        emit(&format!("no cluster recorded in {}\n", dir.display()))?;
        return Ok(ExitCode::FAILURE);
    };
    let mut out = String::new();
    let mut healthy = true;
    for report in &reports {
        let node = &report.node;
        let pid = node.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let status = match &report.status {
            Ok(json) => json.to_string(),
            Err(e) => {
                healthy = false;
                format!("unavailable: {e}")
            }
        };
        healthy &= report.alive;
        let _ = writeln!(
            out,
            "{} pid={pid} alive={} client={} http={} status={status}",
            node.node_ref(),
            if report.alive { "yes" } else { "no" },
            node.addrs.client,
            node.addrs.http,
        );
    }
    emit(&out)?;
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Writes `text` to stdout. A closed pipe (`cairn dev status | head -1`) is not an error: the
/// reader has what it wanted.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}

async fn bench_kv(args: BenchKvArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
    let output = args.output;
    kv::run(&config, |result| {
        let line = match output {
            OutputFormat::Text => result.text_line(),
            OutputFormat::Json => serde_json::to_string(result).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        };
        // A closed stdout must not abort the remaining runs' progress on stderr.
        let _ = emit(&format!("{line}\n"));
        if let (OutputFormat::Text, Some(error)) = (output, &result.first_error) {
            eprintln!("first error (op={} clients={}): {error}", result.op.name(), result.clients);
        }
    })
    .await
    .context("run the KV benchmark")?;
    Ok(ExitCode::SUCCESS)
}

async fn bench_lock(args: BenchLockArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
    let output = args.output;
    lock::run(&config, |result| {
        let line = match output {
            OutputFormat::Text => result.text_line(),
            OutputFormat::Json => serde_json::to_string(result).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        };
        let _ = emit(&format!("{line}\n"));
        if let (OutputFormat::Text, Some(error)) = (output, &result.first_error) {
            eprintln!("first error (op={} clients={}): {error}", result.op.name(), result.clients);
        }
    })
    .await
    .context("run the lock benchmark")?;
    Ok(ExitCode::SUCCESS)
}

async fn bench_meta(args: BenchMetaArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
    let output = args.output;
    meta::run(&config, |result| {
        let line = match output {
            OutputFormat::Text => result.text_line(),
            OutputFormat::Json => serde_json::to_string(result).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        };
        let _ = emit(&format!("{line}\n"));
        if let (OutputFormat::Text, Some(error)) = (output, &result.first_error) {
            eprintln!("first error (op={} clients={}): {error}", result.op.name(), result.clients);
        }
    })
    .await
    .context("run the metadata benchmark")?;
    Ok(ExitCode::SUCCESS)
}

async fn fsck(args: FsckArgs) -> anyhow::Result<ExitCode> {
    let report = crate::fsck::query(&args.metaserver, args.limit, args.timeout).await?;
    emit(&crate::fsck::render(&report))?;
    Ok(if crate::fsck::healthy(&report) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
