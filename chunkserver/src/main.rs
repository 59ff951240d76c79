//! `cairn-chunkserver`: parse flags, start tracing, run the server until SIGTERM/SIGINT (or run
//! one of the tool subcommands).

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "cairn-chunkserver", version, about = "Cairn chunkserver: replicated, checksummed chunks in RocksDB")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    tool: Option<cairn_chunkserver::tools::Tool>,
    #[command(flatten)]
    flags: cairn_chunkserver::config::Flags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    if let Some(tool) = cli.tool {
        return cairn_chunkserver::tools::run(tool).await;
    }
    let config = cli.flags.resolve().context("configuration")?;
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
        stop.cancel();
    });
    cairn_chunkserver::node::run(config, shutdown).await.context("chunkserver")?;
    Ok(())
}
