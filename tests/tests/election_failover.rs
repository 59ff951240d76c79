//! Election failover with real processes: three campaigner processes queue for one election;
//! the leader process is SIGKILLed and a standby must become leader within the lease TTL plus
//! one election; then the next leader process is SIGKILLed together with the coordinators' Raft
//! leader. `Observe` streams on every coordinator must see the leaders change in order.

mod lock_support;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use cairn_tests::limits::{CLUSTER_READY_TIMEOUT, CONVERGE_TIMEOUT};
use cairn_tests::{
    connect, poll_until, AllowedError, ClusterOptions, NodeId, Signal, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE,
};
use etcd_client::GetOptions;
use lock_support::Contender;

const ELECTION: &str = "election-failover-test";
const TTL_SECS: u64 = 2;
/// The longest Raft election timeout of `ClusterOptions::fast_failover` (500 ms .. 1 s).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(1);
/// Room for the leader's lease-expiry check (every 250 ms), committing the expiry, the
/// standby's grant-time check and its answer, on a loaded 2-core machine.
const HANDOFF_SLACK: Duration = Duration::from_secs(2);
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every observer should see, in this order (it may miss intermediate values).
const SEQUENCE: [&str; 6] = ["c1", "c1-proclaimed", "c2", "c2-proclaimed", "c3", "c3-proclaimed"];

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// The (header revision, value) pairs one Observe stream delivered, and how it ended.
#[derive(Debug, Default)]
struct Observed {
    updates: Vec<(i64, String)>,
    ended: Option<String>,
}

fn observe(endpoint: String) -> Arc<Mutex<Observed>> {
    let observed = Arc::new(Mutex::new(Observed::default()));
    let sink = observed.clone();
    tokio::spawn(async move {
        let record_end = |why: String| sink.lock().unwrap_or_else(|p| p.into_inner()).ended = Some(why);
        let mut client = match connect(std::slice::from_ref(&endpoint)).await {
            Ok(c) => c.election_client(),
            Err(e) => return record_end(format!("{e:#}")),
        };
        let mut stream = match client.observe(ELECTION).await {
            Ok(s) => s,
            Err(e) => return record_end(e.to_string()),
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    let revision = resp.header().map(|h| h.revision()).unwrap_or(-1);
                    let value =
                        resp.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).unwrap_or_default();
                    sink.lock().unwrap_or_else(|p| p.into_inner()).updates.push((revision, value));
                }
                Ok(None) => return record_end("stream closed".into()),
                Err(e) => return record_end(e.to_string()),
            }
        }
    });
    observed
}

fn values(observed: &Arc<Mutex<Observed>>) -> Vec<String> {
    observed.lock().unwrap_or_else(|p| p.into_inner()).updates.iter().map(|(_, v)| v.clone()).collect()
}

/// Checks one stream: values in `SEQUENCE` order without repeats, revisions never decreasing.
fn check_order(node: NodeId, observed: &Observed) -> anyhow::Result<()> {
    let mut position = 0;
    for (_, value) in &observed.updates {
        let Some(found) = SEQUENCE.iter().position(|s| s == value) else {
            bail!("observer on node {node} saw unexpected value {value:?}: {observed:?}");
        };
        ensure!(found >= position, "observer on node {node} saw leaders out of order: {observed:?}");
        position = found + 1;
    }
    let revisions: Vec<i64> = observed.updates.iter().map(|(r, _)| *r).collect();
    ensure!(revisions.windows(2).all(|w| w[0] <= w[1]), "observer on node {node}: revisions went back: {observed:?}");
    Ok(())
}

