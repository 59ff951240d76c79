//! [`FuseCluster`]: a whole Cairn cluster (coordinators, chunkservers, metaservers) mounted
//! through FUSE by the dev launcher, owned by one test; and [`sh`], which runs ordinary tools
//! (cp, tar, git, sqlite3, ...) against the mount with a deadline.

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_fs_client::dev::{Cluster, ClusterSpec, NodeId, NodeRef, ServiceKind, PRIMARY_MOUNT};
use tempfile::TempDir;

use crate::limits::{CLUSTER_READY_TIMEOUT, LEADER_TIMEOUT, LOG_LINES_QUOTED_MAX, SHELL_TIMEOUT};
use crate::{poll_until, AllowedError, PEER_RPC_TIMEOUT, PEER_UNREACHABLE};

/// openraft logs at ERROR when a metaserver's or coordinator's Raft RPC to a peer fails; peers
/// start one by one and the fault tests kill some.
pub const OPENRAFT_ERRORS: AllowedError = AllowedError::fixed(
    " ERROR openraft::",
    "openraft reports unreachable or slow peers at ERROR; peers start one by one",
);

/// How to start a [`FuseCluster`].
#[derive(Debug, Clone)]
pub struct FuseOptions {
    /// Number of chunkservers (at least the replication factor, 3).
    pub chunkservers: usize,
    /// `--heartbeat-interval` / `--election-timeout` of coordinators and metaservers.
    pub heartbeat_interval: &'static str,
    pub election_timeout: &'static str,
    /// Mount the cluster at `DIR/mnt` as part of the start.
    pub mount: bool,
    /// Extra `cairn mount` arguments.
    pub mount_args: Vec<OsString>,
}

impl Default for FuseOptions {
    /// Calm Raft timings: nine servers and a FUSE client share 2 cores with the tools under test.
    fn default() -> Self {
        FuseOptions {
            chunkservers: 3,
            heartbeat_interval: "100ms",
            election_timeout: "1s",
            mount: true,
            mount_args: Vec::new(),
        }
    }
}

/// A full cluster in a fresh temporary directory, mounted at [`FuseCluster::mnt`]. Dropping it
/// unmounts every mount, then kills the servers. A test that does not reach
/// [`FuseCluster::finish`] keeps the directory (data and logs) and prints where it is.
#[derive(Debug)]
pub struct FuseCluster {
    name: String,
    // Field order matters: the cluster (mounts, then servers) goes before its directory.
    cluster: Cluster,
    dir: Option<TempDir>,
    finished: bool,
}

impl FuseCluster {
    pub async fn start(name: &str) -> anyhow::Result<FuseCluster> {
        FuseCluster::start_with(name, FuseOptions::default()).await
    }

