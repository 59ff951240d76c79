//! Debian's etcdctl (v3.4) against a real 3-process coordinator cluster on loopback.
//!
//! One cluster serves a sequence of checks, one per etcdctl command family; each check uses its
//! own key prefix, and compaction runs last because it cuts the history the others replay.
//! Assertions are on etcdctl's exact output: its simple format where that is what users see,
//! `-w json` (base64 keys and values) where revisions and versions matter.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use cairn_tests::limits::CONVERGE_TIMEOUT;
use cairn_tests::{
    json_kvs, json_revision, poll_until, Etcdctl, Signal, TestCluster, PEER_RPC_TIMEOUT, PEER_UNREACHABLE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_commands_against_a_three_node_cluster() -> anyhow::Result<()> {
    let cluster = TestCluster::start("etcdctl").await?;
    let ctl = cluster.etcdctl();

    endpoint_status(&ctl, cluster.coordinator_ids().len()).await.context("endpoint status")?;
    put_and_get(&ctl).await.context("put/get")?;
    delete(&ctl).await.context("del")?;
    txn(&ctl).await.context("txn")?;
    watch(&ctl).await.context("watch")?;
    lease_keep_alive_and_expiry(&ctl).await.context("lease keep-alive and expiry")?;
    lease_revoke(&ctl).await.context("lease revoke")?;
    lock(&ctl, &cluster.dir()).await.context("lock")?;
    elect(&ctl).await.context("elect")?;
    compaction(&ctl).await.context("compaction")?;

    cluster.finish(&[PEER_UNREACHABLE, PEER_RPC_TIMEOUT])
}

/// Every endpoint answers `endpoint status` and they agree on the leader.
async fn endpoint_status(ctl: &Etcdctl, nodes: usize) -> anyhow::Result<()> {
    let json = ctl.json(&["endpoint", "status"]).await?;
    let statuses = json.as_array().context("endpoint status -w json is an array")?;
    assert_eq!(statuses.len(), nodes, "{json}");
    let leaders: Vec<u64> = statuses.iter().filter_map(|s| s["Status"]["leader"].as_u64()).collect();
    assert_eq!(leaders.len(), nodes, "every endpoint names a leader: {json}");
    assert!(leaders.iter().all(|&l| l == leaders[0] && l != 0), "endpoints disagree on the leader: {json}");
    Ok(())
}

async fn put_and_get(ctl: &Etcdctl) -> anyhow::Result<()> {
    let first = json_revision(&ctl.json(&["put", "kv/a", "one"]).await?)?;
    assert_eq!(ctl.ok(&["put", "kv/b", "two"]).await?, "OK\n");
    assert_eq!(ctl.ok(&["put", "kv/c", "three"]).await?, "OK\n");
    assert_eq!(ctl.ok(&["put", "kv/a", "four", "--prev-kv"]).await?, "OK\nkv/a\none\n");
    let last = first + 3;

    assert_eq!(ctl.ok(&["get", "kv/a"]).await?, "kv/a\nfour\n");
    assert_eq!(ctl.ok(&["get", "kv/missing"]).await?, "");
    // The overwritten value is still readable at its revision, where kv/b and kv/c did not exist.
    assert_eq!(ctl.ok(&["get", "kv/a", &format!("--rev={first}")]).await?, "kv/a\none\n");
    assert_eq!(ctl.ok(&["get", "kv/", "--prefix", &format!("--rev={first}")]).await?, "kv/a\none\n");
    assert_eq!(ctl.ok(&["get", "kv/", "--prefix"]).await?, "kv/a\nfour\nkv/b\ntwo\nkv/c\nthree\n");
    assert_eq!(
        ctl.ok(&["get", "kv/", "--prefix", "--limit=2", "--sort-by=KEY", "--order=DESCEND"]).await?,
        "kv/c\nthree\nkv/b\ntwo\n"
    );
    assert_eq!(
        ctl.ok(&["get", "kv/", "--prefix", "--limit=1", "--sort-by=MODIFY", "--order=DESCEND"]).await?,
        "kv/a\nfour\n"
    );
    assert_eq!(ctl.ok(&["get", "kv/", "--prefix", "--keys-only"]).await?, "kv/a\n\nkv/b\n\nkv/c\n\n");
    assert_eq!(ctl.ok(&["get", "kv/a", "--print-value-only"]).await?, "four\n");
    assert_eq!(ctl.ok(&["get", "kv/", "--prefix", "--print-value-only"]).await?, "four\ntwo\nthree\n");

    let json = ctl.json(&["get", "kv/a"]).await?;
    assert_eq!(json_kvs(&json)?, [("kv/a".to_owned(), "four".to_owned())]);
    let kv = &json["kvs"][0];
    assert_eq!(kv["create_revision"].as_i64(), Some(first), "{json}");
    assert_eq!(kv["mod_revision"].as_i64(), Some(last), "{json}");
    assert_eq!(kv["version"].as_i64(), Some(2), "{json}");
    assert_eq!(json["count"].as_i64(), Some(1), "{json}");
    assert_eq!(json_revision(&json)?, last, "{json}");

    let json = ctl.json(&["get", "kv/", "--prefix", "--limit=1"]).await?;
    assert_eq!(json_kvs(&json)?, [("kv/a".to_owned(), "four".to_owned())]);
    assert_eq!(json["count"].as_i64(), Some(3), "count ignores the limit: {json}");
    assert_eq!(json["more"].as_bool(), Some(true), "{json}");
    Ok(())
}

async fn delete(ctl: &Etcdctl) -> anyhow::Result<()> {
    assert_eq!(ctl.ok(&["del", "kv/a"]).await?, "1\n");
    assert_eq!(ctl.ok(&["del", "kv/a"]).await?, "0\n");
    assert_eq!(ctl.ok(&["del", "kv/b", "--prev-kv"]).await?, "1\nkv/b\ntwo\n");
    ctl.ok(&["put", "kv/d", "five"]).await?;
    assert_eq!(ctl.ok(&["del", "kv/", "--prefix"]).await?, "2\n");
    assert_eq!(ctl.ok(&["get", "kv/", "--prefix"]).await?, "");
    Ok(())
}

/// `etcdctl txn` reads compares, then success requests, then failure requests from stdin, each
/// list ended by an empty line; `-i` prompts for each list.
async fn txn(ctl: &Etcdctl) -> anyhow::Result<()> {
    let created = json_revision(&ctl.json(&["put", "t/k", "v1"]).await?)?;

    // Every compare holds: the success branch runs.
    let input = format!(
        "value(\"t/k\") = \"v1\"\nmod(\"t/k\") = \"{created}\"\ncreate(\"t/k\") = \"{created}\"\nversion(\"t/k\") = \"1\"\n\n\
         put t/k v2\nput t/other x\n\nput t/failed yes\n\n"
    );
    assert_eq!(
        ctl.ok_with_stdin(&["txn", "-i"], Some(&input)).await?,
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\nOK\n\nOK\n"
    );
    assert_eq!(ctl.ok(&["get", "t/", "--prefix"]).await?, "t/k\nv2\nt/other\nx\n");

    // A compare fails: the failure branch runs, and its get sees the state before the txn.
    let input = "value(\"t/k\") = \"v1\"\nversion(\"t/k\") > \"1\"\n\nput t/k v3\n\nget t/k\nput t/failed yes\n\n";
    assert_eq!(ctl.ok_with_stdin(&["txn"], Some(input)).await?, "FAILURE\n\nt/k\nv2\n\nOK\n");
    assert_eq!(ctl.ok(&["get", "t/", "--prefix"]).await?, "t/failed\nyes\nt/k\nv2\nt/other\nx\n");

    // Compares on a missing key, a delete in the success branch, and the JSON answer.
    let input = "version(\"t/missing\") = \"0\"\nvalue(\"t/other\") != \"y\"\n\ndel t/other\nget t/k\n\n\n";
    let stdout = ctl.ok_with_stdin(&["-w", "json", "txn"], Some(input)).await?;
    let json: serde_json::Value = serde_json::from_str(&stdout).with_context(|| format!("parse {stdout}"))?;
    assert_eq!(json["succeeded"].as_bool(), Some(true), "{json}");
    let responses = json["responses"].as_array().context("responses")?;
    assert_eq!(responses.len(), 2, "{json}");
    assert_eq!(responses[0]["Response"]["ResponseDeleteRange"]["deleted"].as_i64(), Some(1), "{json}");
    assert_eq!(json_kvs(&responses[1]["Response"]["ResponseRange"])?, [("t/k".to_owned(), "v2".to_owned())], "{json}");
    assert_eq!(ctl.ok(&["get", "t/other"]).await?, "");
    Ok(())
}

/// A watch started at an old revision replays history, then follows live changes; `--prefix`
/// filters other keys; `--prev-kv` prints the previous key-value before each event's own.
async fn watch(ctl: &Etcdctl) -> anyhow::Result<()> {
    let start = json_revision(&ctl.json(&["put", "w/a", "1"]).await?)?;
    ctl.ok(&["put", "w/a", "2"]).await?;
    ctl.ok(&["put", "elsewhere/a", "1"]).await?;

    let mut watcher = ctl.spawn(&["watch", "w/", "--prefix", &format!("--rev={start}"), "--prev-kv"])?;
    watcher.expect_lines(&["PUT", "w/a", "1"]).await.context("replay of the first put")?;
    watcher.expect_lines(&["PUT", "w/a", "1", "w/a", "2"]).await.context("replay of the overwrite")?;

    ctl.ok(&["put", "w/b", "3"]).await?;
    watcher.expect_lines(&["PUT", "w/b", "3"]).await.context("live put")?;
    assert_eq!(ctl.ok(&["del", "w/a"]).await?, "1\n");
    // A delete event's own key-value has the key and no value.
    watcher.expect_lines(&["DELETE", "w/a", "2", "w/a", ""]).await.context("live delete")?;
    ctl.ok(&["put", "elsewhere/b", "1"]).await?;
    ctl.ok(&["put", "w/c", "4"]).await?;
    // The next event is w/c: the change outside the prefix was not sent.
    watcher.expect_lines(&["PUT", "w/c", "4"]).await.context("put after a change outside the prefix")?;
    watcher.kill().await
}

async fn lease_grant(ctl: &Etcdctl, ttl_secs: u64) -> anyhow::Result<String> {
    let stdout = ctl.ok(&["lease", "grant", &ttl_secs.to_string()]).await?;
    let id = stdout.split_whitespace().nth(1).with_context(|| format!("no lease id in {stdout:?}"))?.to_owned();
    assert_eq!(stdout, format!("lease {id} granted with TTL({ttl_secs}s)\n"));
    Ok(id)
}

/// A 3 s lease kept alive by `etcdctl lease keep-alive` outlives its TTL with its keys; once
/// the keep-alive is killed, the lease expires and its keys are deleted.
async fn lease_keep_alive_and_expiry(ctl: &Etcdctl) -> anyhow::Result<()> {
    const TTL_SECS: u64 = 3;
    let ttl = Duration::from_secs(TTL_SECS);
    let id = lease_grant(ctl, TTL_SECS).await?;
    let granted = Instant::now();
    let mut keeper = ctl.spawn(&["lease", "keep-alive", &id])?;
    let keepalived = format!("lease {id} keepalived with TTL({TTL_SECS})");
    keeper.expect_lines(&[&keepalived]).await?;

    ctl.ok(&["put", "l/k1", "a", &format!("--lease={id}")]).await?;
    ctl.ok(&["put", "l/k2", "b", &format!("--lease={id}")]).await?;
    let list = ctl.ok(&["lease", "list"]).await?;
    let lines: Vec<&str> = list.lines().collect();
    ensure!(
        lines.first().is_some_and(|l| l.starts_with("found ")) && lines.contains(&id.as_str()),
        "lease list: {list}"
    );

    let json = ctl.json(&["lease", "timetolive", &id, "--keys"]).await?;
    assert_eq!(json["id"].as_i64(), Some(i64::from_str_radix(&id, 16)?), "{json}");
    assert_eq!(json["granted-ttl"].as_i64(), Some(TTL_SECS as i64), "{json}");
    let remaining = json["ttl"].as_i64().context("ttl")?;
    assert!((1..=TTL_SECS as i64).contains(&remaining), "remaining TTL {remaining}: {json}");
    let keys: Vec<String> = json["keys"]
        .as_array()
        .context("keys")?
        .iter()
        .map(|k| cairn_tests::b64_decode(k.as_str().unwrap_or_default()))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(keys, ["l/k1", "l/k2"], "{json}");
    let text = ctl.ok(&["lease", "timetolive", &id, "--keys"]).await?;
    ensure!(
        text.starts_with(&format!("lease {id} granted with TTL({TTL_SECS}s), remaining("))
            && text.ends_with("s), attached keys([l/k1 l/k2])\n"),
        "lease timetolive --keys: {text:?}"
    );

    // Keep-alive answers arrive about every TTL/3; read them until the lease is well past the
    // TTL it was granted with.
    while granted.elapsed() < ttl + Duration::from_secs(2) {
        assert_eq!(keeper.next_line().await?, keepalived);
    }
    assert_eq!(ctl.ok(&["get", "l/", "--prefix"]).await?, "l/k1\na\nl/k2\nb\n", "the kept-alive lease lost its keys");

    keeper.kill().await?;
    let killed = Instant::now();
    poll_until("the keys of the abandoned lease to be deleted", ttl + Duration::from_secs(5), || async {
        match ctl.ok(&["get", "l/", "--prefix", "--keys-only"]).await {
            Ok(out) if out.is_empty() => Ok(()),
            Ok(out) => Err(format!("still there: {out:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await?;
    eprintln!("lease keys deleted {:?} after the keep-alive was killed", killed.elapsed());
    assert_eq!(ctl.ok(&["lease", "timetolive", &id]).await?, format!("lease {id} already expired\n"));
    let list = ctl.ok(&["lease", "list"]).await?;
    ensure!(!list.lines().any(|l| l == id), "expired lease still listed: {list}");
    Ok(())
}

async fn lease_revoke(ctl: &Etcdctl) -> anyhow::Result<()> {
    let id = lease_grant(ctl, 60).await?;
    ctl.ok(&["put", "r/k", "x", &format!("--lease={id}")]).await?;
    assert_eq!(ctl.ok(&["lease", "keep-alive", "--once", &id]).await?, format!("lease {id} keepalived with TTL(60)\n"));
    assert_eq!(ctl.ok(&["lease", "revoke", &id]).await?, format!("lease {id} revoked\n"));
    assert_eq!(ctl.ok(&["get", "r/k"]).await?, "", "revoke must delete the attached keys");
    assert_eq!(ctl.ok(&["lease", "timetolive", &id]).await?, format!("lease {id} already expired\n"));
    let again = ctl.fails(&["lease", "revoke", &id]).await?;
    ensure!(again.stderr.contains("etcdserver: requested lease not found"), "second revoke: {again}");
    Ok(())
}

/// Number of keys under `prefix`: the `count` of a one-key range (etcdctl 3.4 has no
/// `--count-only`).
async fn count_keys(ctl: &Etcdctl, prefix: &str) -> anyhow::Result<i64> {
    let json = ctl.json(&["get", prefix, "--prefix", "--keys-only", "--limit=1"]).await?;
    // etcd omits a zero count from JSON.
    Ok(json["count"].as_i64().unwrap_or(0))
}

async fn wait_for_key_count(ctl: &Etcdctl, prefix: &str, expected: i64, what: &str) -> anyhow::Result<()> {
    poll_until(what, CONVERGE_TIMEOUT, || async {
        match count_keys(ctl, prefix).await {
            Ok(n) if n == expected => Ok(()),
            Ok(n) => Err(format!("{n} keys under {prefix}")),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await
}

/// `etcdctl lock NAME CMD` runs CMD while holding the lock; a second locker queues (its key
/// appears under NAME/) and runs only after the first releases. Ordering, not timing: the first
/// command holds the lock until the test creates a file.
async fn lock(ctl: &Etcdctl, dir: &Path) -> anyhow::Result<()> {
    let log = dir.join("lock.log");
    let release = dir.join("lock.release");
    let (log_s, release_s) = (log.display().to_string(), release.display().to_string());
    let first_script = format!(
        "echo first-start >> '{log_s}'; while [ ! -e '{release_s}' ]; do sleep 0.05; done; echo first-end >> '{log_s}'"
    );
    let second_script = format!("echo second-start >> '{log_s}'; echo second-end >> '{log_s}'");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut first = ctl.spawn(&["lock", "lk", "--", "sh", "-c", &first_script])?;
    poll_until("the first locker to run its command", CONVERGE_TIMEOUT, || async {
        let text = read_log();
        if text.is_empty() {
            Err("lock.log is empty".to_owned())
        } else {
            Ok(())
        }
    })
    .await?;
    let mut second = ctl.spawn(&["lock", "lk", "--", "sh", "-c", &second_script])?;
    wait_for_key_count(ctl, "lk/", 2, "the second locker to queue behind the first").await?;
    assert_eq!(read_log(), "first-start\n", "the second locker ran while the first held the lock");

    std::fs::write(&release, b"").context("create the release file")?;
    first.wait_success().await.context("first locker")?;
    second.wait_success().await.context("second locker")?;
    assert_eq!(read_log(), "first-start\nfirst-end\nsecond-start\nsecond-end\n");
    wait_for_key_count(ctl, "lk/", 0, "both lockers' keys to be released").await?;

    // Without a command, lock prints the lock key and holds it until interrupted.
    let mut holder = ctl.spawn(&["lock", "lk2"])?;
    let key = holder.next_line().await?;
    ensure!(key.starts_with("lk2/"), "lock key {key:?}");
    assert_eq!(count_keys(ctl, "lk2/").await?, 1);
    holder.signal(Signal::SIGINT)?;
    holder.wait_success().await?;
    wait_for_key_count(ctl, "lk2/", 0, "the interrupted locker's key to be released").await
}

/// `etcdctl elect NAME PROPOSAL` campaigns and prints the leader key and proposal once elected;
/// `elect -l NAME` prints each new leader. A second candidate takes over when the first is
/// interrupted (it resigns).
async fn elect(ctl: &Etcdctl) -> anyhow::Result<()> {
    let mut alice = ctl.spawn(&["elect", "el", "alice"])?;
    let alice_key = alice.next_line().await?;
    ensure!(alice_key.starts_with("el/"), "leader key {alice_key:?}");
    alice.expect_lines(&["alice"]).await?;

    let mut observer = ctl.spawn(&["elect", "-l", "el"])?;
    observer.expect_lines(&[&alice_key, "alice"]).await.context("observer sees alice")?;

    let mut bob = ctl.spawn(&["elect", "el", "bob"])?;
    wait_for_key_count(ctl, "el/", 2, "bob to campaign behind alice").await?;
    alice.signal(Signal::SIGINT)?;
    alice.wait_success().await.context("alice resigns")?;

    let bob_key = bob.next_line().await?;
    ensure!(bob_key.starts_with("el/") && bob_key != alice_key, "bob's leader key {bob_key:?} (alice's {alice_key:?})");
    bob.expect_lines(&["bob"]).await?;
    observer.expect_lines(&[&bob_key, "bob"]).await.context("observer sees bob")?;

    bob.signal(Signal::SIGINT)?;
    bob.wait_success().await.context("bob resigns")?;
    observer.kill().await?;
    wait_for_key_count(ctl, "el/", 0, "the candidates' keys to be released").await
}

/// `compact N` drops history before N: reads and watches below N fail with etcd's error, N
/// itself stays readable, and compacting N again is refused.
async fn compaction(ctl: &Etcdctl) -> anyhow::Result<()> {
    let first = json_revision(&ctl.json(&["put", "c/k", "v1"]).await?)?;
    let compact_at = json_revision(&ctl.json(&["put", "c/k", "v2"]).await?)?;
    ctl.ok(&["put", "c/k", "v3"]).await?;

    assert_eq!(ctl.ok(&["compact", &compact_at.to_string()]).await?, format!("compacted revision {compact_at}\n"));
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    let old = ctl.fails(&["get", "c/k", &format!("--rev={first}")]).await?;
    ensure!(old.stderr.contains(compacted), "get below the compaction: {old}");
    assert_eq!(ctl.ok(&["get", "c/k", &format!("--rev={compact_at}")]).await?, "c/k\nv2\n");
    assert_eq!(ctl.ok(&["get", "c/k"]).await?, "c/k\nv3\n");
    let again = ctl.fails(&["compact", &compact_at.to_string()]).await?;
    ensure!(again.stderr.contains(compacted), "compacting the same revision again: {again}");

    let watch = ctl.fails(&["watch", "c/k", &format!("--rev={first}")]).await?;
    ensure!(
        format!("{}{}", watch.stdout, watch.stderr).contains(&format!("watch was canceled ({compacted})")),
        "watch below the compaction: {watch}"
    );
    Ok(())
}
