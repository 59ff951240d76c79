//! Fixtures for Cairn's multi-process tests (`tests/tests/*.rs`).
//!
//! # What they promise
//! * [`TestCluster`] starts real server processes through the same launcher as `cairn dev up`
//!   (`cairn_fs_client::dev`), in a fresh temporary directory, on `127.0.0.1` ports the launcher
//!   picks, with Raft timings suited to a loaded 2-core machine. Dropping it kills the servers.
//! * A test ends with [`TestCluster::finish`], which fails on ERROR lines in the server logs that
//!   are not explicitly allowed (each allowance carries its reason). A cluster whose test did not
//!   reach `finish` — it panicked or returned an error — keeps its directory (logs and metadata;
//!   chunk data only with `CAIRN_TEST_KEEP_DATA=1`, see [`keep_for_diagnosis`]) and prints where
//!   it is and how much disk is left.
//! * [`Etcdctl`] runs Debian's `etcdctl` (v3.4) against a cluster, one-shot or as a long-running
//!   child whose stdout is read line by line ([`EtcdctlChild`]).
//! * Every wait has a deadline ([`limits`]) and fails with a message saying what it waited for
//!   and what it saw last ([`poll_until`]). Deadlines are generous: they bound a hang, they do
//!   not measure speed.
//!
//! # The coordinator tests
//! * `tests/etcdctl.rs`: every etcdctl command family, asserting on its exact output.
//! * `tests/etcd_client.rs`: the Rust etcd-client, including requests to each node alone.
//! * `tests/bad_input.rs`: requests etcd rejects get etcd's error; the cluster keeps serving.
//! * `tests/fault.rs`: SIGKILL a leader or a follower under load; no acknowledged write is lost
//!   and the killed node catches up (by snapshot, or from the log).
//!
//! # The metaserver tests (`tests/tests/metaserver_*.rs`)
//! * [`meta::MetaCluster`] starts three coordinators and three metaservers (no chunkservers)
//!   and hands out gRPC clients of each metaserver; the chunk-map test builds its own cluster
//!   with chunkservers.
//!
//! # The FUSE tests (`tests/tests/fuse_*.rs`)
//! * [`FuseCluster`] starts a whole cluster with the launcher and mounts it (`DIR/mnt`, more
//!   mounts with `add_mount`); [`sh`] runs real tools (cp, tar, git, sqlite3, flock, python3)
//!   against it with a deadline. [`posix`] runs pjdfstest and fsx (pinned crates.io versions).
//!
//! # What they assume
//! The server binaries are built (`cargo build --workspace --bins`) and found by the launcher
//! (`CAIRN_BIN_DIR`, or next to the test executable), and `etcdctl` is on `PATH`.

mod client;
mod cluster;
mod etcdctl;
mod fuse;
mod keep;
pub mod limits;
pub mod meta;
mod metrics;
mod poll;
pub mod posix;

pub use client::{connect, expect_grpc_error, kvs, next_watch_response};
pub use cluster::{AllowedError, ClusterOptions, RaftStatus, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE};
pub use etcdctl::{etcdctl, Etcdctl, EtcdctlChild, EtcdctlOutput};
pub use fuse::{
    run_bounded, run_checks, sh, sh_with_timeout, BoundedRun, Check, FuseCluster, FuseOptions, ShellOutput,
    OPENRAFT_ERRORS,
};
pub use keep::{keep_for_diagnosis, KEEP_DATA_ENV};
pub use metrics::metaserver_metric_sum;
pub use poll::poll_until;

pub use cairn_fs_client::dev::{NodeId, Signal};

use anyhow::Context as _;
use base64::Engine as _;

/// Decodes a base64 string from etcdctl's JSON output (keys and values) into text.
pub fn b64_decode(text: &str) -> anyhow::Result<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).with_context(|| format!("decode {text:?}"))?;
    String::from_utf8(bytes).with_context(|| format!("{text:?} is not UTF-8 once decoded"))
}

/// The `(key, value)` pairs of the `kvs` array of an etcdctl JSON answer (`get -w json`),
/// decoded. A missing `kvs` (no keys) is an empty list.
pub fn json_kvs(json: &serde_json::Value) -> anyhow::Result<Vec<(String, String)>> {
    let Some(kvs) = json.get("kvs") else { return Ok(Vec::new()) };
    let kvs = kvs.as_array().with_context(|| format!("kvs is not an array in {json}"))?;
    kvs.iter()
        .map(|kv| {
            let key = kv["key"].as_str().with_context(|| format!("no key in {kv}"))?;
            // etcd omits empty fields, so a key with an empty value (or `--keys-only`) has none.
            let value = kv.get("value").and_then(|v| v.as_str()).unwrap_or("");
            Ok((b64_decode(key)?, b64_decode(value)?))
        })
        .collect()
}

/// `header.revision` of an etcdctl JSON answer.
pub fn json_revision(json: &serde_json::Value) -> anyhow::Result<i64> {
    json["header"]["revision"].as_i64().with_context(|| format!("no header.revision in {json}"))
}
