//! Crash faults on a real 3-process coordinator cluster: SIGKILL a node while clients stream
//! puts, and check that no acknowledged write is lost, that the survivors elect a leader and
//! keep serving, and that the killed node comes back with every key — by snapshot when the
//! leader has purged the log it missed, by log replay otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use cairn_tests::limits::{CLUSTER_READY_TIMEOUT, CONVERGE_TIMEOUT};
use cairn_tests::{
    connect, kvs, poll_until, AllowedError, ClusterOptions, NodeId, Signal, TestCluster, PEER_RPC_TIMEOUT,
    PEER_UNREACHABLE,
};
use etcd_client::{Client, GetOptions};
use tokio::task::JoinSet;

/// Concurrent writer tasks, each with its own client over every endpoint.
const WRITERS: usize = 4;
/// Pause after a failed put, so a writer does not spin on a dead endpoint.
const WRITER_ERROR_BACKOFF: Duration = Duration::from_millis(20);
/// Acknowledged puts to see before killing a node, and again after the fault, proving that
/// writes flow before and after it.
const ACKS_BEFORE_FAULT: u64 = 200;
const ACKS_AFTER_FAULT: u64 = 200;
/// Small snapshot interval: the leader snapshots and purges its log many times while a node
/// is down, so that node must catch up by snapshot.
const SNAPSHOT_COUNT: u64 = 100;
/// Puts written while the killed node is down, at least (several snapshots' worth).
const BULK_KEYS_MIN: usize = 1000;
/// Bound on the bulk writes when waiting for the leader to purge past the dead node's log.
const BULK_KEYS_MAX: usize = 5000;
/// Raft entries a leader may append apart from the client puts counted by the writers (an
/// election's blank entry, a membership entry); a safety margin on the dead node's log bound.
const EXTRA_ENTRIES_MARGIN: u64 = 8;

/// Distinct writer errors kept for the report, each with its count.
const WRITER_ERROR_KINDS_MAX: usize = 8;
/// Characters of an error message that identify its kind.
const WRITER_ERROR_KIND_CHARS: usize = 120;

/// What one writer task (or all of them) did.
#[derive(Debug, Default)]
struct WriterReport {
    acked: Vec<(String, String)>,
    failed: u64,
    /// Error message prefixes with how often each occurred.
    errors: BTreeMap<String, u64>,
}

impl WriterReport {
    fn record_error(&mut self, error: &etcd_client::Error) {
        self.failed += 1;
        self.count_error_kind(error.to_string().chars().take(WRITER_ERROR_KIND_CHARS).collect(), 1);
    }

    fn count_error_kind(&mut self, kind: String, count: u64) {
        if self.errors.len() < WRITER_ERROR_KINDS_MAX || self.errors.contains_key(&kind) {
            *self.errors.entry(kind).or_default() += count;
        }
    }

    fn merge(&mut self, other: WriterReport) {
        self.acked.extend(other.acked);
        self.failed += other.failed;
        for (kind, count) in other.errors {
            self.count_error_kind(kind, count);
        }
    }

    fn summary(&self) -> String {
        let kinds: Vec<String> = self.errors.iter().map(|(kind, n)| format!("  {n} × {kind}")).collect();
        format!("{} puts acknowledged, {} failed\n{}", self.acked.len(), self.failed, kinds.join("\n"))
    }
}

/// Writer tasks putting unique keys `PREFIX/<writer>/<seq>` in a loop until stopped, each
/// recording which puts were acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    /// Puts issued (acknowledged or not) and puts acknowledged, over all writers.
    started: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    tasks: JoinSet<anyhow::Result<WriterReport>>,
}

