//! The coordinator's client library (`cairn_coordinator::client`) against a real 3-process
//! coordinator cluster with SIGKILLed nodes: endpoint failover for reads and writes, lease
//! keep-alive across the death and restart of the node its stream runs through, watch
//! resumption with neither gaps nor duplicates, and the compacted-revision error; plus the rest
//! of the API (key-value calls, transactions, structured lease errors, revoke-on-drop) on a
//! healthy cluster.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use cairn_coordinator::client::{
    ClientError, ClientOptions, CmpOp, Compare, CoordinatorClient, EventKind, KeeperOptions, LeaseId, LeaseLoss,
    LeaseState, Revision, Txn, TxnOp, TxnOpResponse, WatchEvent, WatchSpec, WatchStream,
};
use cairn_tests::limits::{CLUSTER_READY_TIMEOUT, CONVERGE_TIMEOUT, STREAM_MESSAGE_TIMEOUT};
use cairn_tests::{
    poll_until, AllowedError, ClusterOptions, NodeId, Signal, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE,
};
use tokio::task::JoinHandle;

/// Puts acknowledged before a node is killed, and after it, in the failover and watch tests.
const ACKS_BEFORE_KILL: usize = 20;
const ACKS_AFTER_KILL: usize = 50;
/// Puts acknowledged while the killed node is down, in the watch test, before it is restarted.
const ACKS_WHILE_DOWN: usize = 20;
/// Writes whose outcome a sequential writer may find unknown per kill: the one in flight on the
/// killed node, and, when that node led, one per survivor that forwarded a write to it over a
/// connection that had not yet noticed its death (the survivor itself then answers that it
/// cannot tell whether the leader applied it).
const UNKNOWN_OUTCOMES_MAX: usize = 3;
/// Deadline for a writer to make the progress a test waits for (several elections' worth on a
/// loaded machine).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Lease test: the TTL, how long the lease must survive with a keeper, and when during that
/// time its node is killed and restarted.
const FOLLOWER_CASE_TTL_SECS: i64 = 2;
const LEADER_CASE_TTL_SECS: i64 = 5;
const KEEP_ALIVE_FOR: Duration = Duration::from_secs(8);
const KILL_AFTER: Duration = Duration::from_secs(1);
const RESTART_AFTER: Duration = Duration::from_secs(4);
const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// RPCs of the survivors to a SIGKILLed node fail while it is down: openraft logs them at ERROR
/// ("... to node 2: ...", "... ->2 ...").
fn killed_node(node: NodeId) -> [AllowedError; 2] {
    [
        AllowedError::new(Cow::Owned(format!(" to node {node}")), "RPCs to the SIGKILLed node fail while it is down"),
        AllowedError::new(Cow::Owned(format!("->{node}")), "replication to the SIGKILLed node fails while it is down"),
    ]
}

/// Members publish their client addresses at start-up through membership changes; openraft logs
/// one that meets another in progress at ERROR, and the member retries it.
const CONCURRENT_MEMBERSHIP_CHANGE: AllowedError = AllowedError::fixed(
    "undergoing a configuration change",
    "start-up member publication races another membership change and is retried",
);

fn allowed_after_kills(nodes: &[NodeId]) -> Vec<AllowedError> {
    let mut allowed = vec![PEER_UNREACHABLE, PEER_RPC_TIMEOUT, CONCURRENT_MEMBERSHIP_CHANGE];
    for &node in nodes {
        allowed.extend(killed_node(node));
    }
    allowed
}

/// Every endpoint, `first`'s first: a new client's calls go to `first`.
fn endpoints_starting_at(cluster: &TestCluster, first: NodeId) -> anyhow::Result<Vec<String>> {
    let mut endpoints = vec![cluster.endpoint(first)?];
    for node in cluster.coordinator_ids() {
        if node != first {
            endpoints.push(cluster.endpoint(node)?);
        }
    }
    Ok(endpoints)
}

/// What a sequential writer did.
#[derive(Debug, Default)]
struct Written {
    /// Acknowledged puts: key, value, revision.
    acked: Vec<(String, String, Revision)>,
    /// Puts that failed with an unknown outcome: key, value, error.
    unknown: Vec<(String, String, String)>,
    /// Any other failure ends the writer; it is recorded here.
    failure: Option<String>,
}

