//! What each `cairn` subcommand does: thin glue between the parsed command line, the library
//! modules and the terminal.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::bench::kv;
use crate::cli::{BenchCommand, BenchKvArgs, Command, DevCommand, DevDownArgs, DevUpArgs, OutputFormat};
use crate::dev::{self, ClusterSpec, ClusterState, UpOutcome};

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Dev(DevCommand::Up(args)) => dev_up(args).await,
        Command::Dev(DevCommand::Down(args)) => dev_down(args).await,
        Command::Dev(DevCommand::Status(args)) => dev_status(&args.dir).await,
        Command::Bench(BenchCommand::Kv(args)) => bench_kv(args).await,
        Command::Mount { .. } => {
            eprintln!("not built yet: the FUSE client arrives with the FUSE issue");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn dev_up(args: DevUpArgs) -> anyhow::Result<ExitCode> {
    let spec =
        ClusterSpec { coordinators: args.coordinators, ready_timeout: args.timeout, ..ClusterSpec::new(args.dir.dir) };
    let outcome = dev::up(&spec).await.context("start the dev cluster")?;
    let state = outcome.state();
    match &outcome {
        UpOutcome::Started(_) => println!("cairn dev cluster started in {}", state.dir.display()),
        UpOutcome::AlreadyRunning(_) => println!("cairn dev cluster already running in {}", state.dir.display()),
    }
    print_nodes(state);
    print!("{}", dev::render_env(state));
    let env = state.env_path();
    println!("env file: {} (load it with: set -a; . {}; set +a)", env.display(), env.display());
    Ok(ExitCode::SUCCESS)
}

async fn dev_down(args: DevDownArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir.dir;
    let report = dev::down(dir, args.purge).await.context("stop the dev cluster")?;
    if !report.found {
        println!("no cluster recorded in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let names = |nodes: &[dev::NodeRef]| nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if report.stopped.is_empty() && report.killed.is_empty() {
        println!("no node was running");
    }
    if !report.stopped.is_empty() {
        println!("stopped: {}", names(&report.stopped));
    }
    if !report.killed.is_empty() {
        println!("killed after the grace period: {}", names(&report.killed));
    }
    if report.purged {
        println!("purged data, logs and records in {}", dir.display());
    } else {
        println!("data kept in {} (`cairn dev down --purge` deletes it)", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn dev_status(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let Some(reports) = dev::status(dir).await.context("read the dev cluster status")? else {
        println!("no cluster recorded in {}", dir.display());
        return Ok(ExitCode::FAILURE);
    };
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
        println!(
            "{} pid={pid} alive={} client={} http={} status={status}",
            node.node_ref(),
            if report.alive { "yes" } else { "no" },
            node.addrs.client,
            node.addrs.http,
        );
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_nodes(state: &ClusterState) {
    for node in &state.nodes {
        let pid = node.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        println!(
            "  {} pid={pid} client={} http={} log={}",
            node.node_ref(),
            node.addrs.client,
            node.addrs.http,
            node.log_path.display()
        );
    }
}

async fn bench_kv(args: BenchKvArgs) -> anyhow::Result<ExitCode> {
    let config = args.config();
    let output = args.output;
    kv::run(&config, |result| {
        let mut stdout = std::io::stdout().lock();
        let line = match output {
            OutputFormat::Text => result.text_line(),
            OutputFormat::Json => serde_json::to_string(result).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        };
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        if let (OutputFormat::Text, Some(error)) = (output, &result.first_error) {
            eprintln!("first error (op={} clients={}): {error}", result.op.name(), result.clients);
        }
    })
    .await
    .context("run the KV benchmark")?;
    Ok(ExitCode::SUCCESS)
}
