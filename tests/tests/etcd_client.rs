//! The Rust `etcd-client` crate against a real 3-process coordinator cluster on loopback.
//!
//! One cluster serves a sequence of checks, each under its own key prefix; compaction runs
//! last because it cuts the history. The final check talks to every node separately, so
//! requests certainly reach followers: their writes are forwarded to the leader, and their
//! linearizable reads see every acknowledged write.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use cairn_tests::limits::{CONVERGE_TIMEOUT, STREAM_MESSAGE_TIMEOUT};
use cairn_tests::{
    expect_grpc_error, kvs, next_watch_response, poll_until, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE,
};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseTimeToLiveOptions,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_against_a_three_node_cluster() -> anyhow::Result<()> {
    let cluster = TestCluster::start("etcd-client").await?;
    let mut client = cluster.client().await?;

    kv(&mut client).await.context("put/get/delete")?;
    txn(&mut client).await.context("txn")?;
    watch(&mut client).await.context("watch")?;
    leases(&mut client).await.context("leases")?;
    every_node_serves(&cluster).await.context("requests to each node")?;
    compaction(&mut client).await.context("compaction")?;

    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT])
}

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_owned(), value.to_owned())
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> anyhow::Result<i64> {
    Ok(header.context("response without a header")?.revision())
}

