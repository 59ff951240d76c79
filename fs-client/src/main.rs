//! `cairn`: parse the command line, start logging, run the library, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    if cairn_fs_client::invoked_as_mount_helper() {
        return cairn_fs_client::mount_helper_main(&std::env::args().skip(1).collect::<Vec<_>>());
    }
    let cli = cairn_fs_client::cli::Cli::parse();
    cairn_fs_client::init_tracing_for(&cli.command);
    match cairn_fs_client::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cairn: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
