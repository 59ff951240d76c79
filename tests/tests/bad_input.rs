//! Requests etcd rejects get etcd's exact error (gRPC code and message) from a 3-process
//! coordinator cluster, and the cluster keeps serving afterwards: after each rejection a write
//! goes through and every node reads it back.

use anyhow::Context as _;
use cairn_tests::{expect_grpc_error, kvs, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use tonic::Code;

/// etcd's default `--max-request-bytes`.
const REQUEST_BYTES_MAX: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
const TXN_OPS_MAX: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_errors_and_the_cluster_keeps_serving() -> anyhow::Result<()> {
    let cluster = TestCluster::start("bad-input").await?;
    let mut client = cluster.client().await?;
    let mut checker = ServingCheck::new(&cluster).await?;
    let ctl = cluster.etcdctl();

    // 1.6 MiB passes the gRPC limit (request limit + 512 KiB) but not etcd's request limit.
    let value = "x".repeat(REQUEST_BYTES_MAX + 64 * 1024);
    expect_grpc_error(
        "put of a 1.6 MiB value",
        client.put("big", value.as_str(), None).await,
        Code::InvalidArgument,
        Some("etcdserver: request is too large"),
    )?;
    checker.check("1.6 MiB put").await?;
    let txn = Txn::new().and_then([TxnOp::put("big", value.as_str(), None)]);
    expect_grpc_error(
        "txn with a 1.6 MiB value",
        client.txn(txn).await,
        Code::InvalidArgument,
        Some("etcdserver: request is too large"),
    )?;
    // etcdctl reads the value from stdin when it is not an argument (too long for one).
    let out = ctl.run(&["put", "big"], Some(&value)).await?;
    anyhow::ensure!(
        !out.status.success() && out.stderr.contains("etcdserver: request is too large"),
        "etcdctl put of a 1.6 MiB value: {out}"
    );
    checker.check("1.6 MiB txn and etcdctl put").await?;

    let puts = |n: usize| (0..n).map(|i| TxnOp::put(format!("ops/{i}"), "v", None)).collect::<Vec<_>>();
    client.txn(Txn::new().and_then(puts(TXN_OPS_MAX))).await.context("txn with the maximum number of ops")?;
    let too_many = Some("etcdserver: too many operations in txn request");
    expect_grpc_error(
        "txn with 129 success ops",
        client.txn(Txn::new().and_then(puts(TXN_OPS_MAX + 1))).await,
        Code::InvalidArgument,
        too_many,
    )?;
    expect_grpc_error(
        "txn with 129 failure ops",
        client.txn(Txn::new().or_else(puts(TXN_OPS_MAX + 1))).await,
        Code::InvalidArgument,
        too_many,
    )?;
    let compares: Vec<Compare> =
        (0..=TXN_OPS_MAX).map(|i| Compare::version(format!("ops/{i}"), CompareOp::Greater, -1)).collect();
    expect_grpc_error(
        "txn with 129 compares",
        client.txn(Txn::new().when(compares)).await,
        Code::InvalidArgument,
        too_many,
    )?;
    checker.check("too many txn ops").await?;

    let not_found = Some("etcdserver: requested lease not found");
    expect_grpc_error(
        "put with an unknown lease",
        client.put("leased", "v", Some(PutOptions::new().with_lease(0x1234_5678))).await,
        Code::NotFound,
        not_found,
    )?;
    let txn = Txn::new().and_then([TxnOp::put("leased", "v", Some(PutOptions::new().with_lease(0x1234_5678)))]);
    expect_grpc_error("txn put with an unknown lease", client.txn(txn).await, Code::NotFound, not_found)?;
    assert_eq!(client.get("leased", None).await?.count(), 0, "the rejected put left nothing behind");
    expect_grpc_error("revoke of an unknown lease", client.lease_revoke(0x1234_5678).await, Code::NotFound, not_found)?;
    expect_grpc_error(
        "lease grant above etcd's maximum TTL",
        client.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        Some("etcdserver: too large lease TTL"),
    )?;
    checker.check("unknown lease").await?;

    let now = client.get("any", None).await?.header().context("header")?.revision();
    let future = "etcdserver: mvcc: required revision is a future revision";
    expect_grpc_error(
        "get at a future revision",
        client.get("any", Some(GetOptions::new().with_revision(now + 1000))).await,
        Code::OutOfRange,
        Some(future),
    )?;
    let out = ctl.fails(&["get", "any", &format!("--rev={}", now + 1000)]).await?;
    anyhow::ensure!(out.stderr.contains(future), "etcdctl get at a future revision: {out}");
    checker.check("future revision").await?;

    let duplicate = Some("etcdserver: duplicate key given in txn request");
    let txn = Txn::new().and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]);
    expect_grpc_error("txn putting one key twice", client.txn(txn).await, Code::InvalidArgument, duplicate)?;
    let txn = Txn::new()
        .and_then([TxnOp::put("dup/a", "1", None), TxnOp::delete("dup/", Some(DeleteOptions::new().with_prefix()))]);
    expect_grpc_error("txn putting a key it deletes", client.txn(txn).await, Code::InvalidArgument, duplicate)?;
    assert_eq!(client.get("dup", Some(GetOptions::new().with_prefix())).await?.count(), 0);
    checker.check("duplicate keys in a txn").await?;

    let empty = Some("etcdserver: key is not provided");
    expect_grpc_error("put with an empty key", client.put("", "v", None).await, Code::InvalidArgument, empty)?;
    expect_grpc_error("get with an empty key", client.get("", None).await, Code::InvalidArgument, empty)?;
    expect_grpc_error("delete with an empty key", client.delete("", None).await, Code::InvalidArgument, empty)?;
    let txn = Txn::new().and_then([TxnOp::put("", "v", None)]);
    expect_grpc_error("txn put with an empty key", client.txn(txn).await, Code::InvalidArgument, empty)?;
    checker.check("empty key").await?;

    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT])
}

