//! Runtime tests: openraft's storage conformance suite on the RocksDB stores, and a three-node
//! cluster on loopback gRPC (forwarding, read barriers, leader loss, snapshot catch-up).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::testing::{StoreBuilder, Suite};
use tokio::sync::oneshot;

use super::app::App;
use super::log_store::{LogStore, LOG_TABLE, META_TABLE};
use super::state_machine::{StateMachine, SM_TABLE};
use super::store::{RocksStore, StateRead, StateStore, StoreError, WriteSet};
use super::types::{StorageError, TypeConfig};
use super::{Member, PeerService, Rsm, RsmConfig, RsmError};

/// A register map: command "key=value" sets key and answers the previous value.
#[derive(Default)]
struct Registers {
    applied: AtomicU64,
}

const REG_TABLE: &str = "test_registers";

impl App for Registers {
    fn tables(&self) -> &'static [&'static str] {
        &[REG_TABLE]
    }
    fn apply(
        &self,
        state: &dyn StateRead,
        writes: &mut WriteSet,
        _log_index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let text = String::from_utf8_lossy(command);
        let Some((k, v)) = text.split_once('=') else { return Ok(b"malformed".to_vec()) };
        let previous = state.get(REG_TABLE, k.as_bytes())?.unwrap_or_default();
        writes.put(REG_TABLE, k.as_bytes().to_vec(), v.as_bytes().to_vec());
        self.applied.fetch_add(1, Ordering::Relaxed);
        Ok(previous)
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine<Registers>, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine<Registers>), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let tables = [LOG_TABLE, META_TABLE, SM_TABLE, REG_TABLE];
        let store = Arc::new(
            RocksStore::open(&dir.path().join("db"), &tables).map_err(|e| openraft::StorageIOError::write(&e))?,
        );
        let log = LogStore::new(store.db().clone());
        let sm = StateMachine::new(store, Arc::new(Registers::default()), dir.path().to_path_buf())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

struct TestNode {
    rsm: Rsm<Registers>,
    stop: Option<oneshot::Sender<()>>,
    addr: String,
}

fn config(id: u64, dir: &std::path::Path) -> RsmConfig {
    let mut c = RsmConfig::new(id, dir.join(format!("node-{id}")));
    c.heartbeat_interval_ms = 50;
    c.election_timeout_min_ms = 300;
    c.election_timeout_max_ms = 600;
    c.snapshot_logs_since_last = 50;
    c.logs_to_keep_after_snapshot = 5;
    c.purge_batch_size = 8;
    c
}

