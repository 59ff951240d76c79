//! Multi-process tests of metaserver sessions and file locks: three metaservers (and three
//! coordinators) started by the dev launcher.
//!
//! - A client that stops heartbeating loses its locks within the lease TTL (the leader proposes
//!   the expiry); another client then gets them, with a larger fencing token.
//! - A blocking F_SETLKW waiter (on a follower) is granted when the holder unlocks; a waiter
//!   whose call is cancelled leaves nothing queued and never gets the lock.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use cairn_proto::meta as pb;
use cairn_tests::limits::META_CONVERGE_TIMEOUT as CONVERGE_TIMEOUT;
use cairn_tests::meta::{root, MetaClient as Client, MetaCluster};
use cairn_tests::poll_until;
const ROOT: u64 = 1;
const EAGAIN: u32 = 11;
const EBADF: u32 = 9;
/// The session TTL the expiring client asks for (the server's minimum).
const TTL: Duration = Duration::from_secs(2);
/// Slack over the TTL for the leader's check interval (200 ms), the expiry's commit and the
/// retry loop below.
const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

const ALLOWED_ERRORS: &[&str] = &[" ERROR openraft::", "Unreachable node", "timeout after "];

async fn open_session(c: &mut Client, name: &str, ttl: Duration) -> anyhow::Result<(u64, u64)> {
    let r = pb::OpenSessionRequest {
        cred: root(),
        client_name: name.into(),
        host: "test".into(),
        pid: std::process::id(),
        ttl_ms: ttl.as_millis() as u64,
        time: None,
    };
    let r = c.open_session(r).await?.into_inner();
    ensure!(r.errno == 0 && r.session != 0, "open session: {r:?}");
    Ok((r.session, r.ttl_ms))
}

/// Heartbeats `session` every `period` until the task is aborted.
fn keep_alive(mut c: Client, session: u64, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match c.heartbeat(pb::HeartbeatRequest { session }).await {
                Ok(r) if r.get_ref().errno != 0 => {
                    eprintln!("session {session}: heartbeat errno {}", r.get_ref().errno);
                    return;
                }
                Ok(_) => {}
                Err(e) => eprintln!("session {session}: heartbeat failed: {e}"),
            }
            tokio::time::sleep(period).await;
        }
    })
}

async fn create_open(c: &mut Client, name: &str, session: u64) -> anyhow::Result<u64> {
    let r = pb::CreateRequest {
        cred: root(),
        parent: ROOT,
        name: name.into(),
        mode: 0o644,
        session,
        open: Some(pb::OpenMode { read: true, write: true, ..Default::default() }),
        ..Default::default()
    };
    let r = c.create(r).await?.into_inner();
    ensure!(r.errno == 0, "create {name}: errno {}", r.errno);
    Ok(r.attr.context("attr")?.ino)
}

async fn open(c: &mut Client, ino: u64, session: u64) -> anyhow::Result<()> {
    let r = pb::OpenRequest {
        cred: root(),
        ino,
        session,
        open: Some(pb::OpenMode { read: true, write: true, ..Default::default() }),
        time: None,
    };
    let errno = c.open(r).await?.into_inner().errno;
    ensure!(errno == 0, "open {ino}: errno {errno}");
    Ok(())
}

