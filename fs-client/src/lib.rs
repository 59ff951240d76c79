//! The `cairn` command-line client.
//!
//! * [`dev`] starts and stops local multi-process clusters; `cairn dev` and the multi-process
//!   integration tests share it.
//! * [`bench`] holds load generators (`cairn bench kv`).
//! * [`http`] is the minimal HTTP/1.1 client for the servers' `/health`, `/status`, `/metrics`.
//! * [`cli`] parses the command line; `commands` carries each subcommand out.
//!
//! `cairn mount` (the FUSE client) does not exist yet and says so.

pub mod bench;
pub mod cli;
mod commands;
pub mod dev;
pub mod http;
pub mod limits;

use std::process::ExitCode;

use anyhow::Context as _;

/// Runs a parsed command line to completion on a fresh Tokio runtime.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the Tokio runtime")?;
    runtime.block_on(commands::run(cli.command))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