/// A task putting `PREFIX<seq>` = `v<seq>` one after another until stopped, reading each
/// acknowledged key back (through the same client) when `read_back` is set.
struct Writer {
    written: Arc<Mutex<Written>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Writer {
    fn start(client: CoordinatorClient, prefix: &'static str, read_back: bool) -> Writer {
        let written = Arc::new(Mutex::new(Written::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (written, stop) = (written.clone(), stop.clone());
            async move {
                let record = |f: &mut dyn FnMut(&mut Written)| match written.lock() {
                    Ok(mut w) => f(&mut w),
                    Err(poisoned) => f(&mut poisoned.into_inner()),
                };
                for seq in 0u64.. {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let (key, value) = (format!("{prefix}{seq:06}"), format!("v{seq}"));
                    match client.put(key.clone(), value.clone(), None).await {
                        Ok(revision) => {
                            if read_back {
                                match client.get(key.clone()).await {
                                    Ok(Some(kv)) if kv.value == value.as_bytes() => {}
                                    other => {
                                        let failure = format!("read back {key}: {other:?}");
                                        return record(&mut |w| w.failure = Some(failure.clone()));
                                    }
                                }
                            }
                            record(&mut |w| w.acked.push((key.clone(), value.clone(), revision)));
                        }
                        Err(e) if e.outcome_unknown() => {
                            record(&mut |w| w.unknown.push((key.clone(), value.clone(), e.to_string())))
                        }
                        Err(e) => {
                            let failure = format!("put {key}: {e}");
                            return record(&mut |w| w.failure = Some(failure.clone()));
                        }
                    }
                }
            }
        });
        Writer { written, stop, task }
    }

    fn snapshot<T>(&self, f: impl FnOnce(&Written) -> T) -> T {
        match self.written.lock() {
            Ok(w) => f(&w),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Waits until `count` puts are acknowledged; fails at once if the writer failed.
    async fn wait_for_acks(&self, count: usize, what: &str) -> anyhow::Result<()> {
        poll_until(what, PROGRESS_TIMEOUT, || async {
            let (acked, failure) = self.snapshot(|w| (w.acked.len(), w.failure.clone()));
            match failure {
                // Stops the poll with the failure as its "last" state only at the deadline, so
                // fail fast instead.
                Some(f) => Ok(Err(f)),
                None if acked >= count => Ok(Ok(acked)),
                None => Err(format!("{acked} puts acknowledged")),
            }
        })
        .await?
        .map_err(|f| anyhow::anyhow!("the writer failed: {f}"))?;
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<Written> {
        self.stop.store(true, Ordering::Release);
        self.task.await.context("join the writer")?;
        let written = match Arc::try_unwrap(self.written) {
            Ok(mutex) => mutex.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(_) => bail!("the writer's record is still shared"),
        };
        if let Some(failure) = &written.failure {
            bail!("the writer failed: {failure}");
        }
        Ok(written)
    }
}

/// A client keeps reading and writing after the node it was using is SIGKILLed: once when that
/// node is the leader (writes meet "no leader" until a new one is elected), once when it is a
/// follower (its connection is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_reads_and_writes_going() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with("client-failover", ClusterOptions::fast_failover()).await?;
    let mut killed = Vec::new();
    for case in ["leader", "follower"] {
        let leader = cluster.wait_for_leader(CLUSTER_READY_TIMEOUT).await?;
        let victim = match case {
            "leader" => leader,
            _ => cluster.coordinator_ids().into_iter().find(|&n| n != leader).context("no follower")?,
        };
        let client =
            CoordinatorClient::connect(&endpoints_starting_at(&cluster, victim)?, ClientOptions::default()).await?;
        let victim_endpoint = cluster.endpoint(victim)?;
        ensure!(client.current_endpoint() == victim_endpoint, "the client starts on {}", client.current_endpoint());

        let prefix: &'static str = if case == "leader" { "/failover/leader/" } else { "/failover/follower/" };
        let writer = Writer::start(client.clone(), prefix, true);
        writer.wait_for_acks(ACKS_BEFORE_KILL, &format!("puts before killing the {case}")).await?;
        let acked_at_kill = writer.snapshot(|w| w.acked.len());
        cluster.kill(victim, Signal::SIGKILL)?;
        killed.push(victim);
        writer
            .wait_for_acks(acked_at_kill + ACKS_AFTER_KILL, &format!("puts after killing the {case} (node {victim})"))
            .await?;
        let written = writer.finish().await?;
        // Unknown outcomes happen only around the kill: once a put has succeeded after it, the
        // client is on a live endpoint and the cluster has a leader. (The first ack counted
        // after the kill may be of the put that was in flight when the node died, answered
        // just before: hence the second.)
        let first_ack_after_kill = &written.acked.get(acked_at_kill + 1).context("no second ack after the kill")?.0;
        ensure!(
            written.unknown.len() <= UNKNOWN_OUTCOMES_MAX
                && written.unknown.iter().all(|(key, _, _)| key < first_ack_after_kill),
            "{case}: puts with an unknown outcome, beyond {UNKNOWN_OUTCOMES_MAX} or after the first success \
             ({first_ack_after_kill}) after the kill: {:#?}",
            written.unknown
        );
        ensure!(client.current_endpoint() != victim_endpoint, "{case}: the client still uses the dead node");

        // Every acknowledged put is there, read through the same client.
        let stored: BTreeMap<String, String> = client
            .get_prefix(prefix)
            .await?
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
            .collect();
        let lost: Vec<_> = written.acked.iter().filter(|(k, v, _)| stored.get(k) != Some(v)).take(10).collect();
        ensure!(lost.is_empty(), "{case}: acknowledged puts missing (first 10): {lost:?}");
        // A put with an unknown outcome either happened or did not; nothing else was written.
        ensure!(
            stored.len() <= written.acked.len() + written.unknown.len(),
            "{case}: {} keys stored for {} acknowledged and {} unknown puts",
            stored.len(),
            written.acked.len(),
            written.unknown.len()
        );
        eprintln!(
            "{case}: {} puts acknowledged ({} after the kill), {} unknown; client now on {}",
            written.acked.len(),
            written.acked.len() - acked_at_kill,
            written.unknown.len(),
            client.current_endpoint()
        );

        cluster.restart(victim).await?;
        cluster.wait_ready(CLUSTER_READY_TIMEOUT).await?;
    }
    cluster.finish(&allowed_after_kills(&killed))
}

/// A keeper keeps a 2 s lease alive for 8 s while the node its keep-alive stream runs through
/// (a follower) is SIGKILLed and restarted; once the keeper is dropped, the lease expires and
/// its key goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_survives_its_node_and_stops_when_dropped() -> anyhow::Result<()> {
    keep_alive_across_kill("client-keepalive", Role::Follower, FOLLOWER_CASE_TTL_SECS).await
}

/// The same when the keeper's node is the leader. Renewals then stop until a new leader is
/// elected, so the TTL must cover a renewal interval (TTL/3) plus an election on a loaded
/// machine: 2 s leaves 1.3 s, which fast elections (0.5-1 s timeout, then a vote) sometimes
/// exceed, and the keeper would rightly report the lease lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_survives_a_leader_kill() -> anyhow::Result<()> {
    keep_alive_across_kill("client-keepalive-leader", Role::Leader, LEADER_CASE_TTL_SECS).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Leader,
    Follower,
}

async fn keep_alive_across_kill(name: &str, role: Role, ttl_secs: i64) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(name, ClusterOptions::fast_failover()).await?;
    let leader = cluster.wait_for_leader(CLUSTER_READY_TIMEOUT).await?;
    let victim = match role {
        Role::Leader => leader,
        Role::Follower => cluster.coordinator_ids().into_iter().find(|&n| n != leader).context("no follower")?,
    };
    // The victim's endpoint first: the keeper's stream runs through it.
    let client =
        CoordinatorClient::connect(&endpoints_starting_at(&cluster, victim)?, ClientOptions::default()).await?;