impl Writers {
    async fn start(endpoints: &[String], prefix: &str) -> anyhow::Result<Writers> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for writer in 0..WRITERS {
            let client = connect(endpoints).await?;
            let (stop, started, acked) = (stop.clone(), started.clone(), acked.clone());
            let prefix = prefix.to_owned();
            tasks.spawn(write_until_stopped(client, format!("{prefix}/{writer}"), stop, started, acked));
        }
        Ok(Writers { stop, started, acked, tasks })
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` puts beyond `from` have been acknowledged.
    async fn wait_for_acks(&self, from: u64, more: u64, what: &str) -> anyhow::Result<()> {
        poll_until(what, CONVERGE_TIMEOUT, || async {
            let acked = self.acked();
            if acked >= from + more {
                Ok(())
            } else {
                Err(format!("{} of {more} acknowledged", acked.saturating_sub(from)))
            }
        })
        .await
    }

    /// Stops the writers and merges their reports.
    async fn stop(mut self) -> anyhow::Result<WriterReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = WriterReport::default();
        while let Some(joined) = self.tasks.join_next().await {
            total.merge(joined.context("join a writer")??);
        }
        Ok(total)
    }
}

async fn write_until_stopped(
    mut client: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<WriterReport> {
    let mut report = WriterReport::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let key = format!("{prefix}/{seq:06}");
        let value = format!("value of {key}");
        started.fetch_add(1, Ordering::SeqCst);
        match client.put(key.as_str(), value.as_str(), None).await {
            Ok(_) => {
                report.acked.push((key, value));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                // Not acknowledged: the put may or may not have been applied; only acknowledged
                // puts are checked.
                report.record_error(&e);
                tokio::time::sleep(WRITER_ERROR_BACKOFF).await;
            }
        }
    }
    Ok(report)
}

/// Every key under `prefix` as read by `client` (linearizable unless `serializable`).
async fn read_all(client: &mut Client, prefix: &str, serializable: bool) -> anyhow::Result<BTreeMap<String, String>> {
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let response = client.get(prefix, Some(options)).await.with_context(|| format!("read every key under {prefix}"))?;
    Ok(kvs(response.kvs()).into_iter().collect())
}

/// Requires every acknowledged put to be readable with its value.
fn check_acked(acked: &[(String, String)], stored: &BTreeMap<String, String>, reader: &str) -> anyhow::Result<()> {
    let lost: Vec<&(String, String)> = acked.iter().filter(|(k, v)| stored.get(k) != Some(v)).take(10).collect();
    ensure!(lost.is_empty(), "{reader} lacks acknowledged puts (first 10 shown): {lost:?}");
    Ok(())
}

/// openraft logs every failed RPC (append, vote, leadership check) at ERROR; while a node is
/// dead, the others' RPCs to it fail ("Append to node 2: ... connection reset").
fn rpc_to_killed_node(node: NodeId) -> AllowedError {
    AllowedError::new(format!(" to node {node}: "), "RPCs to the SIGKILLed node fail while it is down")
}

fn endpoints_except(cluster: &TestCluster, down: NodeId) -> anyhow::Result<Vec<String>> {
    cluster.coordinator_ids().into_iter().filter(|&n| n != down).map(|n| cluster.endpoint(n)).collect()
}

/// Restarts `node` and waits until it has applied everything the leader has, then requires
/// its local (serializable) view of every key to equal the leader's linearizable one.
async fn restart_and_compare(
    cluster: &mut TestCluster,
    node: NodeId,
    acked: &[(String, String)],
) -> anyhow::Result<()> {
    cluster.restart(node).await?;
    let leader = cluster.wait_for_leader(CONVERGE_TIMEOUT).await?;
    let target = cluster.raft_status(leader).await?.last_applied;
    poll_until(&format!("restarted node {node} to apply up to {target}"), CONVERGE_TIMEOUT, || async {
        match cluster.raft_status(node).await {
            Ok(status) if status.last_applied >= target => Ok(()),
            Ok(status) => Err(format!("applied {} of {target} ({})", status.last_applied, status.state)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await?;
    cluster.wait_node_ready(node, CLUSTER_READY_TIMEOUT).await?;

    let expected = read_all(&mut cluster.client_for(leader).await?, "", false).await?;
    check_acked(acked, &expected, &format!("leader {leader}"))?;
    let local = read_all(&mut cluster.client_for(node).await?, "", true).await?;
    check_acked(acked, &local, &format!("restarted node {node}"))?;
    if local != expected {
        let missing = expected.keys().filter(|k| !local.contains_key(*k)).take(10).collect::<Vec<_>>();
        let differing =
            expected.iter().filter(|(k, v)| local.get(*k).is_some_and(|l| l != *v)).take(10).collect::<Vec<_>>();
        anyhow::bail!(
            "restarted node {node} has {} keys, the leader {}: missing {missing:?}, differing {differing:?}",
            local.len(),
            expected.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_under_load_then_catch_up_by_snapshot() -> anyhow::Result<()> {
    let options = ClusterOptions { snapshot_count: Some(SNAPSHOT_COUNT), ..ClusterOptions::fast_failover() };
    let mut cluster = TestCluster::start_with("fault-leader", options).await?;
    let old_leader = cluster.wait_for_leader(CONVERGE_TIMEOUT).await?;

    let writers = Writers::start(&cluster.endpoints(), "acked").await?;
    writers.wait_for_acks(0, ACKS_BEFORE_FAULT, "puts before the fault").await?;

    // Bound the killed leader's log: it appends at most one entry per put issued after its
    // last_log_index is read, plus one per put in flight then (one per writer).
    let started_before = writers.started();
    let index_before = cluster.raft_status(old_leader).await?.last_log_index;
    cluster.kill(old_leader, Signal::SIGKILL)?;
    let dead_log_bound = index_before + (writers.started() - started_before) + WRITERS as u64 + EXTRA_ENTRIES_MARGIN;

    let new_leader = cluster.wait_for_new_leader(old_leader).await?;
    writers.wait_for_acks(writers.acked(), ACKS_AFTER_FAULT, "puts under the new leader").await?;
    let report = writers.stop().await?;
    eprintln!("leader {old_leader} killed, node {new_leader} elected; writers: {}", report.summary());

    let mut survivors = connect(&endpoints_except(&cluster, old_leader)?).await?;
    let stored = read_all(&mut survivors, "acked/", false).await?;
    check_acked(&report.acked, &stored, "the surviving nodes")?;

    // Write until the leader has purged its log past anything the dead node has.
    let mut bulk = 0;
    loop {
        for _ in 0..100 {
            survivors.put(format!("bulk/{bulk:05}"), format!("bulk value {bulk}"), None).await?;
            bulk += 1;
        }
        let leader = cluster.wait_for_new_leader(old_leader).await?;
        let status = cluster.raft_status(leader).await?;
        if bulk >= BULK_KEYS_MIN && status.purged_index > dead_log_bound {
            eprintln!(
                "{bulk} bulk puts; leader {leader} purged its log up to {} (the dead node has at most {dead_log_bound})",
                status.purged_index
            );
            break;
        }
        ensure!(
            bulk < BULK_KEYS_MAX,
            "after {bulk} puts the leader's log is purged only up to {}, not past the dead node's {dead_log_bound}: {status:?}",
            status.purged_index
        );
    }

    restart_and_compare(&mut cluster, old_leader, &report.acked).await?;
    let status = cluster.raft_status(old_leader).await?;
    ensure!(status.snapshot_index > dead_log_bound, "the restarted node has no recent snapshot: {status:?}");
    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT, rpc_to_killed_node(old_leader)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_a_follower_under_load_then_catch_up_from_the_log() -> anyhow::Result<()> {
    // The default snapshot interval is far above what this test writes: nothing is purged, so
    // the follower catches up by log replication.
    let mut cluster = TestCluster::start_with("fault-follower", ClusterOptions::fast_failover()).await?;
    let leader = cluster.wait_for_leader(CONVERGE_TIMEOUT).await?;
    let follower = cluster.coordinator_ids().into_iter().find(|&n| n != leader).context("a follower")?;

    let writers = Writers::start(&cluster.endpoints(), "acked").await?;
    writers.wait_for_acks(0, ACKS_BEFORE_FAULT, "puts before the fault").await?;
    cluster.kill(follower, Signal::SIGKILL)?;
    writers.wait_for_acks(writers.acked(), ACKS_AFTER_FAULT, "puts with the follower down").await?;
    let report = writers.stop().await?;
    eprintln!("follower {follower} killed; writers: {}", report.summary());

    let mut survivors = connect(&endpoints_except(&cluster, follower)?).await?;
    check_acked(&report.acked, &read_all(&mut survivors, "acked/", false).await?, "the surviving nodes")?;
    for i in 0..300 {
        survivors.put(format!("bulk/{i:05}"), format!("bulk value {i}"), None).await?;
    }
    let status = cluster.raft_status(cluster.wait_for_leader(CONVERGE_TIMEOUT).await?).await?;
    assert_eq!(status.purged_index, 0, "nothing purged, so the follower must replay the log: {status:?}");

    restart_and_compare(&mut cluster, follower, &report.acked).await?;
    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT, rpc_to_killed_node(follower)])
}
