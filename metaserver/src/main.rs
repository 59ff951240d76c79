//! `cairn-metaserver`: parse flags, start tracing, run the node until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_ansi(false)
        .init();
    let config = cairn_metaserver::config::Flags::parse().resolve().context("configuration")?;
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
    cairn_metaserver::node::run(config, shutdown).await.context("metaserver")?;
    Ok(())
}
