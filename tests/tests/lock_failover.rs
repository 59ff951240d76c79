//! Coordinator failures during lock handoff: contenders pass one lock around as fast as they
//! can (every grant is a handoff) while coordinator nodes are SIGKILLed — the Raft leader first,
//! then, after it is back, the new leader. The fenced counter and the txn-guarded coordinator
//! counter check that there were never two holders: a second holder would show up as a
//! refused stale token, an overlap between read and write, or a lost increment.

mod lock_support;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::ensure;
use cairn_tests::limits::CLUSTER_READY_TIMEOUT;
use cairn_tests::{
    poll_until, AllowedError, ClusterOptions, NodeId, Signal, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE,
};
use lock_support::resource::Resource;
use lock_support::{read_kv_counter, wait_all_done, Contender, LockArgs, Outcome, CONTENDERS_EXIT_TIMEOUT};

const CONTENDERS: usize = 4;
const ITERATIONS: u64 = 40;
/// Long enough that no lease expires while the cluster elects a new leader (a new leader also
/// restarts every lease's countdown).
const TTL_SECS: i64 = 5;
const HOLD_MS: u64 = 5;
/// Increments to see before each fault and after it (the lock keeps moving through failovers).
const WRITES_PER_PHASE: usize = 15;
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(90);

const LOCK_NAME: &str = "failover-test";
const KV_COUNTER: &str = "failover-test-counter";

/// Members publish their client addresses at start-up through membership changes; openraft
/// logs one that meets another in progress at ERROR, and the member retries it.
fn concurrent_membership_change() -> AllowedError {
    AllowedError::new(
        "undergoing a configuration change",
        "start-up member publication races another membership change and is retried",
    )
}

fn rpc_to_killed_node(node: NodeId) -> AllowedError {
    AllowedError::new(
        Cow::Owned(format!(" to node {node} ")),
        "RPCs to the SIGKILLed node fail or time out while it dies and while it is down",
    )
}

fn append_to_restarted_node(node: NodeId) -> AllowedError {
    AllowedError::new(
        Cow::Owned(format!("->{node}")),
        "replication to a killed and restarted node times out while it is down and while it starts",
    )
}

async fn wait_for_writes(resource: &Resource, at_least: usize, what: &str) -> anyhow::Result<usize> {
    poll_until(what, PROGRESS_TIMEOUT, || {
        let resource = resource.clone();
        async move {
            let n = resource.read().map_err(|e| format!("{e:#}"))?.writes.len();
            if n >= at_least {
                Ok(n)
            } else {
                Err(format!("{n} increments so far"))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_holders_when_coordinators_die_during_handoff() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with("lock-failover", ClusterOptions::fast_failover()).await?;
    let dir = tempfile::Builder::new().prefix("cairn-lock-failover-").tempdir()?;
    let endpoints = cluster.endpoints();
    let resource = Resource::new(dir.path(), true);
    let args = LockArgs {
        endpoints: &endpoints,
        name: LOCK_NAME,
        dir: dir.path(),
        iterations: ITERATIONS,
        ttl_secs: TTL_SECS,
        fenced: true,
        kv_counter: Some(KV_COUNTER),
        hold_ms: HOLD_MS,
        pause_at: None,
    };
    let mut contenders = Vec::new();
    for i in 0..CONTENDERS {
        let id = format!("c{i}");
        contenders.push(Contender::spawn(&id, dir.path(), &args.to_args(&id))?);
    }

    let mut killed = Vec::new();
    let mut seen = wait_for_writes(&resource, WRITES_PER_PHASE, "increments before the first fault").await?;
    for round in 0..2 {
        let leader = cluster.wait_for_leader(CLUSTER_READY_TIMEOUT).await?;
        eprintln!("round {round}: SIGKILL coordinator {leader} (the Raft leader) after {seen} increments");
        cluster.kill(leader, Signal::SIGKILL)?;
        killed.push(leader);
        cluster.wait_for_new_leader(leader).await?;
        seen = wait_for_writes(&resource, seen + WRITES_PER_PHASE, "increments after the kill").await?;
        cluster.restart(leader).await?;
        cluster.wait_ready(CLUSTER_READY_TIMEOUT).await?;
    }

    wait_all_done(&mut contenders, CONTENDERS_EXIT_TIMEOUT).await?;
    let mut client = cluster.client().await?;
    let kv_counter = read_kv_counter(&mut client, KV_COUNTER).await?;
    let outcome = Outcome::gather(&contenders, resource.read()?, kv_counter);
    eprintln!("{}", outcome.summary());

    ensure!(outcome.record.refusals.is_empty(), "a holder used a stale token: {}", outcome.summary());
    ensure!(outcome.record.overlaps.is_empty(), "two holders at once: {}", outcome.summary());
    outcome.check_counter_exact()?;
    ensure!(
        outcome.record.writes.len() == CONTENDERS * ITERATIONS as usize,
        "every round incremented once: {}",
        outcome.summary()
    );
    outcome.check_tokens()?;
    outcome.check_kv_counter()?;
    ensure!(outcome.kv_increments_reported == CONTENDERS * ITERATIONS as usize, "{}", outcome.summary());

    let mut allowed = vec![PEER_UNREACHABLE, PEER_RPC_TIMEOUT, concurrent_membership_change()];
    allowed.extend(killed.iter().copied().map(rpc_to_killed_node));
    allowed.extend(killed.iter().copied().map(append_to_restarted_node));
    cluster.finish(&allowed)
}
