//! Running Debian's `etcdctl` (v3.4, API v3) against a test cluster.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::limits::{
    ETCDCTL_CHILD_LINES_MAX, ETCDCTL_COMMAND_TIMEOUT, ETCDCTL_DIAL_TIMEOUT, ETCDCTL_LINE_TIMEOUT, ETCDCTL_RUN_TIMEOUT,
    ETCDCTL_STDERR_BYTES_MAX,
};

const ETCDCTL: &str = "etcdctl";

/// What a finished etcdctl printed.
#[derive(Debug, Clone)]
pub struct EtcdctlOutput {
    /// The command line after the global flags, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl EtcdctlOutput {
    /// Stdout split into lines (etcdctl ends every line with `\n`).
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl fmt::Display for EtcdctlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`etcdctl {}` {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs etcdctl once: `args` after the global flags, `stdin` fed to it (then closed).
pub async fn etcdctl(endpoints: &[String], args: &[&str], stdin: Option<&str>) -> anyhow::Result<EtcdctlOutput> {
    Etcdctl::new(endpoints).run(args, stdin).await
}

/// etcdctl bound to a cluster's endpoints.
#[derive(Debug, Clone)]
pub struct Etcdctl {
    endpoints: String,
}

impl Etcdctl {
    pub fn new(endpoints: &[String]) -> Etcdctl {
        Etcdctl { endpoints: endpoints.join(",") }
    }

    /// `etcdctl --endpoints=... --dial-timeout=... --command-timeout=... ARGS` with
    /// `ETCDCTL_API=3` and no other `ETCDCTL_*` variables (v3.4 refuses an environment variable
    /// that shadows a flag). The process is killed if its handle is dropped.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(ETCDCTL);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCDCTL_") {
                command.env_remove(name);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg(format!("--dial-timeout={ETCDCTL_DIAL_TIMEOUT}"))
            .arg(format!("--command-timeout={ETCDCTL_COMMAND_TIMEOUT}"))
            .args(args)
            .kill_on_drop(true);
        command
    }

    /// Runs `etcdctl ARGS` to completion (within [`ETCDCTL_RUN_TIMEOUT`]), whatever its exit code.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<EtcdctlOutput> {
        let shown = args.join(" ");
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn `etcdctl {shown}` (is etcdctl installed?)"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.with_context(|| format!("write stdin of `etcdctl {shown}`"))?;
            // Dropping the pipe closes it: etcdctl reads until end of input.
        }
        let output = timeout(ETCDCTL_RUN_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("`etcdctl {shown}` still running after {ETCDCTL_RUN_TIMEOUT:?} (killed)"))?
            .with_context(|| format!("wait for `etcdctl {shown}`"))?;
        Ok(EtcdctlOutput {
            command: shown,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `etcdctl ARGS`, requires it to succeed, and returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ok_with_stdin(args, None).await
    }

    /// Like [`Etcdctl::ok`], feeding `stdin` to the command.
    pub async fn ok_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let output = self.run(args, stdin).await?;
        if !output.status.success() {
            bail!("etcdctl failed: {output}");
        }
        Ok(output.stdout)
    }

