//! Errors of the dev-cluster layer.

use std::path::PathBuf;
use std::time::Duration;

use super::NodeRef;
use crate::http::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "server binary {path} not found; build it (`cargo build --workspace --bins`) \
         or point {env} at the directory holding it",
        env = super::BIN_DIR_ENV
    )]
    BinaryNotFound { path: PathBuf },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("start {node}: {source}")]
    Spawn {
        node: NodeRef,
        #[source]
        source: std::io::Error,
    },

    #[error("signal {node} (pid {pid}) with {signal}: {source}")]
    Signal {
        node: NodeRef,
        pid: u32,
        signal: nix::sys::signal::Signal,
        #[source]
        source: nix::Error,
    },

    #[error("cluster not ready after {timeout:?}:\n{report}")]
    NotReady { timeout: Duration, report: String },

    #[error("{node} did not exit within {grace:?} of SIGTERM and was SIGKILLed")]
    StopTimeout { node: NodeRef, grace: Duration },

    #[error("{node} is still running (pid {pid}); stop it first")]
    NodeRunning { node: NodeRef, pid: u32 },

    #[error("{0} is not running")]
    NotRunning(NodeRef),

    #[error("no node {0} in this cluster")]
    UnknownNode(NodeRef),

    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),

    #[error("read {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("a cluster is already running in {dir} (nodes {alive:?}); stop it with `cairn dev down --dir {dir}`", dir = .dir.display())]
    AlreadyRunning { dir: PathBuf, alive: Vec<NodeRef> },

    #[error(
        "the cluster in {dir} is partially running (alive {alive:?}, dead {dead:?}); \
         run `cairn dev down --dir {dir}` and start it again",
        dir = .dir.display()
    )]
    PartiallyRunning { dir: PathBuf, alive: Vec<NodeRef>, dead: Vec<NodeRef> },

    #[error(
        "{dir} holds a cluster of {recorded} coordinators but {requested} were requested; \
         use another directory or `cairn dev down --purge` first",
        dir = .dir.display()
    )]
    SizeMismatch { dir: PathBuf, recorded: usize, requested: usize },

    #[error("no leader elected within {timeout:?}")]
    NoLeader { timeout: Duration },

    #[error("parse /status of node at {addr}: {reason}")]
    BadStatus { addr: String, reason: String },

    #[error("start mount {name}: {source}")]
    MountSpawn {
        name: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "mount {name} at {mountpoint} failed: {reason}\n--- last lines of {log} ---\n{tail}\n\
         (`cairn dev up --no-mount` starts the servers without mounting)",
        mountpoint = .mountpoint.display(),
        log = .log.display()
    )]
    MountFailed { name: String, mountpoint: PathBuf, reason: String, log: PathBuf, tail: String },

    #[error("{mountpoint} is still mounted after every unmount attempt ({tried})", mountpoint = .mountpoint.display())]
    UnmountFailed { mountpoint: PathBuf, tried: String },

    #[error("signal mount {name} (pid {pid}) with {signal}: {source}")]
    MountSignal {
        name: String,
        pid: u32,
        signal: nix::sys::signal::Signal,
        #[source]
        source: nix::Error,
    },

    #[error("no mount named {0} in this cluster (or it is not running)")]
    UnknownMount(String),

    #[error("a mount named {0} already exists in this cluster")]
    MountExists(String),

    #[error(transparent)]
    Http(#[from] HttpError),
}

impl DevError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DevError::Io { context: context.into(), source }
    }
}