async fn kv(client: &mut Client) -> anyhow::Result<()> {
    let first = revision_of(client.put("kv/a", "1", None).await?.header())?;
    client.put("kv/b", "2", None).await?;
    client.put("kv/c", "3", None).await?;
    let put = client.put("kv/a", "4", Some(PutOptions::new().with_prev_key())).await?;
    let last = revision_of(put.header())?;
    assert_eq!(last, first + 3);
    let prev = put.prev_key().context("put --prev-kv returns the previous key-value")?;
    assert_eq!(kvs(std::slice::from_ref(prev)), [pair("kv/a", "1")]);

    let get = client.get("kv/a", None).await?;
    assert_eq!(kvs(get.kvs()), [pair("kv/a", "4")]);
    let kv = &get.kvs()[0];
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()), (first, last, 2, 0));
    assert_eq!(revision_of(get.header())?, last);

    let old = client.get("kv/a", Some(GetOptions::new().with_revision(first))).await?;
    assert_eq!(kvs(old.kvs()), [pair("kv/a", "1")], "the overwritten value at its revision");

    let all = client.get("kv/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(kvs(all.kvs()), [pair("kv/a", "4"), pair("kv/b", "2"), pair("kv/c", "3")]);
    assert_eq!((all.count(), all.more()), (3, false));

    let limited = client
        .get("kv/", Some(GetOptions::new().with_prefix().with_limit(2).with_sort(SortTarget::Key, SortOrder::Descend)))
        .await?;
    assert_eq!(kvs(limited.kvs()), [pair("kv/c", "3"), pair("kv/b", "2")]);
    assert_eq!((limited.count(), limited.more()), (3, true));

    let by_value = client
        .get("kv/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Value, SortOrder::Ascend)))
        .await?;
    assert_eq!(kvs(by_value.kvs()), [pair("kv/b", "2"), pair("kv/c", "3"), pair("kv/a", "4")]);

    let keys = client.get("kv/", Some(GetOptions::new().with_prefix().with_keys_only())).await?;
    assert_eq!(kvs(keys.kvs()), [pair("kv/a", ""), pair("kv/b", ""), pair("kv/c", "")]);

    let counted = client.get("kv/", Some(GetOptions::new().with_prefix().with_count_only())).await?;
    assert!(counted.kvs().is_empty());
    assert_eq!(counted.count(), 3);

    let range = client.get("kv/b", Some(GetOptions::new().with_range("kv/c"))).await?;
    assert_eq!(kvs(range.kvs()), [pair("kv/b", "2")], "[kv/b, kv/c)");
    let from = client.get("kv/b", Some(GetOptions::new().with_from_key())).await?;
    assert_eq!(kvs(from.kvs()), [pair("kv/b", "2"), pair("kv/c", "3")]);
    let modified = client.get("kv/", Some(GetOptions::new().with_prefix().with_min_mod_revision(first + 1))).await?;
    assert_eq!(kvs(modified.kvs()), [pair("kv/a", "4"), pair("kv/b", "2"), pair("kv/c", "3")]);
    let created = client.get("kv/", Some(GetOptions::new().with_prefix().with_max_create_revision(first))).await?;
    assert_eq!(kvs(created.kvs()), [pair("kv/a", "4")]);

    // ignore_value keeps the value but still makes a new version.
    client.put("kv/a", "", Some(PutOptions::new().with_ignore_value())).await?;
    let get = client.get("kv/a", None).await?;
    assert_eq!(kvs(get.kvs()), [pair("kv/a", "4")]);
    assert_eq!(get.kvs()[0].version(), 3);

    let deleted = client.delete("kv/a", Some(DeleteOptions::new().with_prev_key())).await?;
    assert_eq!(deleted.deleted(), 1);
    assert_eq!(kvs(deleted.prev_kvs()), [pair("kv/a", "4")]);
    assert_eq!(client.delete("kv/a", None).await?.deleted(), 0);
    assert_eq!(client.delete("kv/", Some(DeleteOptions::new().with_prefix())).await?.deleted(), 2);
    assert_eq!(client.get("kv/", Some(GetOptions::new().with_prefix())).await?.count(), 0);
    Ok(())
}

async fn txn(client: &mut Client) -> anyhow::Result<()> {
    let created = revision_of(client.put("t/k", "v1", None).await?.header())?;

    let txn = Txn::new()
        .when([
            Compare::value("t/k", CompareOp::Equal, "v1"),
            Compare::version("t/k", CompareOp::Equal, 1),
            Compare::create_revision("t/k", CompareOp::Equal, created),
            Compare::mod_revision("t/k", CompareOp::Less, created + 1),
            Compare::lease("t/k", CompareOp::Equal, 0),
            Compare::version("t/", CompareOp::Greater, 0).with_prefix(),
        ])
        .and_then([TxnOp::put("t/k", "v2", None), TxnOp::get("t/k", None), TxnOp::put("t/other", "x", None)])
        .or_else([TxnOp::put("t/failed", "yes", None)]);
    let response = client.txn(txn).await?;
    ensure!(response.succeeded(), "every compare holds: {response:?}");
    assert_eq!(revision_of(response.header())?, created + 1, "one revision for the whole txn");
    let ops = response.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[1] {
        TxnOpResponse::Get(get) => assert_eq!(kvs(get.kvs()), [pair("t/k", "v2")], "a get sees the txn's own put"),
        other => anyhow::bail!("expected a get response, got {other:?}"),
    }

    let txn = Txn::new()
        .when([Compare::value("t/k", CompareOp::Equal, "v1")])
        .and_then([TxnOp::put("t/k", "v3", None)])
        .or_else([TxnOp::get("t/", Some(GetOptions::new().with_prefix())), TxnOp::put("t/failed", "yes", None)]);
    let response = client.txn(txn).await?;
    ensure!(!response.succeeded(), "the value compare fails: {response:?}");
    match &response.op_responses()[0] {
        TxnOpResponse::Get(get) => assert_eq!(kvs(get.kvs()), [pair("t/k", "v2"), pair("t/other", "x")]),
        other => anyhow::bail!("expected a get response, got {other:?}"),
    }
    let all = client.get("t/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(kvs(all.kvs()), [pair("t/failed", "yes"), pair("t/k", "v2"), pair("t/other", "x")]);

    // A nested txn, and a delete with prev_kv, in the success branch.
    let inner = Txn::new()
        .when([Compare::version("t/missing", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("t/nested", "n", None)]);
    let txn = Txn::new()
        .when([Compare::value("t/k", CompareOp::NotEqual, "v1")])
        .and_then([TxnOp::txn(inner), TxnOp::delete("t/failed", Some(DeleteOptions::new().with_prev_key()))]);
    let response = client.txn(txn).await?;
    ensure!(response.succeeded(), "{response:?}");
    match &response.op_responses()[..] {
        [TxnOpResponse::Txn(inner), TxnOpResponse::Delete(delete)] => {
            ensure!(inner.succeeded(), "nested txn: {inner:?}");
            assert_eq!(kvs(delete.prev_kvs()), [pair("t/failed", "yes")]);
        }
        other => anyhow::bail!("expected a txn and a delete response, got {other:?}"),
    }
    let all = client.get("t/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(kvs(all.kvs()), [pair("t/k", "v2"), pair("t/nested", "n"), pair("t/other", "x")]);
    Ok(())
}

/// One event as `(type, key, value, prev_kv)` text.
type EventText = (EventType, String, String, Option<(String, String)>);

/// Reads watch responses until `n` events have arrived (responses may batch events).
async fn next_events(stream: &mut etcd_client::WatchStream, watch_id: i64, n: usize) -> anyhow::Result<Vec<EventText>> {
    let mut events = Vec::new();
    while events.len() < n {
        let response = next_watch_response(stream).await.with_context(|| format!("after events {events:?}"))?;
        ensure!(!response.canceled(), "watch canceled: {:?}", response.cancel_reason());
        ensure!(response.watch_id() == watch_id, "event for watch {} instead of {watch_id}", response.watch_id());
        for event in response.events() {
            let kv = event.kv().context("event without kv")?;
            let [(key, value)] = kvs(std::slice::from_ref(kv)).try_into().map_err(|_| anyhow::anyhow!("one kv"))?;
            let prev = event.prev_kv().map(|p| kvs(std::slice::from_ref(p)).remove(0));
            events.push((event.event_type(), key, value, prev));
        }
    }
    ensure!(events.len() == n, "more events than expected: {events:?}");
    Ok(events)
}

async fn watch(client: &mut Client) -> anyhow::Result<()> {
    let start = revision_of(client.put("w/a", "1", None).await?.header())?;
    client.put("w/a", "2", None).await?;
    client.put("elsewhere/a", "1", None).await?;

    let options = WatchOptions::new().with_prefix().with_start_revision(start).with_prev_key();
    let (mut watcher, mut stream) = client.watch("w/", Some(options)).await?;
    let id = watcher.watch_id();
    let some = |k: &str, v: &str| Some(pair(k, v));
    assert_eq!(
        next_events(&mut stream, id, 2).await.context("history replay")?,
        [
            (EventType::Put, "w/a".to_owned(), "1".to_owned(), None),
            (EventType::Put, "w/a".to_owned(), "2".to_owned(), some("w/a", "1")),
        ]
    );

    client.put("w/b", "3", None).await?;
    client.delete("w/a", None).await?;
    client.put("elsewhere/b", "1", None).await?;
    client.put("w/c", "4", None).await?;
    assert_eq!(
        next_events(&mut stream, id, 3).await.context("live events")?,
        [
            (EventType::Put, "w/b".to_owned(), "3".to_owned(), None),
            (EventType::Delete, "w/a".to_owned(), String::new(), some("w/a", "2")),
            (EventType::Put, "w/c".to_owned(), "4".to_owned(), None),
        ]
    );

    // Cancel, then watch another key on the same stream: only the new watch reports events.
    watcher.cancel().await?;
    let canceled = next_watch_response(&mut stream).await?;
    ensure!(canceled.canceled() && canceled.watch_id() == id, "cancel response: {canceled:?}");
    watcher.watch("w2", None).await?;
    let created = next_watch_response(&mut stream).await?;
    ensure!(created.created() && created.watch_id() != id, "second watch: {created:?}");
    client.put("w/d", "5", None).await?;
    client.put("w2", "6", None).await?;
    assert_eq!(
        next_events(&mut stream, created.watch_id(), 1).await?,
        [(EventType::Put, "w2".to_owned(), "6".to_owned(), None)]
    );
    Ok(())
}

async fn keys_under(client: &mut Client, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(kvs(client.get(prefix, Some(GetOptions::new().with_prefix())).await?.kvs()))
}

async fn leases(client: &mut Client) -> anyhow::Result<()> {
    const TTL_SECS: i64 = 3;
    let ttl = Duration::from_secs(TTL_SECS as u64);
    let grant = client.lease_grant(TTL_SECS, None).await?;
    let granted = Instant::now();
    let id = grant.id();
    assert_eq!(grant.ttl(), TTL_SECS);
    client.put("l/k1", "a", Some(PutOptions::new().with_lease(id))).await?;
    client.put("l/k2", "b", Some(PutOptions::new().with_lease(id))).await?;
    assert_eq!(client.get("l/k1", None).await?.kvs()[0].lease(), id);

    let (mut keeper, mut responses) = client.lease_keep_alive(id).await?;
    // Keep the lease alive (every TTL/3, as etcd's clients do) until it is well past its TTL.
    while granted.elapsed() < ttl + Duration::from_secs(2) {
        keeper.keep_alive().await?;
        let response = tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, responses.message())
            .await
            .context("keep-alive response deadline")??
            .context("keep-alive stream ended")?;
        assert_eq!((response.id(), response.ttl()), (id, TTL_SECS));
        tokio::time::sleep(ttl / 3).await;
    }
    assert_eq!(keys_under(client, "l/").await?, [pair("l/k1", "a"), pair("l/k2", "b")], "kept alive past its TTL");

    let live = client.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await?;
    assert_eq!((live.id(), live.granted_ttl()), (id, TTL_SECS));
    ensure!((1..=TTL_SECS).contains(&live.ttl()), "remaining TTL {}", live.ttl());
    assert_eq!(live.keys(), [b"l/k1".to_vec(), b"l/k2".to_vec()]);
    let listed: Vec<i64> = client.leases().await?.leases().iter().map(|l| l.id()).collect();
    ensure!(listed.contains(&id), "lease {id:x} not in {listed:x?}");

    // Stop keeping it alive: it expires, with its keys.
    drop((keeper, responses));
    poll_until("the keys of the abandoned lease to be deleted", ttl + Duration::from_secs(5), || {
        let mut c = client.clone();
        async move {
            match keys_under(&mut c, "l/").await {
                Ok(keys) if keys.is_empty() => Ok(()),
                Ok(keys) => Err(format!("still there: {keys:?}")),
                Err(e) => Err(format!("{e:#}")),
            }
        }
    })
    .await?;
    let expired = client.lease_time_to_live(id, None).await?;
    assert_eq!(expired.ttl(), -1, "an expired lease reports TTL -1");
    let listed: Vec<i64> = client.leases().await?.leases().iter().map(|l| l.id()).collect();
    ensure!(!listed.contains(&id), "expired lease {id:x} still in {listed:x?}");

    // Revoke deletes the attached keys at once.
    let id = client.lease_grant(60, None).await?.id();
    client.put("r/k", "x", Some(PutOptions::new().with_lease(id))).await?;
    client.lease_revoke(id).await?;
    assert_eq!(keys_under(client, "r/").await?, []);
    expect_grpc_error(
        "revoking a revoked lease",
        client.lease_revoke(id).await,
        Code::NotFound,
        Some("etcdserver: requested lease not found"),
    )
}

/// Each node, through a client that knows only that node: the maintenance status names the
/// leader; writes (put, txn, delete, lease grant/keep-alive/revoke) through a follower succeed;
/// a linearizable read on any node sees a write acknowledged by another.
async fn every_node_serves(cluster: &TestCluster) -> anyhow::Result<()> {
    let leader = cluster.wait_for_leader(CONVERGE_TIMEOUT).await?;
    let ids = cluster.coordinator_ids();
    let mut clients = Vec::new();
    for &node in &ids {
        clients.push((node, cluster.client_for(node).await?));
    }
    for (node, client) in &mut clients {
        let status = client.status().await?;
        assert_eq!(status.leader(), leader.0, "node {node} names leader {}", status.leader());
        assert_eq!(status.header().map(|h| h.member_id()), Some(node.0), "member id of node {node}");
    }

    for i in 0..clients.len() {
        let (node, ref mut client) = clients[i];
        let key = format!("f/{node}");
        client.put(key.as_str(), "written", None).await.with_context(|| format!("put via node {node}"))?;
        // Every node's linearizable read sees the acknowledged write at once.
        for (reader, reader_client) in &mut clients {
            let got = reader_client.get(key.as_str(), None).await?;
            assert_eq!(kvs(got.kvs()), [pair(&key, "written")], "node {reader} reads the write acknowledged by {node}");
        }
        let (node, ref mut client) = clients[i];
        let txn = Txn::new().when([Compare::value(key.as_str(), CompareOp::Equal, "written")]).and_then([TxnOp::put(
            key.as_str(),
            "txn",
            None,
        )]);
        ensure!(client.txn(txn).await?.succeeded(), "txn via node {node}");
        let lease = client.lease_grant(30, None).await?.id();
        client.put(format!("f/{node}/leased"), "x", Some(PutOptions::new().with_lease(lease))).await?;
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        let response = tokio::time::timeout(STREAM_MESSAGE_TIMEOUT, responses.message())
            .await
            .context("keep-alive response deadline")??
            .context("keep-alive stream ended")?;
        assert_eq!((response.id(), response.ttl()), (lease, 30), "keep-alive via node {node}");
        client.lease_revoke(lease).await.with_context(|| format!("revoke via node {node}"))?;
        assert_eq!(client.delete(key.as_str(), None).await?.deleted(), 1, "delete via node {node}");
        assert_eq!(keys_under(client, &format!("f/{node}")).await?, [], "via node {node}");
    }

    // A client over all endpoints spreads requests over the nodes; every one succeeds.
    let mut all = cluster.client().await?;
    for i in 0..30 {
        all.put(format!("spread/{i:02}"), i.to_string(), None).await?;
    }
    // Serializable reads are local to each node: every node converges on the same data.
    let expected = keys_under(&mut all, "spread/").await?;
    assert_eq!(expected.len(), 30);
    for (node, client) in &clients {
        let client = client.clone();
        let expected = expected.clone();
        poll_until(&format!("node {node} to apply every spread/ key"), CONVERGE_TIMEOUT, || {
            let mut c = client.clone();
            let expected = expected.clone();
            async move {
                let got = c.get("spread/", Some(GetOptions::new().with_prefix().with_serializable())).await;
                match got {
                    Ok(got) if kvs(got.kvs()) == expected => Ok(()),
                    Ok(got) => Err(format!("{} of {} keys", got.kvs().len(), expected.len())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await?;
    }
    Ok(())
}

async fn compaction(client: &mut Client) -> anyhow::Result<()> {
    let first = revision_of(client.put("c/k", "v1", None).await?.header())?;
    let compact_at = revision_of(client.put("c/k", "v2", None).await?.header())?;
    client.put("c/k", "v3", None).await?;

    client.compact(compact_at, Some(CompactionOptions::new().with_physical())).await?;
    let compacted = Some("etcdserver: mvcc: required revision has been compacted");
    expect_grpc_error(
        "get below the compaction",
        client.get("c/k", Some(GetOptions::new().with_revision(first))).await,
        Code::OutOfRange,
        compacted,
    )?;
    let at = client.get("c/k", Some(GetOptions::new().with_revision(compact_at))).await?;
    assert_eq!(kvs(at.kvs()), [pair("c/k", "v2")], "the compaction revision itself stays readable");
    expect_grpc_error("compacting again", client.compact(compact_at, None).await, Code::OutOfRange, compacted)?;
    let future = revision_of(client.get("c/k", None).await?.header())? + 100;
    expect_grpc_error(
        "compacting a future revision",
        client.compact(future, None).await,
        Code::OutOfRange,
        Some("etcdserver: mvcc: required revision is a future revision"),
    )?;

    // A watch from before the compaction is created, then canceled with the compaction point.
    let (_watcher, mut stream) = client.watch("c/k", Some(WatchOptions::new().with_start_revision(first))).await?;
    let response = next_watch_response(&mut stream).await?;
    ensure!(response.canceled(), "watch below the compaction is canceled: {response:?}");
    assert_eq!(response.compact_revision(), compact_at, "{response:?}");
    Ok(())
}
