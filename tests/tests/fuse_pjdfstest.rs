//! pjdfstest 0.2.2 (the Rust suite from crates.io), all of it, against a Cairn mount with
//! allow_other and default_permissions, with a tmpfs (/dev/shm) as the second filesystem for the
//! cross-device cases. The result is held against tests/posix/pjdfstest-known-failures.txt:
//! the test fails on any failure not listed there and on any listed case that passes.
//!
//! Skips (loudly) when pjdfstest is not installed, except in CI (`CI` or
//! `CAIRN_REQUIRE_POSIX_SUITES`), where it fails.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_tests::posix::{
    compare_with_known, find_suite_binary, parse_known_failures, parse_pjdfstest, posix_dir, Outcome, PJDFSTEST_VERSION,
};
use cairn_tests::{run_bounded, FuseCluster};

/// Deadline for the whole suite (on local ext4 it takes about 6 s).
const SUITE_TIMEOUT: Duration = Duration::from_secs(1200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pjdfstest_passes_except_known_failures() -> anyhow::Result<()> {
    let Some(pjdfstest) = find_suite_binary("pjdfstest", PJDFSTEST_VERSION)? else { return Ok(()) };
    let known_path = posix_dir().join("pjdfstest-known-failures.txt");
    let known = parse_known_failures(
        &std::fs::read_to_string(&known_path).with_context(|| format!("read {}", known_path.display()))?,
    )?;

    let cluster = FuseCluster::start("fuse-pjdfstest").await?;
    let under_test = cluster.mnt().join("pjdfstest");
    std::fs::create_dir_all(&under_test).context("mkdir on the mount")?;
    let secondary = tempfile::Builder::new().prefix("cairn-pjdfstest-").tempdir_in("/dev/shm").context("tmpfs dir")?;
    let report_path = cluster.dir().join("pjdfstest.out");

    let started = Instant::now();
    let output = tokio::task::block_in_place(|| {
        run_bounded(
            Command::new(&pjdfstest)
                .arg("-c")
                .arg(posix_dir().join("pjdfstest.toml"))
                .arg("-p")
                .arg(&under_test)
                .arg("-s")
                .arg(secondary.path())
                .env("NO_COLOR", "1"),
            SUITE_TIMEOUT,
        )
    })
    .context("run pjdfstest")?;
    let elapsed = started.elapsed();
    let (stdout, stderr) = (output.stdout.clone(), output.stderr.clone());
    std::fs::write(&report_path, format!("{stdout}\n--- stderr ---\n{stderr}")).context("save the report")?;

    let report = parse_pjdfstest(&stdout)?;
    eprintln!(
        "pjdfstest {PJDFSTEST_VERSION} on the mount: {} cases, {} passed, {} failed, {} skipped in {elapsed:.1?} \
         (summary: {:?}; full output in {})",
        report.cases.len(),
        report.passed(),
        report.failed(),
        report.skipped(),
        report.summary,
        report_path.display()
    );
    for (name, outcome) in report.cases.iter().filter(|(_, o)| !matches!(o, Outcome::Passed)) {
        eprintln!("  {name}: {outcome}");
    }
    if report.summary.is_none() {
        let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)");
        bail!("pjdfstest did not complete ({:?}, {elapsed:.1?}); last line: {last}\nstderr:\n{stderr}", output.status);
    }
    let problems = compare_with_known(&report, &known);
    if !problems.is_empty() {
        bail!("pjdfstest differs from {} in {} way(s):\n{}", known_path.display(), problems.len(), problems.join("\n"));
    }
    cluster.finish(&[])
}
