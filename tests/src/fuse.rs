//! [`FuseCluster`]: a whole Cairn cluster (coordinators, chunkservers, metaservers) mounted
//! through FUSE by the dev launcher, owned by one test; and [`sh`], which runs ordinary tools
//! (cp, tar, git, sqlite3, ...) against the mount with a deadline.

use std::ffi::OsString;
use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_fs_client::dev::{Cluster, ClusterSpec, NodeId, NodeRef, ServiceKind, PRIMARY_MOUNT};
use tempfile::TempDir;

use crate::limits::{
    CLUSTER_READY_TIMEOUT, LEADER_TIMEOUT, LOG_LINES_QUOTED_MAX, SHELL_KILL_GRACE, SHELL_POLL_INTERVAL, SHELL_TIMEOUT,
};
use crate::{keep_for_diagnosis, poll_until, AllowedError, PEER_RPC_TIMEOUT, PEER_UNREACHABLE};

/// openraft logs at ERROR when a metaserver's or coordinator's Raft RPC to a peer fails; peers
/// start one by one and the fault tests kill some.
pub const OPENRAFT_ERRORS: AllowedError = AllowedError::fixed(
    " ERROR openraft::",
    "openraft reports unreachable or slow peers at ERROR; peers start one by one",
);

/// fuser logs at ERROR when the kernel no longer wants a reply (the request was interrupted,
/// e.g. its process was killed); the reply is dropped and nothing is lost.
pub const FUSE_REPLY_DROPPED: AllowedError = AllowedError::fixed(
    "Failed to send FUSE reply: No such file or directory",
    "the kernel dropped an interrupted request before its reply arrived",
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
    /// Extra arguments of every chunkserver (`--capacity 96MiB`).
    pub chunkserver_args: Vec<OsString>,
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
            chunkserver_args: Vec::new(),
        }
    }
}

/// A full cluster in a fresh temporary directory, mounted at [`FuseCluster::mnt`]. Dropping it
/// unmounts every mount, then kills the servers. A test that does not reach
/// [`FuseCluster::finish`] keeps the directory (logs and metadata) and prints where it is.
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
        spec.chunkserver_args = options.chunkserver_args;
        match Cluster::start(spec).await {
            Ok(cluster) => Ok(FuseCluster { name: name.to_owned(), cluster, dir: Some(dir), finished: false }),
            Err(e) => {
                let kept = keep_for_diagnosis(dir);
                Err(anyhow::Error::new(e).context(format!("start the {name} cluster (directory kept: {kept})")))
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

    /// The sum over the metaservers of a metric line (see [`crate::metaserver_metric_sum`]).
    pub async fn metaserver_metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        crate::metaserver_metric_sum(&self.cluster, name).await
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
    /// none of `allowed` (openraft's peer reports and dropped FUSE replies are always allowed). On success the directory
    /// is deleted when the cluster is dropped.
    pub fn finish(mut self, allowed: &[AllowedError]) -> anyhow::Result<()> {
        let mut all: Vec<AllowedError> = vec![PEER_UNREACHABLE, PEER_RPC_TIMEOUT, OPENRAFT_ERRORS, FUSE_REPLY_DROPPED];
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
                let kept = keep_for_diagnosis(dir);
                eprintln!("test did not finish: the {} cluster's logs are kept in {kept}", self.name);
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

/// [`sh`] with an explicit deadline (see [`run_bounded`]).
pub fn sh_with_timeout(cwd: &Path, script: &str, timeout: Duration) -> anyhow::Result<ShellOutput> {
    let mut command = Command::new("bash");
    command.args(["-euo", "pipefail", "-c", script]).current_dir(cwd);
    let run = run_bounded(&mut command, timeout).with_context(|| format!("run bash in {}", cwd.display()))?;
    let (stdout, stderr) = (run.stdout, run.stderr);
    match run.status {
        Some(status) if status.success() => Ok(ShellOutput { stdout, stderr }),
        Some(status) => bail!(
            "script failed ({status}) in {}:\n{script}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            cwd.display()
        ),
        None => bail!(
            "script timed out after {:?} in {} (killed; processes stuck on the mount abandoned):\n{script}\n\
             --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            run.elapsed,
            cwd.display()
        ),
    }
}

/// How a [`run_bounded`] command ended.
#[derive(Debug)]
pub struct BoundedRun {
    /// `None` if it was killed at the deadline.
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `command` (stdin from /dev/null, outputs captured) in a process group of its own. At
/// `timeout` the group is SIGKILLed and the call returns at once, even if a process stays stuck
/// in an unanswered FUSE request (it is released when the mount goes away): a hung mount fails
/// the test instead of hanging it.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<BoundedRun> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {:?}", command.get_program()))?;
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for the command")? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(SHELL_KILL_GRACE);
            let _ = child.try_wait();
            break None;
        }
        std::thread::sleep(SHELL_POLL_INTERVAL);
    };
    let elapsed = started.elapsed();
    // The readers finish when every process holding the pipes has exited; a stuck one is not
    // waited for.
    let grace = if status.is_some() { SHELL_TIMEOUT } else { SHELL_KILL_GRACE };
    Ok(BoundedRun { status, stdout: text_of(&stdout, grace), stderr: text_of(&stderr, grace), elapsed })
}

type Collected = (Arc<Mutex<Vec<u8>>>, std::sync::mpsc::Receiver<()>);

/// Reads `pipe` to its end on a thread of its own.
fn collect(pipe: Option<impl Read + Send + 'static>) -> Collected {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    if let Some(mut pipe) = pipe {
        let sink = Arc::clone(&buffer);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = sink.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
            let _ = done_tx.send(());
        });
    }
    (buffer, done_rx)
}

/// What was read so far, after waiting up to `grace` for the end of the stream.
fn text_of((buffer, done): &Collected, grace: Duration) -> String {
    let _ = done.recv_timeout(grace);
    buffer.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
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