    pub async fn start_with(name: &str, options: FuseOptions) -> anyhow::Result<FuseCluster> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-{name}-"))
            .tempdir()
            .context("create the cluster directory")?;
        let mut spec = ClusterSpec::new(dir.path());
        spec.chunkservers = options.chunkservers;
        spec.ready_timeout = CLUSTER_READY_TIMEOUT;
        let raft: Vec<OsString> =
            ["--heartbeat-interval", options.heartbeat_interval, "--election-timeout", options.election_timeout]
                .iter()
                .map(OsString::from)
                .collect();
        spec.coordinator_args = raft.clone();
        spec.metaserver_args = raft;
        spec.mount = options.mount;
        spec.mount_args = options.mount_args;
        match Cluster::start(spec).await {
            Ok(cluster) => Ok(FuseCluster { name: name.to_owned(), cluster, dir: Some(dir), finished: false }),
            Err(e) => {
                let kept = dir.keep();
                Err(anyhow::Error::new(e)
                    .context(format!("start the {name} cluster (directory kept: {})", kept.display())))
            }
        }
    }

    /// The cluster directory.
    pub fn dir(&self) -> PathBuf {
        self.cluster.dir().to_path_buf()
    }

    /// The primary mount (`DIR/mnt`).
    pub fn mnt(&self) -> PathBuf {
        self.cluster.mountpoint(PRIMARY_MOUNT).unwrap_or_else(|| self.dir().join(PRIMARY_MOUNT))
    }

    /// A scratch directory on the local disk, inside the cluster directory (kept with it).
    pub fn scratch(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir().join("scratch").join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(path)
    }

    /// The metaserver leader, confirmed by the leader itself, other than `not`.
    pub async fn metaserver_leader(&self, not: Option<NodeId>) -> anyhow::Result<NodeId> {
        poll_until("a metaserver leader", LEADER_TIMEOUT, || async {
            let Some(leader) = self.cluster.leader_of(ServiceKind::Metaserver).await else {
                return Err("no metaserver names a leader".to_owned());
            };
            if Some(leader) == not {
                return Err(format!("metaserver {leader} is still named leader"));
            }
            match self.cluster.status(NodeRef::metaserver(leader)).await {
                Ok(status) if status.state == "Leader" => Ok(leader),
                Ok(status) => Err(format!("metaserver {leader} is named leader but says {}", status.state)),
                Err(e) => Err(format!("metaserver {leader} is named leader but: {e}")),
            }
        })
        .await
    }

    /// Ends the test: fails on ERROR lines (or panics) in any server or mount log that match
    /// none of `allowed` (openraft's peer reports are always allowed). On success the directory
    /// is deleted when the cluster is dropped.
    pub fn finish(mut self, allowed: &[AllowedError]) -> anyhow::Result<()> {
        let mut all: Vec<AllowedError> = vec![PEER_UNREACHABLE, PEER_RPC_TIMEOUT, OPENRAFT_ERRORS];
        all.extend(allowed.iter().cloned());
        let patterns: Vec<&str> = all.iter().map(|a| a.pattern.as_ref()).collect();
        let mut found: Vec<String> = self
            .cluster
            .unexpected_errors(&patterns)
            .context("scan the server logs")?
            .iter()
            .map(ToString::to_string)
            .collect();
        found.extend(self.cluster.unexpected_mount_errors(&patterns).context("scan the mount logs")?);
        if !found.is_empty() {
            let quoted: Vec<String> = found.iter().take(LOG_LINES_QUOTED_MAX).cloned().collect();
            bail!(
                "{} unexpected ERROR line(s) in the logs of the {} cluster:\n{}",
                found.len(),
                self.name,
                quoted.join("\n")
            );
        }
        self.finished = true;
        Ok(())
    }
}

impl Deref for FuseCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for FuseCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl Drop for FuseCluster {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!(
                    "test did not finish: the {} cluster's data and logs are kept in {}",
                    self.name,
                    kept.display()
                );
            }
        }
    }
}

/// What a finished shell command printed.
#[derive(Debug, Clone)]
pub struct ShellOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `script` with `bash -euo pipefail` in `cwd`, killed after [`SHELL_TIMEOUT`]; fails
/// unless it exits 0. The error quotes the script, its exit status and both outputs.
pub fn sh(cwd: &Path, script: &str) -> anyhow::Result<ShellOutput> {
    sh_with_timeout(cwd, script, SHELL_TIMEOUT)
}

/// [`sh`] with an explicit deadline.
pub fn sh_with_timeout(cwd: &Path, script: &str, timeout: Duration) -> anyhow::Result<ShellOutput> {
    let started = Instant::now();
    // `timeout` kills the whole script (and whatever it runs) if it hangs on the mount.
    let output = Command::new("timeout")
        .args(["--kill-after=10", &format!("{}", timeout.as_secs().max(1))])
        .args(["bash", "-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run bash in {}", cwd.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        let why = if output.status.code() == Some(124) || output.status.code() == Some(137) {
            format!("timed out after {:?}", started.elapsed())
        } else {
            format!("{}", output.status)
        };
        bail!(
            "script failed ({why}) in {}:\n{script}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            cwd.display()
        );
    }
    Ok(ShellOutput { stdout, stderr })
}

/// One named check of [`run_checks`].
pub type Check<'a> = (&'a str, Box<dyn FnOnce() -> anyhow::Result<()> + 'a>);

/// Runs each named check, prints how it went, and fails listing every failed one, so one bug
/// does not hide the others.
pub fn run_checks(checks: Vec<Check<'_>>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for (name, check) in checks {
        let started = Instant::now();
        match check() {
            Ok(()) => eprintln!("check {name}: ok ({:.1?})", started.elapsed()),
            Err(e) => {
                eprintln!("check {name}: FAILED ({:.1?}): {e:#}", started.elapsed());
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} check(s) failed:\n{}", failed.len(), failed.join("\n\n"));
    }
    Ok(())
}
