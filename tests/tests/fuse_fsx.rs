//! fsx 0.3.2 (crates.io) against a Cairn mount, with every operation on — mmap reads and
//! shared writable mmap writes included (tests/posix/fsx.toml): one run with a fixed seed, then
//! one with a random seed that is printed first, so a failure can be replayed with
//! `fsx -S SEED -N OPS -f tests/posix/fsx.toml FILE`.
//!
//! Operation counts: `CAIRN_FSX_OPS` (default 100,000) for the fixed seed and
//! `CAIRN_FSX_RANDOM_OPS` (default [`RANDOM_OPS_DEFAULT`]) for the random one.
//!
//! Skips (loudly) when fsx is not installed, except in CI (`CI` or
//! `CAIRN_REQUIRE_POSIX_SUITES`), where it fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_tests::posix::{find_suite_binary, posix_dir, FSX_VERSION};
use cairn_tests::{run_bounded, FuseCluster};

/// The fixed seed of the first run.
const FIXED_SEED: u64 = 20_261_126;
const FIXED_OPS_DEFAULT: u64 = 100_000;
/// Smaller than the fixed run: 100,000 operations took 20 minutes on a loaded 2-core machine
/// (12 ms per operation, most of it fsync and msync waiting for every replica).
const RANDOM_OPS_DEFAULT: u64 = 10_000;
/// Deadline for one fsx run.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

fn ops_from_env(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn run_fsx(fsx: &Path, file: &Path, artifacts: &Path, seed: u64, ops: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(artifacts).context("create the artifact directory")?;
    eprintln!("fsx: seed {seed}, {ops} operations on {} (artifacts in {})", file.display(), artifacts.display());
    let started = Instant::now();
    let output = run_bounded(
        Command::new(fsx)
            .args(["-N", &ops.to_string(), "-S", &seed.to_string()])
            .arg("-P")
            .arg(artifacts)
            .arg("-f")
            .arg(posix_dir().join("fsx.toml"))
            .arg(file),
        RUN_TIMEOUT,
    )
    .context("run fsx")?;
    let elapsed = started.elapsed();
    let (stdout, stderr) = (&output.stdout, &output.stderr);
    let per_op_us = elapsed.as_micros() / u128::from(ops.max(1));
    let status = output.status.map_or_else(|| "killed at the deadline".to_owned(), |s| s.to_string());
    eprintln!("fsx seed {seed}: {status} after {elapsed:.1?} ({per_op_us} µs/op)");
    if !output.status.is_some_and(|s| s.success()) || !stdout.contains("All operations completed A-OK!") {
        let tail =
            |s: &str| s.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        bail!(
            "fsx failed with seed {seed} ({ops} ops, {status}, {elapsed:.1?}); replay: fsx -S {seed} -N {ops} -f \
             tests/posix/fsx.toml FILE\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            tail(stdout),
            tail(stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsx_with_mmap_passes() -> anyhow::Result<()> {
    let Some(fsx) = find_suite_binary("fsx", FSX_VERSION)? else { return Ok(()) };
    let fixed_ops = ops_from_env("CAIRN_FSX_OPS", FIXED_OPS_DEFAULT)?;
    let random_ops = ops_from_env("CAIRN_FSX_RANDOM_OPS", RANDOM_OPS_DEFAULT)?;
    let cluster = FuseCluster::start("fuse-fsx").await?;
    let dir = cluster.mnt().join("fsx");
    std::fs::create_dir_all(&dir).context("mkdir on the mount")?;
    let artifacts = cluster.dir().join("fsx-artifacts");

    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        run_fsx(&fsx, &dir.join("fixed"), &artifacts.join("fixed"), FIXED_SEED, fixed_ops)?;
        let seed: u64 = rand::random();
        eprintln!("fsx random seed: {seed}");
        run_fsx(&fsx, &dir.join("random"), &artifacts.join("random"), seed, random_ops)
    })?;
    cluster.finish(&[])
}