fn setlk(ino: u64, session: u64, owner: u64, kind: pb::LockType, wait: bool) -> pb::SetLockRequest {
    pb::SetLockRequest {
        cred: root(),
        ino,
        session,
        owner,
        pid: owner as u32,
        r#type: kind as i32,
        start: 0,
        len: 0,
        wait,
        time: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_and_locks_across_the_cluster() -> anyhow::Result<()> {
    let cluster = MetaCluster::start("meta-sessions").await?;
    let leader = cluster.leader(None).await?;
    let follower = cluster.cluster.metaserver_ids().iter().map(|n| n.0).find(|&n| n != leader).context("follower")?;
    eprintln!("metaserver leader {leader}, follower {follower}");
    let mut a = cluster.client(follower)?;
    let mut b = cluster.client(leader)?;

    // --- Expiry: A locks, stops heartbeating, and loses the lock within its TTL. ---
    let (sa, ttl_ms) = open_session(&mut a, "client-a", TTL).await?;
    assert_eq!(ttl_ms, TTL.as_millis() as u64);
    let (sb, _) = open_session(&mut b, "client-b", Duration::from_secs(20)).await?;
    let b_alive = keep_alive(cluster.client(leader)?, sb, Duration::from_secs(2));
    let file = create_open(&mut a, "locked", sa).await?;
    open(&mut b, file, sb).await?;

    let a_alive = keep_alive(cluster.client(follower)?, sa, Duration::from_millis(500));
    let granted = a.set_lock(setlk(file, sa, 1, pb::LockType::Exclusive, false)).await?.into_inner();
    ensure!(granted.errno == 0, "A's lock: {granted:?}");
    let token_a = granted.fencing_token;
    // While A heartbeats (for longer than its TTL), B is refused and sees A as the holder.
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    let refused = b.set_lock(setlk(file, sb, 7, pb::LockType::Exclusive, false)).await?.into_inner();
    assert_eq!(refused.errno, EAGAIN, "A still holds the lock");
    let getlk = pb::GetLockRequest {
        cred: root(),
        ino: file,
        session: sb,
        owner: 7,
        r#type: pb::LockType::Shared as i32,
        start: 10,
        len: 1,
    };
    let conflict = b.get_lock(getlk.clone()).await?.into_inner().conflict.context("conflict")?;
    assert_eq!((conflict.session, conflict.owner, conflict.pid, conflict.len), (sa, 1, 1, 0));

    a_alive.abort();
    let stopped = Instant::now();
    let token_b = poll_until("B gets the lock after A's lease expires", CONVERGE_TIMEOUT, || async {
        let mut b = b.clone();
        match b.set_lock(setlk(file, sb, 7, pb::LockType::Exclusive, false)).await {
            Ok(r) if r.get_ref().errno == 0 => Ok(r.get_ref().fencing_token),
            Ok(r) => Err(format!("errno {}", r.get_ref().errno)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    let took = stopped.elapsed();
    eprintln!("lock moved to B {took:?} after A's last heartbeat stopped");
    ensure!(took <= TTL + EXPIRY_SLACK, "A kept its lock for {took:?}, TTL {TTL:?}");
    ensure!(token_b > token_a, "fencing token {token_b} after {token_a}");
    let hb = a.heartbeat(pb::HeartbeatRequest { session: sa }).await?.into_inner();
    assert_eq!(hb.errno, EBADF, "A's session is gone");
    let late = a.set_lock(setlk(file, sa, 1, pb::LockType::Shared, false)).await?.into_inner();
    assert_eq!(late.errno, EBADF, "an expired session locks nothing");
    let attr = b.get_attr(pb::GetAttrRequest { cred: root(), ino: file }).await?.into_inner().attr.context("attr")?;
    assert_eq!(attr.open_handles, 1, "A's handle was closed by the expiry");

    // --- Blocking: C waits (F_SETLKW, on a follower) until B unlocks. ---
    let mut c = cluster.client_with(follower, Duration::from_secs(60))?;
    let (sc, _) = open_session(&mut c, "client-c", Duration::from_secs(20)).await?;
    let c_alive = keep_alive(cluster.client(follower)?, sc, Duration::from_secs(2));
    open(&mut c, file, sc).await?;
    let mut waiter_client = c.clone();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let r = waiter_client.set_lock(setlk(file, sc, 3, pb::LockType::Shared, true)).await;
        (r.map(|r| r.into_inner()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    ensure!(!waiter.is_finished(), "the waiter must block while B holds the lock");
    let unlocked = b.set_lock(setlk(file, sb, 7, pb::LockType::Unlock, false)).await?.into_inner();
    assert_eq!(unlocked.errno, 0);
    let (result, waited) = tokio::time::timeout(Duration::from_secs(10), waiter).await.context("waiter answers")??;
    let result = result?;
    ensure!(result.errno == 0, "the waiter is granted: {result:?}");
    ensure!(result.fencing_token > token_b, "waiter token {} after {token_b}", result.fencing_token);
    eprintln!("blocked waiter granted after {waited:?}");

    // --- Cancellation: D waits behind C's shared lock, and gives up. ---
    let d_client = cluster.client_with(leader, Duration::from_millis(700))?;
    let mut d = d_client.clone();
    let (sd, _) = open_session(&mut d, "client-d", Duration::from_secs(20)).await?;
    let d_alive = keep_alive(cluster.client(leader)?, sd, Duration::from_secs(2));
    open(&mut d, file, sd).await?;
    let cancelled = d.set_lock(setlk(file, sd, 4, pb::LockType::Exclusive, true)).await;
    let status = cancelled.err().context("the waiter's call must end at its deadline")?;
    eprintln!("cancelled waiter ended with {:?}", status.code());
    // C unlocks; the cancelled waiter must not take the lock behind our back.
    let unlocked = c.set_lock(setlk(file, sc, 3, pb::LockType::Unlock, false)).await?.into_inner();
    assert_eq!(unlocked.errno, 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let free = b.get_lock(pb::GetLockRequest { r#type: pb::LockType::Exclusive as i32, ..getlk }).await?.into_inner();
    assert_eq!((free.errno, free.conflict), (0, None), "nothing was left queued for the cancelled waiter");

    // Closing a session releases its locks at once.
    let flock = pb::FlockRequest {
        cred: root(),
        ino: file,
        session: sc,
        owner: 5,
        pid: 5,
        r#type: pb::LockType::Exclusive as i32,
        wait: false,
        time: None,
    };
    assert_eq!(c.flock(flock.clone()).await?.into_inner().errno, 0);
    let other = pb::FlockRequest { session: sb, owner: 8, ..flock };
    assert_eq!(b.flock(other.clone()).await?.into_inner().errno, EAGAIN);
    let closed = c.close_session(pb::CloseSessionRequest { cred: root(), session: sc, time: None }).await?;
    assert_eq!(closed.into_inner().errno, 0);
    assert_eq!(b.flock(other).await?.into_inner().errno, 0, "C's flock went with its session");

    for task in [b_alive, c_alive, d_alive] {
        task.abort();
    }
    cluster.finish(ALLOWED_ERRORS)
}
