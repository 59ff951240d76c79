//! Multi-process tests of the metaserver's replicated namespace: three metaservers (and three
//! coordinators) started by the dev launcher, namespace operations through gRPC on every node,
//! then SIGKILL of the metaserver leader during a stream of creates and renames. Afterwards
//! every acknowledged operation is visible, all replicas hold the same namespace (digest), and
//! the restarted node catches up.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_fs_client::dev::Signal;
use cairn_proto::meta as pb;
use cairn_tests::limits::META_READY_TIMEOUT as READY_TIMEOUT;
use cairn_tests::meta::{root, MetaClient as Client, MetaCluster};
const ROOT: u64 = 1;
const ENOENT: u32 = 2;
const EEXIST: u32 = 17;
const ENOTEMPTY: u32 = 39;
const EACCES: u32 = 13;

/// ERROR lines these tests tolerate: openraft's reports of unreachable or slow peers (peers
/// start one by one, and one is killed on purpose).
const ALLOWED_ERRORS: &[&str] = &[" ERROR openraft::", "Unreachable node", "timeout after "];

fn user(uid: u32) -> Option<pb::Credentials> {
    Some(pb::Credentials { uid, gid: uid, groups: Vec::new() })
}

async fn mkdir(c: &mut Client, parent: u64, name: &str, mode: u32) -> anyhow::Result<pb::EntryResponse> {
    let r = pb::MkdirRequest { cred: root(), parent, name: name.into(), mode, ..Default::default() };
    Ok(c.mkdir(r).await?.into_inner())
}

async fn create(c: &mut Client, parent: u64, name: &str) -> Result<pb::CreateResponse, tonic::Status> {
    let r = pb::CreateRequest {
        cred: root(),
        parent,
        name: name.into(),
        mode: 0o644,
        exclusive: true,
        ..Default::default()
    };
    Ok(c.create(r).await?.into_inner())
}

async fn rename(c: &mut Client, parent: u64, from: &str, to: &str) -> Result<u32, tonic::Status> {
    let r = pb::RenameRequest {
        cred: root(),
        parent,
        name: from.into(),
        new_parent: parent,
        new_name: to.into(),
        ..Default::default()
    };
    Ok(c.rename(r).await?.into_inner().errno)
}

async fn lookup(c: &mut Client, parent: u64, name: &str) -> anyhow::Result<pb::AttrResponse> {
    let r = pb::LookupRequest { cred: root(), parent, name: name.into() };
    Ok(c.lookup(r).await?.into_inner())
}