    let lease = client.grant(ttl_secs).await?;
    client.put("/keepalive/registration", "here", Some(lease.id)).await?;
    let keeper = client.keep_alive(lease.id).await?;
    ensure!(matches!(keeper.state(), LeaseState::Alive { .. }), "state after keep_alive: {:?}", keeper.state());
    let mut states = keeper.subscribe();

    let start = tokio::time::Instant::now();
    let mut killed = false;
    let mut restarted = false;
    let mut renewals = 0u64;
    while start.elapsed() < KEEP_ALIVE_FOR {
        if !killed && start.elapsed() >= KILL_AFTER {
            cluster.kill(victim, Signal::SIGKILL)?;
            killed = true;
        }
        if !restarted && start.elapsed() >= RESTART_AFTER {
            cluster.restart(victim).await?;
            restarted = true;
        }
        if let Ok(Ok(())) = tokio::time::timeout(LEASE_CHECK_INTERVAL, states.changed()).await {
            renewals += 1;
        }
        let state = *states.borrow_and_update();
        ensure!(
            matches!(state, LeaseState::Alive { .. }),
            "{role:?} case: lease lost {:?} after the start (node {victim} killed after {KILL_AFTER:?}): {state:?}",
            start.elapsed()
        );
    }
    // The server agrees: the lease and its key are there.
    let ttl = client.time_to_live(lease.id, true).await?.context("the kept lease does not exist")?;
    ensure!(ttl.keys == vec![b"/keepalive/registration".to_vec()], "keys of the lease: {:?}", ttl.keys);
    ensure!(client.get("/keepalive/registration").await?.is_some(), "the lease's key is gone");
    // Renewals every TTL/3: at least half as many as that makes, whatever the failover cost.
    let expected = KEEP_ALIVE_FOR.as_millis() as u64 / (ttl_secs as u64 * 1000 / 3);
    ensure!(renewals >= expected / 2, "only {renewals} renewals in {KEEP_ALIVE_FOR:?} (about {expected} expected)");
    eprintln!("{role:?} case: {renewals} renewals in {KEEP_ALIVE_FOR:?}; client now on {}", client.current_endpoint());