async fn start_node(id: u64, dir: &std::path::Path, listener: tokio::net::TcpListener) -> TestNode {
    let addr = listener.local_addr().expect("addr").to_string();
    // A restarted node may briefly find its previous RocksDB still locked while it shuts down.
    let mut tries = 0;
    let rsm = loop {
        match Rsm::open(config(id, dir), Arc::new(Registers::default())).await {
            Ok(r) => break r,
            Err(e) if tries < 50 => {
                tries += 1;
                tracing::debug!(error = %e, "retrying open");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("open node {id}: {e}"),
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let service = PeerService::new(rsm.clone());
    tokio::spawn(async move {
        let incoming = super::incoming_nodelay(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    TestNode { rsm, stop: Some(stop), addr }
}

async fn stop_node(node: &mut TestNode) {
    if let Some(s) = node.stop.take() {
        let _ = s.send(());
    }
    node.rsm.shutdown().await;
}

async fn wait_leader(nodes: &[&TestNode]) -> u64 {
    for _ in 0..200 {
        for n in nodes {
            if n.rsm.is_leader() {
                return n.rsm.node_id();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected");
}

fn read(node: &TestNode, key: &str) -> Option<String> {
    node.rsm
        .store()
        .read_view()
        .get(REG_TABLE, key.as_bytes())
        .expect("read")
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_forward_read_failover_and_snapshot_catch_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    let members: BTreeMap<u64, Member> =
        addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, Member::new(a.clone()))).collect();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(start_node(i as u64 + 1, dir.path(), l).await);
    }
    nodes[0].rsm.bootstrap(members.clone()).await.expect("bootstrap");
    // Bootstrapping again (a restart) is harmless.
    nodes[0].rsm.bootstrap(members.clone()).await.expect("bootstrap again");
    let leader = wait_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    assert!(nodes.iter().all(|n| !n.rsm.voting_paused()), "fresh nodes vote at once");
    let follower = nodes.iter().position(|n| n.rsm.node_id() != leader).expect("a follower");

    // A follower forwards writes to the leader and gets the state machine's answer.
    let prev = nodes[follower].rsm.propose(b"a=1".to_vec()).await.expect("propose via follower");
    assert_eq!(prev, b"");
    let prev = nodes[follower].rsm.propose(b"a=2".to_vec()).await.expect("propose via follower");
    assert_eq!(prev, b"1");
    // After a read barrier every node sees the committed write.
    for n in &nodes {
        n.rsm.read_barrier().await.expect("read barrier");
        assert_eq!(read(n, "a").as_deref(), Some("2"));
    }

    // Writes and linearizable reads alternating over the nodes: the leader answers most read
    // indexes from its lease, and every read must still see the write acknowledged just before
    // it (through whichever node proposed it).
    for i in 0..60u32 {
        let writer = &nodes[(i % 3) as usize];
        writer.rsm.propose(format!("lease={i}").into_bytes()).await.expect("propose");
        let reader = &nodes[((i + 1) % 3) as usize];
        reader.rsm.read_barrier().await.expect("read barrier");
        assert_eq!(read(reader, "lease"), Some(i.to_string()), "read on node {} after write {i}", reader.rsm.node_id());
    }

    // Many concurrent proposals: all answered, batched into fewer log entries.
    let before = nodes[0].rsm.metrics().borrow().last_log_index.unwrap_or(0);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let rsm = nodes[(i % 3) as usize].rsm.clone();
        tasks.push(tokio::spawn(async move { rsm.propose(format!("k{i}={i}").into_bytes()).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("propose");
    }
    let after = nodes[0].rsm.metrics().borrow().last_log_index.unwrap_or(0);
    assert!(after - before < 200, "200 proposals should share entries, used {}", after - before);

    // Stop one follower; the others keep committing; many entries push the log past snapshots.
    let lagging = follower;
    let lagging_id = nodes[lagging].rsm.node_id();
    let lagging_addr = nodes[lagging].addr.clone();
    stop_node(&mut nodes[lagging]).await;
    let live: Vec<usize> = (0..3).filter(|i| *i != lagging).collect();
    for i in 0..300 {
        nodes[live[0]].rsm.propose(format!("late={i}").into_bytes()).await.expect("propose while one is down");
    }
    let leader_node = live.iter().copied().find(|i| nodes[*i].rsm.is_leader()).expect("leader alive");
    // Snapshots are built in the background; wait for the purge that follows one.
    let mut purged = None;
    for _ in 0..100 {
        purged = nodes[leader_node].rsm.metrics().borrow().purged;
        if purged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged.is_some(), "the leader should have purged its log behind a snapshot");

    // Restart the lagging node on the same address and data: it catches up by snapshot.
    // The old instance must be gone entirely (it holds the RocksDB lock) before the new opens.
    drop(nodes.remove(lagging));
    let listener = tokio::net::TcpListener::bind(&lagging_addr).await.expect("rebind");
    let restarting = std::time::Instant::now();
    nodes.insert(lagging, start_node(lagging_id, dir.path(), listener).await);
    // A restarted member stays out of elections for a while (it may have backed a read lease
    // just before it stopped); members started fresh never do.
    let quiet = config(lagging_id, dir.path()).restart_quiet();
    if restarting.elapsed() < quiet {
        assert!(nodes[lagging].rsm.voting_paused(), "restarted node votes at once");
    }
    nodes[lagging].rsm.read_barrier().await.expect("barrier on restarted node");
    assert_eq!(read(&nodes[lagging], "late").as_deref(), Some("299"));
    assert_eq!(read(&nodes[lagging], "k7").as_deref(), Some("7"));

    // Lose the leader: a new one is elected and writes continue.
    let old_leader = nodes.iter().position(|n| n.rsm.is_leader()).expect("leader");
    stop_node(&mut nodes[old_leader]).await;
    let rest: Vec<&TestNode> = nodes.iter().enumerate().filter(|(i, _)| *i != old_leader).map(|(_, n)| n).collect();
    let new_leader = wait_leader(&rest).await;
    assert_ne!(new_leader, nodes[old_leader].rsm.node_id());
    let mut result = Err(RsmError::NoLeader);
    for _ in 0..50 {
        result = rest[0].rsm.propose(b"after=1".to_vec()).await;
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    result.expect("write after leader loss");
    for n in &rest {
        n.rsm.read_barrier().await.expect("barrier");
        assert_eq!(read(n, "after").as_deref(), Some("1"));
        assert_eq!(read(n, "late").as_deref(), Some("299"));
    }
    for n in nodes.iter_mut() {
        stop_node(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_add_learner_promote_and_remove_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut listeners = Vec::new();
    for _ in 0..4 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(start_node(i as u64 + 1, dir.path(), l).await);
    }
    // Start with nodes 1-3; node 4 runs from an empty data dir but belongs to no cluster yet.
    let members: BTreeMap<u64, Member> = (1..=3).map(|id| (id, Member::new(addrs[id as usize - 1].clone()))).collect();
    nodes[0].rsm.bootstrap(members).await.expect("bootstrap");
    let leader = wait_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let leader_node = &nodes[leader as usize - 1];
    for i in 0..20 {
        leader_node.rsm.propose(format!("before{i}={i}").into_bytes()).await.expect("propose");
    }

    // Add node 4 as a learner: it catches up while the cluster keeps serving.
    leader_node.rsm.add_learner(4, addrs[3].clone()).await.expect("add learner");
    leader_node.rsm.propose(b"with_learner=1".to_vec()).await.expect("propose with learner");
    let learners: Vec<u64> = leader_node.rsm.metrics().borrow().membership_config.membership().learner_ids().collect();
    assert_eq!(learners, vec![4]);
    // Promote: voters become {1,2,3,4}.
    leader_node.rsm.change_voters([1, 2, 3, 4].into_iter().collect(), false).await.expect("promote");
    nodes[3].rsm.read_barrier().await.expect("barrier on new voter");
    assert_eq!(read(&nodes[3], "before19").as_deref(), Some("19"));
    assert_eq!(read(&nodes[3], "with_learner").as_deref(), Some("1"));

    // Remove a voter that is not the leader; the remaining three keep serving.
    let removed = (1..=3).find(|id| *id != leader).expect("a non-leader");
    let voters: std::collections::BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != removed).collect();
    leader_node.rsm.change_voters(voters.clone(), false).await.expect("remove voter");
    let m = leader_node.rsm.metrics().borrow().clone();
    let now: std::collections::BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    assert_eq!(now, voters);
    leader_node.rsm.propose(b"after_remove=1".to_vec()).await.expect("propose after removal");
    nodes[3].rsm.read_barrier().await.expect("barrier");
    assert_eq!(read(&nodes[3], "after_remove").as_deref(), Some("1"));
    for n in nodes.iter_mut() {
        stop_node(n).await;
    }
}
