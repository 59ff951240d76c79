//! Running the POSIX suites (pjdfstest and fsx, both pinned crates.io versions) against a
//! mount: finding the binaries, parsing pjdfstest's report, and holding it against the
//! checked-in known-failures list (`tests/posix/pjdfstest-known-failures.txt`).
//!
//! Locally a missing binary skips the suite with a loud message; in CI (`CI` or
//! `CAIRN_REQUIRE_POSIX_SUITES` set to anything but `0`/`false`/empty) it fails the test, since
//! `scripts/install-deps.sh` installs both.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// pjdfstest version the known-failures list was made with.
pub const PJDFSTEST_VERSION: &str = "0.2.2";
/// fsx version the runs are sized for.
pub const FSX_VERSION: &str = "0.3.2";

/// The directory with the suites' configuration files and the known-failures list.
pub fn posix_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("posix")
}

/// Whether the suites must run (CI), so a missing binary is a failure rather than a skip.
pub fn suites_required() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    set("CI") || set("CAIRN_REQUIRE_POSIX_SUITES")
}

/// The installed `tool` of exactly `version` (`tool --version` prints `tool VERSION`), looked
/// up on `PATH` and in cargo's bin directory. `Ok(None)` (after a loud message) when it is
/// missing and the suites are not required; an error when it is missing in CI or has another
/// version.
pub fn find_suite_binary(tool: &str, version: &str) -> anyhow::Result<Option<PathBuf>> {
    let install = format!("cargo install {tool} --version {version} --locked (or scripts/install-deps.sh)");
    let Some(path) = find_binary(tool) else {
        if suites_required() {
            bail!("{tool} is not installed but the POSIX suites are required here (CI): {install}");
        }
        eprintln!("\n!!!!!!!! SKIPPED: {tool} is not installed; install it with: {install} !!!!!!!!\n");
        return Ok(None);
    };
    let output = Command::new(&path).arg("--version").output().with_context(|| format!("run {}", path.display()))?;
    let shown = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if shown != format!("{tool} {version}") {
        bail!("{} reports version {shown:?}, but the suite is pinned to {version}: {install}", path.display());
    }
    Ok(Some(path))
}

fn find_binary(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// How one pjdfstest test case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// With the lines pjdfstest printed under it (the panic message).
    Failed(String),
    /// With the reasons it printed.
    Skipped(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Failed(why) => write!(f, "FAILED: {why}"),
            Outcome::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// A parsed pjdfstest run.
#[derive(Debug, Clone, Default)]
pub struct PjdReport {
    /// Every test case by name.
    pub cases: BTreeMap<String, Outcome>,
    /// The summary line, if the run got that far.
    pub summary: Option<String>,
}

impl PjdReport {
    pub fn count(&self, pick: fn(&Outcome) -> bool) -> usize {
        self.cases.values().filter(|o| pick(o)).count()
    }

    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
}

/// Parses pjdfstest's stdout: one `NAME<padding>STATUS` line per case (`ok`, `FAILED`,
/// `skipped`; `failed as expected` and `PASSED UNEXPECTEDLY` when its own expected-failure list
/// is used, which the runner does not do), each followed by tab-indented detail lines, and a
/// final `Summary: ...` line. Colour codes are ignored.
pub fn parse_pjdfstest(stdout: &str) -> anyhow::Result<PjdReport> {
    let mut report = PjdReport::default();
    let mut current: Option<String> = None;
    for raw in stdout.lines() {
        let line = strip_ansi(raw);
        if line.starts_with('\t') || line.starts_with("    ") {
            let detail = line.trim();
            if let Some(name) = &current {
                if let Some(Outcome::Failed(text) | Outcome::Skipped(text)) = report.cases.get_mut(name) {
                    if !text.is_empty() {
                        text.push_str(" | ");
                    }
                    text.push_str(detail);
                }
            }
            continue;
        }
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(summary) = line.strip_prefix("Summary:") {
            report.summary = Some(summary.trim().to_owned());
            current = None;
            continue;
        }
        let Some((name, status)) = line.split_once(' ') else {
            current = None;
            continue;
        };
        let outcome = match status.trim() {
            "ok" | "failed as expected" => Outcome::Passed,
            "FAILED" | "PASSED UNEXPECTEDLY" => Outcome::Failed(String::new()),
            "skipped" => Outcome::Skipped(String::new()),
            _ => {
                // Not a result line (a backtrace or stray output).
                current = None;
                continue;
            }
        };
        if report.cases.insert(name.to_owned(), outcome).is_some() {
            bail!("pjdfstest reported {name} twice");
        }
        current = Some(name.to_owned());
    }
    Ok(report)
}

/// One entry of the known-failures list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFailure {
    pub name: String,
    pub reason: String,
}

/// Parses the known-failures list: one `TEST_NAME REASON...` per line; `#` starts a comment
/// line; blank lines are ignored. Every entry needs a reason.
pub fn parse_known_failures(text: &str) -> anyhow::Result<Vec<KnownFailure>> {
    let mut entries: Vec<KnownFailure> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let reason = reason.trim();
        if reason.is_empty() {
            bail!("known-failures line {}: {name} has no reason", index + 1);
        }
        if entries.iter().any(|e| e.name == name) {
            bail!("known-failures line {}: {name} is listed twice", index + 1);
        }
        entries.push(KnownFailure { name: name.to_owned(), reason: reason.to_owned() });
    }
    Ok(entries)
}