    drop(keeper);
    let dropped_at = tokio::time::Instant::now();
    poll_until("the dropped keeper's lease to expire and take its key", CONVERGE_TIMEOUT, || async {
        match client.get("/keepalive/registration").await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("the key is still there".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    ensure!(client.time_to_live(lease.id, false).await?.is_none(), "the lease outlived its key");
    eprintln!("{role:?} case: lease expired {:?} after the keeper was dropped", dropped_at.elapsed());

    cluster.wait_ready(CLUSTER_READY_TIMEOUT).await?;
    cluster.finish(&allowed_after_kills(&[victim]))
}

/// Collects a watch's events in a task.
struct Collector {
    events: Arc<Mutex<Vec<WatchEvent>>>,
    /// Set when the stream yielded an error or ended.
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Collector {
    fn start(mut stream: WatchStream) -> Collector {
        let events = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (events, ended) = (events.clone(), ended.clone());
            async move {
                let end = loop {
                    match stream.recv().await {
                        Some(Ok(batch)) => match events.lock() {
                            Ok(mut e) => e.extend(batch.events),
                            Err(_) => break "collector poisoned".to_owned(),
                        },
                        Some(Err(e)) => break format!("watch failed: {e}"),
                        None => break "watch ended".to_owned(),
                    }
                };
                if let Ok(mut ended) = ended.lock() {
                    *ended = Some(end);
                }
            }
        });
        Collector { events, ended, task }
    }

    fn snapshot(&self) -> anyhow::Result<(Vec<WatchEvent>, Option<String>)> {
        let events = self.events.lock().map_err(|_| anyhow::anyhow!("collector poisoned"))?.clone();
        let ended = self.ended.lock().map_err(|_| anyhow::anyhow!("collector poisoned"))?.clone();
        Ok((events, ended))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watcher on a prefix sees every put of a writer exactly once, in order, while the node it
/// watches through is SIGKILLed and later restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_without_gaps_or_duplicates() -> anyhow::Result<()> {
    const PREFIX: &str = "/watched/";
    let mut cluster = TestCluster::start_with("client-watch", ClusterOptions::fast_failover()).await?;
    let leader = cluster.wait_for_leader(CLUSTER_READY_TIMEOUT).await?;
    // Watch through a follower, and write through the leader, so that the writer keeps going
    // untroubled while the watcher's node dies.
    let victim = cluster.coordinator_ids().into_iter().find(|&n| n != leader).context("no follower")?;
    let watcher =
        CoordinatorClient::connect(&endpoints_starting_at(&cluster, victim)?, ClientOptions::default()).await?;
    let writer_client =
        CoordinatorClient::connect(&endpoints_starting_at(&cluster, leader)?, ClientOptions::default()).await?;

    let collector = Collector::start(watcher.watch(WatchSpec::prefix(PREFIX)).await?);
    let writer = Writer::start(writer_client.clone(), "/watched/", false);
    writer.wait_for_acks(ACKS_BEFORE_KILL, "puts before the kill").await?;
    cluster.kill(victim, Signal::SIGKILL)?;
    let acked_at_kill = writer.snapshot(|w| w.acked.len());
    writer.wait_for_acks(acked_at_kill + ACKS_WHILE_DOWN, "puts while the watched node is down").await?;
    // Events keep coming while the node is down: the watch moved to another endpoint.
    let last_acked_while_down = writer.snapshot(|w| w.acked.last().map(|a| a.2)).context("no acked put")?;
    poll_until("the watch to deliver puts made while its node was down", STREAM_MESSAGE_TIMEOUT, || async {
        let (events, ended) = collector.snapshot().map_err(|e| e.to_string())?;
        if let Some(end) = ended {
            return Err(end);
        }
        match events.last() {
            Some(e) if e.revision() >= last_acked_while_down => Ok(()),
            last => Err(format!("last event: {:?}", last.map(WatchEvent::revision))),
        }
    })
    .await?;
    cluster.restart(victim).await?;
    cluster.wait_ready(CLUSTER_READY_TIMEOUT).await?;
    let acked_at_restart = writer.snapshot(|w| w.acked.len());
    writer.wait_for_acks(acked_at_restart + ACKS_AFTER_KILL, "puts after the restart").await?;
    let written = writer.finish().await?;
    ensure!(
        written.unknown.is_empty(),
        "the writer's node never died, yet puts had unknown outcomes: {:?}",
        written.unknown
    );
    let last_revision = written.acked.last().map(|a| a.2).context("no acked put")?;

    let events = poll_until("the watch to deliver every put", STREAM_MESSAGE_TIMEOUT, || async {
        let (events, ended) = collector.snapshot().map_err(|e| e.to_string())?;
        if let Some(end) = ended {
            return Err(end);
        }
        match events.last() {
            Some(e) if e.revision() >= last_revision => Ok(events),
            last => Err(format!("{} events, last at {:?}", events.len(), last.map(WatchEvent::revision))),
        }
    })
    .await?;

    // Exactly the writer's puts, each once, in the order they were acknowledged.
    let seen: Vec<(String, String, Revision)> = events
        .iter()
        .map(|e| {
            ensure!(e.kind == EventKind::Put, "unexpected {:?} of {:?}", e.kind, String::from_utf8_lossy(e.key()));
            Ok((
                String::from_utf8_lossy(e.key()).into_owned(),
                String::from_utf8_lossy(e.value()).into_owned(),
                e.revision(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    if seen != written.acked {
        let first_difference = seen.iter().zip(&written.acked).position(|(a, b)| a != b);
        bail!(
            "the watch saw {} events, the writer acknowledged {} puts; first difference at {first_difference:?}: \
             seen {:?}, acked {:?}",
            seen.len(),
            written.acked.len(),
            first_difference.and_then(|i| seen.get(i)),
            first_difference.and_then(|i| written.acked.get(i)),
        );
    }
    eprintln!(
        "the watch delivered all {} puts exactly once; watcher now on {}",
        seen.len(),
        watcher.current_endpoint()
    );
    drop(collector);
    cluster.finish(&allowed_after_kills(&[victim]))
}

/// A watch from a compacted revision ends with `Compacted`, naming the oldest revision left; a
/// watch from that revision delivers the history from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_fails_with_compacted() -> anyhow::Result<()> {
    let cluster = TestCluster::start("client-compacted").await?;
    let client = CoordinatorClient::connect(&cluster.endpoints(), ClientOptions::default()).await?;
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(client.put(format!("/compacted/{i}"), format!("v{i}"), None).await?);
    }
    let compact_at = revisions[5];
    client.compact(compact_at).await?;

    let mut stream = client.watch(WatchSpec::prefix("/compacted/").from_revision(revisions[1])).await?;
    match tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, stream.recv()).await {
        Ok(Some(Err(ClientError::Compacted { compact_revision }))) => {
            ensure!(compact_revision == compact_at, "compacted at {compact_at}, the error says {compact_revision}")
        }
        other => bail!("expected the Compacted error, got {other:?}"),
    }
    match tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, stream.recv()).await {
        Ok(None) => {}
        other => bail!("expected the stream to end after Compacted, got {other:?}"),
    }

    let mut stream = client.watch(WatchSpec::prefix("/compacted/").from_revision(compact_at)).await?;
    let mut seen = Vec::new();
    while seen.len() < revisions.len() - 5 {
        match tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, stream.recv()).await {
            Ok(Some(Ok(batch))) => seen.extend(batch.events.iter().map(WatchEvent::revision)),
            other => bail!("watching from the compaction point: {other:?} after {seen:?}"),
        }
    }
    ensure!(seen == revisions[5..], "events from the compaction point: {seen:?}, puts: {:?}", &revisions[5..]);
    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT, CONCURRENT_MEMBERSHIP_CHANGE])
}

/// The rest of the API on a healthy cluster: key-value calls, transactions, lease errors, a
/// keeper that revokes when stopped, and a keeper that notices its lease revoked by someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_and_lease_calls_round_trip() -> anyhow::Result<()> {
    let cluster = TestCluster::start("client-api").await?;
    ensure!(matches!(CoordinatorClient::connect(&[], ClientOptions::default()).await, Err(ClientError::NoEndpoints)));
    ensure!(matches!(
        CoordinatorClient::connect(&["https://127.0.0.1:1".to_owned()], ClientOptions::default()).await,
        Err(ClientError::InvalidEndpoint { .. })
    ));
    let client = CoordinatorClient::connect(&cluster.endpoints(), ClientOptions::default()).await?;