    /// Runs `etcdctl -w json ARGS`, requires it to succeed, and parses its stdout.
    pub async fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = vec!["-w", "json"];
        full.extend_from_slice(args);
        let stdout = self.ok(&full).await?;
        serde_json::from_str(&stdout)
            .with_context(|| format!("parse the JSON of `etcdctl {}`: {stdout}", full.join(" ")))
    }

    /// Runs `etcdctl ARGS`, requires it to fail, and returns what it printed.
    pub async fn fails(&self, args: &[&str]) -> anyhow::Result<EtcdctlOutput> {
        let output = self.run(args, None).await?;
        if output.status.success() {
            bail!("etcdctl succeeded but should have failed: {output}");
        }
        Ok(output)
    }

    /// Starts `etcdctl ARGS` as a long-running child (watch, lease keep-alive, lock, elect)
    /// whose stdout the test reads line by line.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<EtcdctlChild> {
        let shown = args.join(" ");
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn `etcdctl {shown}` (is etcdctl installed?)"))?;
        let stdout = child.stdout.take().context("etcdctl stdout is piped")?;
        let stderr = child.stderr.take().context("etcdctl stderr is piped")?;

        let (line_tx, lines) = mpsc::channel(ETCDCTL_CHILD_LINES_MAX);
        let stdout_task = tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if line_tx.send(line).await.is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let stderr_sink = stderr_text.clone();
        let stderr_task = tokio::spawn(async move {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut text = stderr_sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if text.len() < ETCDCTL_STDERR_BYTES_MAX {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(EtcdctlChild { command: shown, child, lines, stderr: stderr_text, tasks: [stdout_task, stderr_task] })
    }
}

/// A running etcdctl whose stdout lines are read with deadlines. Killed when dropped.
#[derive(Debug)]
pub struct EtcdctlChild {
    command: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    tasks: [JoinHandle<()>; 2],
}

impl EtcdctlChild {
    /// What the child printed on stderr so far (at most [`ETCDCTL_STDERR_BYTES_MAX`]).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The next stdout line, waiting at most [`ETCDCTL_LINE_TIMEOUT`]. Fails if stdout ends.
    pub async fn next_line(&mut self) -> anyhow::Result<String> {
        match timeout(ETCDCTL_LINE_TIMEOUT, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "`etcdctl {}` closed its stdout (exit status {status:?}); stderr:\n{}",
                    self.command,
                    self.stderr()
                )
            }
            Err(_) => bail!(
                "no line from `etcdctl {}` within {ETCDCTL_LINE_TIMEOUT:?}; stderr:\n{}",
                self.command,
                self.stderr()
            ),
        }
    }

    /// The next `n` stdout lines.
    pub async fn next_lines(&mut self, n: usize) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            match self.next_line().await {
                Ok(line) => lines.push(line),
                Err(e) => return Err(e.context(format!("after the lines {lines:?}"))),
            }
        }
        Ok(lines)
    }

    /// Reads as many lines as `expected` holds and requires them to be exactly those.
    pub async fn expect_lines(&mut self, expected: &[&str]) -> anyhow::Result<()> {
        let lines = self.next_lines(expected.len()).await?;
        if lines != expected {
            bail!("`etcdctl {}` printed {lines:?}, expected {expected:?}", self.command);
        }
        Ok(())
    }

    /// Sends `signal` to the child (SIGINT makes `lock` and `elect` release and exit).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.child.id().with_context(|| format!("`etcdctl {}` has already exited", self.command))?;
        let pid = Pid::from_raw(i32::try_from(pid).context("pid fits in i32")?);
        kill(pid, signal).with_context(|| format!("send {signal} to `etcdctl {}`", self.command))
    }

    /// Waits (at most [`ETCDCTL_LINE_TIMEOUT`]) for the child to exit.
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        match timeout(ETCDCTL_LINE_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.with_context(|| format!("wait for `etcdctl {}`", self.command)),
            Err(_) => bail!(
                "`etcdctl {}` still running after {ETCDCTL_LINE_TIMEOUT:?}; stderr:\n{}",
                self.command,
                self.stderr()
            ),
        }
    }

    /// Waits for the child to exit and requires success.
    pub async fn wait_success(&mut self) -> anyhow::Result<()> {
        let status = self.wait().await?;
        if !status.success() {
            bail!("`etcdctl {}` exited with {status}; stderr:\n{}", self.command, self.stderr());
        }
        Ok(())
    }

    /// SIGKILLs the child and reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.with_context(|| format!("kill `etcdctl {}`", self.command))
    }
}

impl Drop for EtcdctlChild {
    fn drop(&mut self) {
        // `kill_on_drop` takes care of the process; the readers end with its pipes.
        for task in &self.tasks {
            task.abort();
        }
    }
}
