//! Starting, signalling and watching server processes.
//!
//! Liveness is judged from `/proc/<pid>/stat` so that a zombie (exited, not yet reaped) counts as
//! dead; this works the same for our own children and for the daemonised processes `cairn dev
//! down` finds through `cluster.json`. Before signalling a recorded pid, callers check its
//! command line names the node's data directory, so a pid reused by an unrelated process is
//! left alone.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::layout::{command_args, ClusterSpec};
use super::state::NodeInfo;
use super::{binary_path, DevError};
use crate::limits::DEV_EXIT_POLL_INTERVAL;

/// Whether the child stays attached to the caller or is detached for `cairn dev up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// Same process group as the caller: a Ctrl-C on a test run reaches the servers too.
    Attached,
    /// A process group of its own: the servers outlive the `cairn` process and ignore the
    /// terminal's Ctrl-C.
    Detached,
}

/// Starts `node` (one of `nodes`) with its output appended to its log file.
pub(crate) fn spawn_node(
    spec: &ClusterSpec,
    bin_dir: &Path,
    node: &NodeInfo,
    nodes: &[NodeInfo],
    ownership: Ownership,
) -> Result<Child, DevError> {
    let binary = binary_path(bin_dir, node.kind)?;
    let node_ref = node.node_ref();
    std::fs::create_dir_all(&node.data_dir)
        .map_err(|e| DevError::io(format!("create {}", node.data_dir.display()), e))?;
    if let Some(logs) = node.log_path.parent() {
        std::fs::create_dir_all(logs).map_err(|e| DevError::io(format!("create {}", logs.display()), e))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log_path)
        .map_err(|e| DevError::io(format!("open {}", node.log_path.display()), e))?;

    let args = command_args(node, nodes, spec.extra_args(node.kind));
    // A marker makes restarts visible in the log; it never contains " ERROR ".
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    writeln!(log, "==== cairn dev: starting {node_ref}: {} {} ====", binary.display(), shown.join(" "))
        .map_err(|e| DevError::io(format!("write {}", node.log_path.display()), e))?;
    let stderr = log.try_clone().map_err(|e| DevError::io(format!("duplicate {}", node.log_path.display()), e))?;

    let mut command = Command::new(&binary);
    command
        .args(&args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    if ownership == Ownership::Detached {
        command.process_group(0);
    }
    let child = command.spawn().map_err(|source| DevError::Spawn { node: node_ref, source })?;
    tracing::debug!(node = %node_ref, pid = child.id(), "started");
    Ok(child)
}

/// Whether `pid` names a live (not zombie) process.
pub(crate) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None),
            None => true,
        },
        Err(_) if Path::new("/proc/self/stat").exists() => false,
        // No procfs: fall back to signal 0 (which cannot see zombies).
        Err(_) => kill(pid_of(pid), None).is_ok(),
    }
}

/// Whether `pid` is alive and, as far as `/proc` can tell, is the server of `node` (its command
/// line mentions the node's data directory).
pub(crate) fn is_node_process(pid: u32, node: &NodeInfo) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let data_dir = node.data_dir.as_os_str().as_encoded_bytes();
            cmdline.split(|&b| b == 0).any(|arg| arg == data_dir)
        }
        // Unreadable (another user's process, no procfs): trust the record.
        Err(_) => true,
    }
}

pub(crate) fn signal(node: &NodeInfo, pid: u32, signal: Signal) -> Result<(), DevError> {
    kill(pid_of(pid), signal).map_err(|source| DevError::Signal { node: node.node_ref(), pid, signal, source })
}

/// Polls until `gone()` holds or `timeout` passes; returns whether it held.
pub(crate) async fn wait_until(timeout: Duration, mut gone: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if gone() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(DEV_EXIT_POLL_INTERVAL).await;
    }
}

pub(crate) fn pid_of(pid: u32) -> Pid {
    // Linux pids fit in i32 (pid_max <= 2^22); anything else is not a process we started.
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_self_and_of_a_reaped_child() {
        assert!(is_alive(std::process::id()));
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        // A reaped pid is gone (reuse within microseconds is not a practical concern).
        assert!(!is_alive(pid));
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_alive(pid), "exited child (zombie) must count as dead");
        child.wait().expect("wait");
    }
}