    // Key-value calls.
    let first = client.put("/api/a", "1", None).await?;
    let second = client.put("/api/b", "2", None).await?;
    ensure!(second > first, "revisions {first} then {second}");
    let a = client.get("/api/a").await?.context("/api/a is missing")?;
    ensure!(a.value == b"1" && a.create_revision == first && a.mod_revision == first && a.lease.is_none(), "{a:?}");
    ensure!(client.get("/api/none").await?.is_none());
    let range = client.get_prefix("/api/").await?;
    ensure!(range.kvs.len() == 2 && range.count == 2 && range.revision >= second, "{range:?}");
    let deleted = client.delete("/api/a").await?;
    ensure!(deleted.count == 1 && deleted.revision > second, "{deleted:?}");
    ensure!(client.delete_prefix("/api/").await?.count == 1);

    // Create-if-absent: succeeds once, then reports who holds the key.
    let register = || {
        Txn::new()
            .when([Compare::create_revision("/api/owner", CmpOp::Equal, Revision(0))])
            .and_then([TxnOp::put("/api/owner", "me", None)])
            .or_else([TxnOp::get("/api/owner")])
    };
    let won = client.txn(register()).await?;
    ensure!(won.succeeded && matches!(won.responses[..], [TxnOpResponse::Put { .. }]), "{won:?}");
    let lost = client.txn(register()).await?;
    match &lost.responses[..] {
        [TxnOpResponse::Get(range)] if !lost.succeeded && range.kvs.len() == 1 && range.kvs[0].value == b"me" => {}
        _ => bail!("second registration: {lost:?}"),
    }