async fn list(c: &mut Client, dir: u64) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut cookie = 0;
    loop {
        let r = pb::ReadDirRequest { cred: root(), ino: dir, cookie, limit: 100, plus: false };
        let page = c.read_dir(r).await?.into_inner();
        if page.errno != 0 {
            bail!("readdir {dir}: errno {}", page.errno);
        }
        for e in &page.entries {
            names.push(String::from_utf8(e.name.clone())?);
            cookie = e.cookie;
        }
        if page.eof {
            break;
        }
    }
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_over_grpc_on_every_node() -> anyhow::Result<()> {
    let cluster = MetaCluster::start("meta-basic").await?;
    let mut one = cluster.client(1)?;
    let mut two = cluster.client(2)?;
    let mut three = cluster.client(3)?;

    let stat = one.stat_fs(pb::StatFsRequest { cred: root() }).await?.into_inner();
    assert_eq!((stat.errno, stat.chunk_size_bytes, stat.replication_factor), (0, 64 << 20, 3));

    // A change on one node is visible at once on the others (linearizable reads).
    let dir = mkdir(&mut one, ROOT, "home", 0o755).await?;
    assert_eq!(dir.errno, 0);
    let home = dir.attr.context("attr")?.ino;
    assert_eq!(lookup(&mut two, ROOT, "home").await?.attr.context("attr")?.ino, home);
    assert_eq!(mkdir(&mut three, ROOT, "home", 0o755).await?.errno, EEXIST);
    let f = create(&mut two, home, "a.txt").await?;
    assert!(f.created && f.errno == 0);
    assert_eq!(create(&mut three, home, "a.txt").await?.errno, EEXIST);
    assert_eq!(rename(&mut three, home, "a.txt", "b.txt").await?, 0);
    assert_eq!(lookup(&mut one, home, "a.txt").await?.errno, ENOENT);
    assert_eq!(list(&mut one, home).await?, ["b.txt"]);
    let rmdir = pb::RemoveRequest { cred: root(), parent: ROOT, name: b"home".to_vec(), time: None };
    assert_eq!(two.rmdir(rmdir).await?.into_inner().errno, ENOTEMPTY);

    // Symlinks, xattrs, setattr with a client timestamp, permissions.
    let s = pb::SymlinkRequest {
        cred: root(),
        parent: home,
        name: b"link".to_vec(),
        target: b"b.txt".to_vec(),
        time: None,
    };
    let link = one.symlink(s).await?.into_inner().attr.context("symlink attr")?;
    let target = three.readlink(pb::ReadlinkRequest { cred: root(), ino: link.ino }).await?.into_inner();
    assert_eq!(target.target, b"b.txt");
    let file = lookup(&mut one, home, "b.txt").await?.attr.context("attr")?.ino;
    let set = pb::SetXattrRequest {
        cred: root(),
        ino: file,
        name: b"user.k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    assert_eq!(two.set_xattr(set).await?.into_inner().errno, 0);
    let got = three.get_xattr(pb::GetXattrRequest { cred: root(), ino: file, name: b"user.k".to_vec() }).await?;
    assert_eq!(got.into_inner().value, b"v");
    let when = pb::Timespec { sec: 1_700_000_000, nsec: 5 };
    let setattr =
        pb::SetAttrRequest { cred: root(), ino: file, time: Some(when), mode: Some(0o600), ..Default::default() };
    let attr = one.set_attr(setattr).await?.into_inner().attr.context("attr")?;
    assert_eq!((attr.mode & 0o7777, attr.ctime), (0o600, Some(when)));
    let open = pb::OpenRequest {
        cred: user(1000),
        ino: file,
        session: 7,
        open: Some(pb::OpenMode { read: true, ..Default::default() }),
        time: None,
    };
    assert_eq!(two.open(open).await?.into_inner().errno, EACCES);

    // A change sent again with the same request id (a retry after a lost answer, here on
    // another node) gets the first answer; a new request id is a new change.
    let session = one
        .open_session(pb::OpenSessionRequest {
            cred: root(),
            client_name: "test".into(),
            ttl_ms: 30_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(session.errno, 0);
    let numbered = |seq: u64| -> anyhow::Result<tonic::Request<pb::CreateRequest>> {
        let message = pb::CreateRequest {
            cred: root(),
            parent: home,
            name: b"once".to_vec(),
            mode: 0o644,
            exclusive: true,
            ..Default::default()
        };
        let mut request = tonic::Request::new(message);
        let id = format!("{}:{seq}:{seq}", session.session).parse()?;
        request.metadata_mut().insert(cairn_proto::META_REQUEST_HEADER, id);
        Ok(request)
    };
    let first = two.create(numbered(1)?).await?.into_inner();
    assert!(first.created && first.errno == 0, "{first:?}");
    let retried = three.create(numbered(1)?).await?.into_inner();
    assert_eq!((retried.errno, retried.created), (0, true), "the retry answers as the first attempt");
    assert_eq!(retried.attr.map(|a| a.ino), first.attr.map(|a| a.ino));
    assert_eq!(one.create(numbered(2)?).await?.into_inner().errno, EEXIST);

    // Followers name the leader's client address in every answer; the leader names nobody.
    let leader = cluster.leader(None).await?;
    let leader_addr = cluster.cluster.node(MetaCluster::ms(leader))?.addrs.client.to_string();
    for (id, client) in [(1, &mut one), (2, &mut two), (3, &mut three)] {
        let answer = client.stat_fs(pb::StatFsRequest { cred: root() }).await?;
        let hint = answer.metadata().get(cairn_proto::META_LEADER_HEADER).map(|v| v.to_str().map(str::to_owned));
        if id == leader {
            assert!(hint.is_none(), "the leader answered with a leader hint: {hint:?}");
        } else {
            assert_eq!(hint.transpose()?.as_deref(), Some(leader_addr.as_str()), "hint from follower {id}");
        }
    }

    cluster.converged_digest().await?;
    cluster.finish(ALLOWED_ERRORS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_during_creates_and_renames_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = MetaCluster::start("meta-kill").await?;
    let leader = cluster.leader(None).await?;
    let followers: Vec<u64> = cluster.cluster.metaserver_ids().iter().map(|n| n.0).filter(|&n| n != leader).collect();
    eprintln!("metaserver leader {leader}, followers {followers:?}");
    let mut c = cluster.client(followers[0])?;
    let stream_dir = mkdir(&mut c, ROOT, "stream", 0o755).await?.attr.context("attr")?.ino;

    // Writers on the followers (the leader is about to die): create f<i>; every third file is
    // then renamed to r<i>. An ambiguous answer (timeout, unavailable) is retried until the
    // outcome is known; an EEXIST/ENOENT on a retry means the first attempt was applied.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, &node) in followers.iter().enumerate() {
        let mut c = cluster.client(node)?;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut present: BTreeSet<String> = BTreeSet::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-f{i}");
                let mut retried = false;
                loop {
                    match create(&mut c, stream_dir, &name).await {
                        Ok(r) if r.errno == 0 => break,
                        Ok(r) if r.errno == EEXIST && retried => break,
                        Ok(r) => anyhow::bail!("create {name}: errno {}", r.errno),
                        Err(_) => {
                            retried = true;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                present.insert(name.clone());
                if i.is_multiple_of(3) {
                    let new = format!("w{w}-r{i}");
                    let mut retried = false;
                    loop {
                        match rename(&mut c, stream_dir, &name, &new).await {
                            Ok(0) => break,
                            Ok(ENOENT) if retried => break,
                            Ok(e) => anyhow::bail!("rename {name}: errno {e}"),
                            Err(_) => {
                                retried = true;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    present.remove(&name);
                    present.insert(new);
                }
                i += 1;
            }
            Ok(present)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.cluster.kill(MetaCluster::ms(leader), Signal::SIGKILL)?;
    let started = Instant::now();
    let new_leader = cluster.leader(Some(leader)).await?;
    eprintln!("new leader {new_leader} after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected = BTreeSet::new();
    for writer in writers {
        expected.extend(writer.await??);
    }
    assert!(expected.len() > 10, "the stream made progress: {} entries", expected.len());

    // Every acknowledged operation is there, and nothing else.
    let mut c = cluster.client(new_leader)?;
    let listed: BTreeSet<String> = list(&mut c, stream_dir).await?.into_iter().collect();
    assert_eq!(listed, expected, "the directory holds exactly the acknowledged results");

    // The killed node restarts and catches up; all three agree.
    cluster.cluster.restart(MetaCluster::ms(leader)).await?;
    cluster.cluster.wait_node_ready(MetaCluster::ms(leader), READY_TIMEOUT).await?;
    cluster.converged_digest().await?;
    let mut back = cluster.client(leader)?;
    let relisted: BTreeSet<String> = list(&mut back, stream_dir).await?.into_iter().collect();
    assert_eq!(relisted, expected);
    eprintln!("{} entries survived the leader kill", expected.len());
    cluster.finish(ALLOWED_ERRORS)
}