/// Holds a run against the known failures. Problems: a failure not listed; a listed test that
/// passed (remove it from the list), was skipped, or does not exist.
pub fn compare_with_known(report: &PjdReport, known: &[KnownFailure]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, outcome) in &report.cases {
        if let Outcome::Failed(why) = outcome {
            if !known.iter().any(|k| &k.name == name) {
                problems.push(format!("new failure {name}: {why}"));
            }
        }
    }
    for entry in known {
        match report.cases.get(&entry.name) {
            Some(Outcome::Failed(_)) => {}
            Some(Outcome::Passed) => problems
                .push(format!("{} now passes: remove it from the known failures ({})", entry.name, entry.reason)),
            Some(Outcome::Skipped(why)) => {
                problems.push(format!("{} is listed as a known failure but was skipped ({why})", entry.name))
            }
            None => {
                problems.push(format!("{} is listed as a known failure but pjdfstest has no such test", entry.name))
            }
        }
    }
    problems
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
chmod::ok_case                                                               ok
\u{1b}[34mrename::ctime\u{1b}[0m                                                       \u{1b}[31mFAILED\u{1b}[0m
\tassertion failed: ctime changed
\tleft: 1 right: 2
chown::erofs_named                                                       skipped
\tRemounts (allow_remount) are not allowed in the configuration file
open::x                                                            failed as expected

Summary: 1 failed, 1 skipped, 2 passed, 0 expected failures, 4 total
";

    #[test]
    fn parses_cases_details_and_summary() {
        let report = parse_pjdfstest(OUTPUT).expect("parse");
        assert_eq!(report.cases.len(), 4);
        assert_eq!(report.cases["chmod::ok_case"], Outcome::Passed);
        assert_eq!(
            report.cases["rename::ctime"],
            Outcome::Failed("assertion failed: ctime changed | left: 1 right: 2".into())
        );
        assert!(matches!(&report.cases["chown::erofs_named"], Outcome::Skipped(why) if why.contains("allow_remount")));
        assert_eq!((report.passed(), report.failed(), report.skipped()), (2, 1, 1));
        assert_eq!(report.summary.as_deref(), Some("1 failed, 1 skipped, 2 passed, 0 expected failures, 4 total"));
        assert!(parse_pjdfstest("a ok\na ok\n").is_err());
    }

    #[test]
    fn known_failures_need_reasons_and_are_unique() {
        let list = parse_known_failures("# comment\n\nrename::ctime  the reason here\n").expect("parse");
        assert_eq!(list, [KnownFailure { name: "rename::ctime".into(), reason: "the reason here".into() }]);
        assert!(parse_known_failures("rename::ctime\n").is_err());
        assert!(parse_known_failures("a why\na why\n").is_err());
    }

    #[test]
    fn comparison_flags_new_failures_and_stale_entries() {
        let report = parse_pjdfstest(OUTPUT).expect("parse");
        let known = |names: &[&str]| -> Vec<KnownFailure> {
            names.iter().map(|n| KnownFailure { name: (*n).into(), reason: "r".into() }).collect()
        };
        assert!(compare_with_known(&report, &known(&["rename::ctime"])).is_empty());
        let problems = compare_with_known(&report, &known(&[]));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("new failure rename::ctime"), "{problems:?}");
        let problems =
            compare_with_known(&report, &known(&["rename::ctime", "chmod::ok_case", "chown::erofs_named", "gone"]));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("now passes"));
        assert!(problems[1].contains("skipped"));
        assert!(problems[2].contains("no such test"));
    }

    #[test]
    fn the_checked_in_list_parses() {
        let text = std::fs::read_to_string(posix_dir().join("pjdfstest-known-failures.txt")).expect("read the list");
        parse_known_failures(&text).expect("parse the list");
    }
}