/// A message above the gRPC receive limit (request limit + 512 KiB) is refused by the
/// transport before etcd looks at it; etcd's grpc-go answers ResourceExhausted ("grpc:
/// received message larger than max"), and clients rely on that code. A test of its own, so
/// that this transport-level check does not hide the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_above_the_grpc_limit_is_resource_exhausted() -> anyhow::Result<()> {
    let cluster = TestCluster::start("grpc-limit").await?;
    let mut client = cluster.client().await?;
    let mut checker = ServingCheck::new(&cluster).await?;

    let value = "x".repeat(3 * 1024 * 1024);
    let result = client.put("huge", value.as_str(), None).await;
    expect_grpc_error("put of a 3 MiB value", result, Code::ResourceExhausted, None)?;
    checker.check("3 MiB put").await?;
    let txn = Txn::new().and_then([TxnOp::put("huge", value.as_str(), None)]);
    expect_grpc_error("txn with a 3 MiB value", client.txn(txn).await, Code::ResourceExhausted, None)?;
    checker.check("3 MiB txn").await?;

    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT])
}

/// etcd accepts any request up to its request limit; a value just below it is stored,
/// replicated to every node, and the cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_just_below_the_request_limit_is_stored_and_replicated() -> anyhow::Result<()> {
    let cluster = TestCluster::start("request-limit").await?;
    let mut client = cluster.client().await?;
    let mut checker = ServingCheck::new(&cluster).await?;

    let value = "x".repeat(REQUEST_BYTES_MAX - 1024);
    client.put("large", value.as_str(), None).await.context("put just below the request limit")?;
    for (node, reader) in &mut checker.readers {
        let got = reader.get("large", None).await.with_context(|| format!("get from node {node}"))?;
        let len = got.kvs().first().map(|kv| kv.value().len());
        assert_eq!(len, Some(value.len()), "the large value read from node {node}");
    }
    checker.check("put just below the limit").await?;

    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT])
}

/// Proves the cluster still serves: a write through the all-endpoints client, then a
/// linearizable read of it from every node.
struct ServingCheck {
    writer: Client,
    readers: Vec<(u64, Client)>,
    round: u32,
}

impl ServingCheck {
    async fn new(cluster: &TestCluster) -> anyhow::Result<ServingCheck> {
        let mut readers = Vec::new();
        for node in cluster.coordinator_ids() {
            readers.push((node.0, cluster.client_for(node).await?));
        }
        Ok(ServingCheck { writer: cluster.client().await?, readers, round: 0 })
    }

    async fn check(&mut self, after: &str) -> anyhow::Result<()> {
        self.round += 1;
        let key = format!("alive/{}", self.round);
        self.writer.put(key.as_str(), after, None).await.with_context(|| format!("put after {after}"))?;
        for (node, reader) in &mut self.readers {
            let got =
                reader.get(key.as_str(), None).await.with_context(|| format!("get from node {node} after {after}"))?;
            assert_eq!(kvs(got.kvs()), [(key.clone(), after.to_owned())], "node {node} after {after}");
        }
        Ok(())
    }
}
