//! etcdctl 3.4's cluster and maintenance commands against a real 3-process cluster: member
//! list/add/remove (a fourth node joins from an empty data dir and catches up; a removed member
//! leaves a cluster that keeps serving), endpoint status/health --cluster, snapshot save, and
//! the NOSPACE alarm refusing writes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use cairn_fs_client::dev::{bin_dir, binary_path, pick_free_ports, ServiceKind};
use cairn_tests::{poll_until, ClusterOptions, Etcdctl, NodeId, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE};

const DEADLINE: Duration = Duration::from_secs(30);

/// A coordinator started by hand (not by the launcher), killed when dropped.
struct ExtraNode(tokio::process::Child);

impl Drop for ExtraNode {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_remove_status_health_and_snapshot() -> anyhow::Result<()> {
    let cluster = TestCluster::start("etcdctl-cluster").await?;
    let ctl = cluster.etcdctl();

    // Members publish their client addresses themselves, shortly after the cluster forms.
    let list = poll_until("every member to publish its client address", DEADLINE, || async {
        let list = ctl.ok(&["member", "list"]).await?;
        anyhow::ensure!(!list.contains("unstarted"), "{list}");
        Ok(list)
    })
    .await?;
    assert_eq!(list.lines().count(), 3, "three members: {list}");
    for id in 1..=3 {
        let endpoint = cluster.endpoint(NodeId(id))?;
        assert!(list.contains(&endpoint), "member list names client address {endpoint}: {list}");
    }

    // endpoint status/health over every member the cluster lists.
    let status = ctl.ok(&["endpoint", "status", "--cluster", "-w", "json"]).await?;
    let status: serde_json::Value = serde_json::from_str(&status).context("parse endpoint status")?;
    let members = status.as_array().context("status is a list")?;
    assert_eq!(members.len(), 3, "{status}");
    let leaders: Vec<u64> = members.iter().filter_map(|m| m["Status"]["leader"].as_u64()).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && *l != 0), "all agree on a leader: {leaders:?}");
    let health = ctl.run(&["endpoint", "health", "--cluster"], None).await?;
    assert!(health.status.success(), "{health:?}");
    // etcdctl prints health reports on stderr.
    assert_eq!(health.stderr.matches("is healthy").count(), 3, "{health:?}");

    for i in 0..50 {
        ctl.ok(&["put", &format!("before/{i:02}"), &format!("v{i}")]).await?;
    }

    // A fourth member: added first, then started from an empty data dir.
    let ports = pick_free_ports(3)?;
    let (client, peer, http) = (ports[0], ports[1], ports[2]);
    let added = ctl.ok(&["member", "add", "n4", &format!("--peer-urls=http://127.0.0.1:{peer}")]).await?;
    assert!(added.contains("Member") && added.contains("added"), "{added}");
    let data_dir = cluster.dir().join("extra-coordinator-4");
    let log = std::fs::File::create(cluster.dir().join("logs").join("extra-coordinator-4.log"))?;
    let binary = binary_path(&bin_dir()?, ServiceKind::Coordinator)?;
    let child = tokio::process::Command::new(binary)
        .args(["--node-id", "4", "--data-dir"])
        .arg(&data_dir)
        .args(["--listen-client", &format!("127.0.0.1:{client}")])
        .args(["--listen-peer", &format!("127.0.0.1:{peer}")])
        .args(["--listen-http", &format!("127.0.0.1:{http}")])
        // Not the lowest id: it waits to be contacted instead of bootstrapping a cluster.
        .args(["--initial-cluster", &format!("4=127.0.0.1:{peer},1=127.0.0.1:1")])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("start the fourth coordinator")?;
    let _node4 = ExtraNode(child);
    let fourth = Etcdctl::new(&[format!("127.0.0.1:{client}")]);
    poll_until("the fourth member to serve the data written before it joined", DEADLINE, || async {
        let out = fourth.run(&["get", "before/49", "--print-value-only"], None).await?;
        anyhow::ensure!(out.status.success() && out.stdout.trim() == "v49", "{out:?}");
        Ok(())
    })
    .await?;
    poll_until("the fourth member to publish its client address", DEADLINE, || async {
        let list = ctl.ok(&["member", "list"]).await?;
        anyhow::ensure!(list.contains(&format!("127.0.0.1:{client}")), "{list}");
        Ok(list)
    })
    .await?;

    // Remove a member that is not the leader; the rest keep serving.
    let leader = cluster.leader_id().await.context("a leader")?;
    let removed = [1u64, 2, 3].into_iter().find(|id| *id != leader.0).context("a follower")?;
    let out = ctl.ok(&["member", "remove", &format!("{removed:x}")]).await?;
    assert!(out.contains("removed"), "{out}");
    // Ask members that stayed: the removed one no longer hears of commits, so a linearizable
    // read there cannot complete (etcd's removed member shuts itself down).
    let survivor = Etcdctl::new(&[cluster.endpoint(NodeId(leader.0))?, format!("127.0.0.1:{client}")]);
    let list = survivor.ok(&["member", "list"]).await?;
    assert_eq!(list.lines().count(), 3, "{list}");
    survivor.ok(&["put", "after-removal", "yes"]).await?;
    assert_eq!(fourth.ok(&["get", "after-removal", "--print-value-only"]).await?.trim(), "yes");

    // snapshot save writes the file etcdctl verifies (content + SHA-256).
    let path = cluster.dir().join("backup.snapshot");
    let out = fourth.run(&["snapshot", "save", path.to_str().context("utf-8 path")?], None).await?;
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::metadata(&path)?.len() > 32);

    let removed_node_errors = cairn_tests::AllowedError::new(
        format!("->{removed}"),
        "the removed member stops receiving appends; in-flight ones to it fail",
    );
    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT, removed_node_errors])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_refuses_writes_but_serves_reads_and_deletes() -> anyhow::Result<()> {
    // A reserve larger than any disk: every member raises NOSPACE at start.
    let options = ClusterOptions {
        extra_args: vec!["--disk-free-min-bytes".into(), (u64::MAX / 2).to_string().into()],
        ..ClusterOptions::default()
    };
    let cluster = TestCluster::start_with("nospace", options).await?;
    let ctl = cluster.etcdctl();
    let alarms = poll_until("the NOSPACE alarm", DEADLINE, || async {
        let out = ctl.ok(&["alarm", "list"]).await?;
        anyhow::ensure!(out.contains("alarm:NOSPACE"), "{out}");
        Ok(out)
    })
    .await?;
    assert!(alarms.contains("alarm:NOSPACE"));
    let put = ctl.fails(&["put", "k", "v"]).await?;
    assert!(put.stderr.contains("etcdserver: mvcc: database space exceeded"), "{put:?}");
    assert_eq!(ctl.ok(&["get", "k"]).await?, "");
    assert_eq!(ctl.ok(&["del", "k"]).await?.trim(), "0");
    let raised = cairn_tests::AllowedError::fixed("NOSPACE alarm raised", "this test raises it on purpose");
    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT, raised])
}
