//! The `cairn` command-line client.
//!
//! * [`dev`] starts and stops local multi-process clusters; `cairn dev` and the multi-process
//!   integration tests share it.
//! * [`fsck`] is `cairn fsck`, the chunk health report.
//! * [`bench`] holds load generators (`cairn bench kv`).
//! * [`http`] is the minimal HTTP/1.1 client for the servers' `/health`, `/status`, `/metrics`.
//! * [`cli`] parses the command line; `commands` carries each subcommand out.
//!
//! * [`fuse`] is `cairn mount` / `cairn umount`, the FUSE client, also run as the
//!   `mount.cairn` helper (mount -t fuse.cairn, /etc/fstab).

pub mod bench;
pub mod cli;
mod commands;
pub mod dev;
pub mod fsck;
pub mod fuse;
pub mod http;
pub mod limits;

use std::process::ExitCode;

use anyhow::Context as _;

/// Runs a parsed command line to completion on a fresh Tokio runtime.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        cli::Command::Mount(args) => {
            let options = args.options().map_err(|e| anyhow::anyhow!(e))?;
            fuse::mount(&options)?;
            return Ok(ExitCode::SUCCESS);
        }
        cli::Command::Umount(args) => {
            fuse::umount(&args.mountpoint, args.lazy)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the Tokio runtime")?;
    runtime.block_on(commands::run(cli.command))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    init_tracing_with("warn", None);
}

/// Logs to `log_file` (appending) or stderr, filtered by `RUST_LOG` or else `default_filter`.
pub fn init_tracing_with(default_filter: &str, log_file: Option<&std::path::Path>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let file = log_file.and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    match file {
        Some(file) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        None => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
}

/// Logging for a parsed command line: `cairn mount --foreground --log-file` logs to the file.
pub fn init_tracing_for(command: &cli::Command) {
    match command {
        cli::Command::Mount(args) => {
            let file = if args.foreground { args.log_file.as_deref() } else { None };
            init_tracing_with(&args.log_level, file);
        }
        _ => init_tracing(),
    }
}

/// The `mount.cairn` helper (mount(8) runs it as /sbin/mount.fuse.cairn SOURCE DIR -o OPTS):
/// mounts in the background unless `-f`, and returns mount(8)'s exit codes.
pub fn mount_helper_main(args: &[String]) -> ExitCode {
    let options = match fuse::parse_helper_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mount.cairn: {e}");
            return ExitCode::from(1);
        }
    };
    init_tracing_with(&options.log_level, if options.foreground { options.log_file.as_deref() } else { None });
    match fuse::mount(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.cairn: {e:#}");
            // mount(8): 32 is "mount failure".
            ExitCode::from(32)
        }
    }
}

/// Whether this process was started under a helper name (`mount.cairn`, `mount.fuse.cairn`),
/// e.g. through a symlink to `cairn`.
pub fn invoked_as_mount_helper() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.starts_with("mount.cairn") || n.starts_with("mount.fuse.cairn"))
}