fn campaigner(id: &str, endpoints: &[String], dir: &std::path::Path) -> anyhow::Result<Contender> {
    let args: Vec<String> = [
        "campaign",
        "--endpoints",
        &endpoints.join(","),
        "--name",
        ELECTION,
        "--id",
        id,
        "--ttl",
        &TTL_SECS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Contender::spawn(id, dir, &args)
}

/// Waits until `n` campaigners have queued keys.
async fn wait_queued(cluster: &TestCluster, n: usize) -> anyhow::Result<()> {
    let mut client = cluster.client().await?;
    poll_until(&format!("{n} queued campaigners"), CONVERGE_TIMEOUT, || {
        let mut client = client.clone();
        async move {
            let got = client
                .get(format!("{ELECTION}/"), Some(GetOptions::new().with_prefix().with_count_only()))
                .await
                .map_err(|e| e.to_string())?;
            if got.count() as usize >= n {
                Ok(())
            } else {
                Err(format!("{} queued", got.count()))
            }
        }
    })
    .await?;
    client.get("probe", None).await.context("probe")?;
    Ok(())
}

/// SIGKILLs `old` and returns how long until `next` reported leadership.
async fn hand_over(
    old: &mut Contender,
    next: &mut Contender,
    also: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let killed_at_ms = unix_ms();
    old.kill()?;
    also()?;
    let event = next.wait_for_event("leader", CAMPAIGN_TIMEOUT).await?;
    let at_ms = event["at_ms"].as_u64().context("leader event without at_ms")?;
    Ok(Duration::from_millis(u64::try_from(u128::from(at_ms).saturating_sub(killed_at_ms)).unwrap_or(u64::MAX)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_process_dies() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with("election-failover", ClusterOptions::fast_failover()).await?;
    let dir = tempfile::Builder::new().prefix("cairn-election-failover-").tempdir()?;
    let endpoints = cluster.endpoints();
    let nodes = cluster.coordinator_ids();
    let observers: Vec<(NodeId, Arc<Mutex<Observed>>)> =
        nodes.iter().map(|&n| Ok((n, observe(cluster.endpoint(n)?)))).collect::<anyhow::Result<_>>()?;

    let mut c1 = campaigner("c1", &endpoints, dir.path())?;
    c1.wait_for_event("proclaimed", CAMPAIGN_TIMEOUT).await?;
    let mut c2 = campaigner("c2", &endpoints, dir.path())?;
    wait_queued(&cluster, 2).await?;
    let mut c3 = campaigner("c3", &endpoints, dir.path())?;
    wait_queued(&cluster, 3).await?;
    ensure!(c2.events_named("leader").is_empty() && c3.events_named("leader").is_empty(), "a standby led early");

    // The leader process dies: its lease expires and the next in line leads.
    let bound = Duration::from_secs(TTL_SECS) + ELECTION_TIMEOUT_MAX + HANDOFF_SLACK;
    let took = hand_over(&mut c1, &mut c2, || Ok(())).await?;
    eprintln!("c1 killed: c2 led after {took:?} (bound {bound:?})");
    ensure!(took <= bound, "c2 became leader {took:?} after c1 died; bound {bound:?}");
    c2.wait_for_event("proclaimed", CAMPAIGN_TIMEOUT).await?;
    ensure!(c3.events_named("leader").is_empty(), "c3 led while c2 did");

    // The next leader process dies together with the coordinators' Raft leader: the new Raft
    // leader restarts every lease's countdown, so the handoff takes one election longer.
    let raft_leader = cluster.wait_for_leader(CLUSTER_READY_TIMEOUT).await?;
    let took = hand_over(&mut c2, &mut c3, || Ok(cluster.kill(raft_leader, Signal::SIGKILL)?)).await?;
    let bound = bound + ELECTION_TIMEOUT_MAX;
    eprintln!("c2 and coordinator {raft_leader} killed: c3 led after {took:?} (bound {bound:?})");
    ensure!(took <= bound, "c3 became leader {took:?} after c2 and the Raft leader died; bound {bound:?}");
    c3.wait_for_event("proclaimed", CAMPAIGN_TIMEOUT).await?;

    let survivor = *nodes.iter().find(|&&n| n != raft_leader).context("a surviving node")?;
    let mut election = cluster.client_for(survivor).await?.election_client();
    let leader = election.leader(ELECTION).await.context("Leader")?;
    let value = leader.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    ensure!(value.as_deref() == Some("c3-proclaimed"), "Leader says {value:?}");

    for (node, observed) in &observers {
        if *node == raft_leader {
            continue;
        }
        poll_until(&format!("the observer on node {node} to see c3-proclaimed"), CONVERGE_TIMEOUT, || {
            let seen = values(observed);
            async move {
                if seen.last().map(String::as_str) == Some("c3-proclaimed") {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            }
        })
        .await?;
    }
    for (node, observed) in &observers {
        let observed = observed.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!("observer on node {node}: {observed:?}");
        check_order(*node, &observed)?;
        if *node != raft_leader {
            // A stream that stayed up saw every leader (it may skip a leader's first value).
            for leader in ["c1", "c2", "c3"] {
                ensure!(
                    observed.updates.iter().any(|(_, v)| v.starts_with(leader)),
                    "observer on node {node} never saw {leader}: {observed:?}"
                );
            }
        }
    }

    c3.kill()?;
    cluster.finish(&[
        PEER_UNREACHABLE,
        PEER_RPC_TIMEOUT,
        AllowedError::new(
            "undergoing a configuration change",
            "start-up member publication races another membership change and is retried",
        ),
        AllowedError::new(
            Cow::Owned(format!(" to node {raft_leader} ")),
            "RPCs to the SIGKILLed node fail or time out while it dies and while it is down",
        ),
        AllowedError::new(Cow::Owned(format!("->{raft_leader}")), "replication to the SIGKILLed node times out"),
    ])
}