    // Lease errors are structured.
    ensure!(matches!(client.grant(0).await, Err(ClientError::InvalidArgument(_))));
    let unknown = LeaseId(0x1234_5678);
    let put = client.put("/api/leased", "x", Some(unknown)).await;
    ensure!(matches!(put, Err(ClientError::LeaseNotFound { lease }) if lease == unknown), "{put:?}");
    let keep = client.keep_alive(unknown).await;
    ensure!(matches!(keep, Err(ClientError::LeaseNotFound { lease }) if lease == unknown), "{keep:?}");
    ensure!(client.time_to_live(unknown, false).await?.is_none());

    // A keeper with revoke_on_drop takes its keys with it when stopped.
    let lease = client.grant(60).await?;
    client.put("/api/leased", "x", Some(lease.id)).await?;
    let keeper = client.keep_alive_with(lease.id, KeeperOptions { revoke_on_drop: true }).await?;
    keeper.stop().await;
    ensure!(client.get("/api/leased").await?.is_none(), "the revoked lease's key is still there");
    ensure!(client.time_to_live(lease.id, false).await?.is_none(), "the lease outlived its keeper");

    // A keeper notices when someone else revokes its lease.
    let lease = client.grant(3).await?;
    let keeper = client.keep_alive(lease.id).await?;
    client.revoke(lease.id).await?;
    match tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, keeper.lost()).await {
        Ok(LeaseLoss::Expired) => {}
        other => bail!("keeper of a revoked lease: {other:?}"),
    }
    ensure!(matches!(client.revoke(lease.id).await, Err(ClientError::LeaseNotFound { .. })));

    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT, CONCURRENT_MEMBERSHIP_CHANGE])
}

