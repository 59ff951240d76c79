//! `cairn bench meta` against three real metaservers (and coordinators) from the dev launcher:
//! every operation completes work without errors at 1 and several clients, readdir listings
//! have the expected size, and the benchmark leaves the namespace as it found it.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Context as _;
use cairn_fs_client::bench::meta::{self, MetaBenchConfig, MetaOp, Route};
use cairn_fs_client::dev::{Cluster, ClusterSpec, NodeId, NodeRef};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_service_client::MetaServiceClient;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const ROOT: u64 = 1;

async fn root_names(addr: &str) -> anyhow::Result<Vec<String>> {
    let mut client = MetaServiceClient::connect(format!("http://{addr}")).await?;
    let mut names = Vec::new();
    let mut cookie = 0;
    loop {
        let request = pb::ReadDirRequest {
            cred: Some(pb::Credentials { uid: 0, gid: 0, groups: Vec::new() }),
            ino: ROOT,
            cookie,
            limit: 0,
            plus: false,
        };
        let resp = client.read_dir(request).await?.into_inner();
        anyhow::ensure!(resp.errno == 0, "readdir of / answered errno {}", resp.errno);
        if let Some(last) = resp.entries.last() {
            cookie = last.cookie;
        }
        names.extend(resp.entries.into_iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()));
        if resp.eof {
            return Ok(names);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_runs_cleanly_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("cairn-bench-meta-").tempdir()?;
    let mut spec = ClusterSpec::new(dir.path());
    spec.chunkservers = 0;
    spec.metaservers = 3;
    spec.ready_timeout = READY_TIMEOUT;
    let calm: Vec<OsString> =
        ["--heartbeat-interval", "100ms", "--election-timeout", "1s"].iter().map(OsString::from).collect();
    spec.coordinator_args = calm.clone();
    spec.metaserver_args = calm;
    let cluster = Cluster::start(spec).await.context("start the cluster")?;
    let endpoints: Vec<String> = cluster
        .metaserver_ids()
        .iter()
        .map(|id| Ok(cluster.node(NodeRef::metaserver(NodeId(id.0)))?.addrs.client.to_string()))
        .collect::<anyhow::Result<_>>()?;
    let before = root_names(&endpoints[0]).await?;

    let config = MetaBenchConfig {
        endpoints: endpoints.clone(),
        clients: vec![1, 4],
        duration: Duration::from_millis(700),
        warmup: Duration::from_millis(100),
        ops: vec![MetaOp::Create, MetaOp::Stat, MetaOp::Lookup, MetaOp::Readdir, MetaOp::Rename, MetaOp::Unlink],
        readdir_entries: 300,
        // Pages smaller than the directory, so a listing takes several ReadDir calls.
        readdir_page: 64,
        readdir_plus: true,
        min_files: 20,
        keep: false,
        route: Route::Leader,
        // Four clients over two connections to each node.
        clients_per_connection: 2,
    };
    let mut reported = 0;
    let results = meta::run(&config, |_| reported += 1).await?;
    assert_eq!(reported, results.len());
    assert_eq!(results.len(), 12);
    for (i, result) in results.iter().enumerate() {
        let expected_clients = if i < 6 { 1 } else { 4 };
        assert_eq!((result.op, result.clients), (config.ops[i % 6], expected_clients));
        assert!(result.ops > 0, "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}");
        assert!(result.p50_ms > 0.0 && result.p50_ms <= result.p99_ms, "{result:?}");
    }

    // Spread over every node instead of following the leader.
    let rotating = MetaBenchConfig {
        clients: vec![2],
        ops: vec![MetaOp::Create, MetaOp::Stat],
        route: Route::Rotate,
        ..config.clone()
    };
    for result in meta::run(&rotating, |_| {}).await? {
        assert!(result.ops > 0 && result.errors == 0, "{result:?}");
    }

    // Everything under the run directories was removed again.
    assert_eq!(root_names(&endpoints[1]).await?, before);
    Ok(())
}
