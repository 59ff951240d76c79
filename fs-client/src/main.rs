//! `cairn`: parse the command line, start logging, run the library, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cairn_fs_client::cli::Cli::parse();
    cairn_fs_client::init_tracing();
    match cairn_fs_client::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cairn: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