/// How long a freshly started etcd may take to answer.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-node etcd 3.4 (Debian's `etcd`) in its own directory; killed when dropped.
struct Etcd {
    child: std::process::Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// `Ok(None)`, after saying so, when `etcd` is not installed.
    async fn start() -> anyhow::Result<Option<Etcd>> {
        use std::process::{Command, Stdio};
        if !Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success()) {
            eprintln!("SKIPPED: `etcd` (Debian's etcd-server 3.4) is not installed");
            return Ok(None);
        }
        let dir =
            tempfile::Builder::new().prefix("cairn-client-etcd-").tempdir().context("create the etcd directory")?;
        let ports = cairn_fs_client::dev::pick_free_ports(2).context("pick ports for etcd")?;
        let (client_url, peer_url) =
            (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
        let log = std::fs::File::create(dir.path().join("etcd.log")).context("create etcd.log")?;
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("solo={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawn etcd")?;
        Ok(Some(Etcd { child, endpoint: format!("127.0.0.1:{}", ports[0]), _dir: dir }))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client against a real etcd 3.4: failover past a refused endpoint, key-value calls, a
/// watch, a lease keeper that renews and revokes, and the compacted-revision error — the same
/// wire protocol, the same behaviour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_works_against_etcd() -> anyhow::Result<()> {
    let Some(etcd) = Etcd::start().await? else { return Ok(()) };
    // The first endpoint refuses connections: every call, writes included, moves on to etcd.
    let refused = format!("127.0.0.1:{}", cairn_fs_client::dev::pick_free_ports(1).context("pick a port")?[0]);
    let client = CoordinatorClient::connect(&[refused, etcd.endpoint.clone()], ClientOptions::default()).await?;
    poll_until("etcd to answer", ETCD_READY_TIMEOUT, || async {
        client.get("/probe").await.map_err(|e| e.to_string())
    })
    .await?;
    ensure!(client.current_endpoint() == etcd.endpoint, "the client is on {}", client.current_endpoint());

    let mut watch = client.watch(WatchSpec::prefix("/etcd/").with_prev_kv()).await?;
    let mut revisions = Vec::new();
    for i in 0..3 {
        revisions.push(client.put("/etcd/k", format!("v{i}"), None).await?);
    }
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        match tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, watch.recv()).await {
            Ok(Some(Ok(batch))) => seen.extend(batch.events),
            other => bail!("watching etcd: {other:?} after {seen:?}"),
        }
    }
    ensure!(seen.iter().map(WatchEvent::revision).collect::<Vec<_>>() == revisions, "events: {seen:?}");
    ensure!(seen[2].prev.as_ref().is_some_and(|p| p.value == b"v1"), "prev of the third put: {:?}", seen[2].prev);

    let outcome = client
        .txn(Txn::new().when([Compare::value("/etcd/k", CmpOp::Equal, "v2")]).and_then([TxnOp::delete("/etcd/k")]))
        .await?;
    ensure!(outcome.succeeded && outcome.responses == [TxnOpResponse::Delete { count: 1 }], "{outcome:?}");

    let lease = client.grant(3).await?;
    client.put("/etcd/leased", "x", Some(lease.id)).await?;
    let keeper = client.keep_alive_with(lease.id, KeeperOptions { revoke_on_drop: true }).await?;
    let mut states = keeper.subscribe();
    tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, states.changed()).await.context("no renewal")??;
    ensure!(matches!(keeper.state(), LeaseState::Alive { .. }), "{:?}", keeper.state());
    keeper.stop().await;
    ensure!(client.get("/etcd/leased").await?.is_none(), "the revoked lease's key is still there");

    let last = client.put("/etcd/k", "again", None).await?;
    client.compact(last).await?;
    let mut watch = client.watch(WatchSpec::prefix("/etcd/").from_revision(revisions[0])).await?;
    match tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, watch.recv()).await {
        Ok(Some(Err(ClientError::Compacted { compact_revision }))) if compact_revision == last => {}
        other => bail!("watching etcd from a compacted revision: {other:?}"),
    }
    Ok(())
}
