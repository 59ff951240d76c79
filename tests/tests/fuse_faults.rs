//! Faults under a running application: while `cp` copies a large file into the mount, SIGKILL a
//! chunkserver, then the metaserver leader. The copy must succeed, and the file read back
//! through a fresh second mount must have the source's sha256. And a writer that keeps its file
//! open (a log, a database) while one of its chunk's replicas dies: the metaserver heals the
//! chunk while the file is open, and the writer goes on appending and fsyncing through it. And
//! chunkservers out of space: the writer gets ENOSPC, nothing already written is lost, and a
//! delete makes room again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::io::{BufRead as _, BufReader};

use anyhow::{bail, ensure, Context as _};
use cairn_fs_client::dev::NodeRef;
use cairn_proto::meta as pb;
use cairn_tests::meta::{meta_client, root};
use cairn_tests::{poll_until, sh, AllowedError, FuseCluster, FuseOptions, NodeId, Signal};

/// Size of the copied file: several 64 MiB chunks, long enough to inject two faults mid-copy.
const FILE_MIB: u64 = 300;
/// Fault points, as bytes of the destination seen so far (or time since the copy started,
/// whichever comes first: the client may hold written data in its buffers).
const FIRST_FAULT_BYTES: u64 = 60 << 20;
const SECOND_FAULT_BYTES: u64 = 150 << 20;
const FAULT_AFTER: Duration = Duration::from_secs(4);
/// Deadline for the whole copy, faults and failovers included.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);

/// ERROR lines a killed chunkserver and a killed metaserver leader cause in the survivors and the
/// client; each is a report of the fault being handled.
const ALLOWED: &[AllowedError] = &[
    AllowedError::fixed("connection refused", "peers and the client reach the killed servers until they notice"),
    AllowedError::fixed("Connection refused", "peers and the client reach the killed servers until they notice"),
    AllowedError::fixed("transport error", "gRPC reports broken connections to killed servers"),
];

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_survives_chunkserver_and_metaserver_leader_kills() -> anyhow::Result<()> {
    let options = FuseOptions { heartbeat_interval: "50ms", election_timeout: "500ms", ..FuseOptions::default() };
    let mut cluster = FuseCluster::start_with("fuse-faults", options).await?;
    let mnt = cluster.mnt();
    let local = cluster.scratch("local")?;
    let src = local.join("big");
    sh(&local, &format!("head -c {FILE_MIB}M /dev/urandom > big"))?;
    let expected = sh(&local, "sha256sum < big")?.stdout;
    let dst = mnt.join("big");

    let started = Instant::now();
    let mut cp = Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start cp")?;

    let chunkserver = NodeRef::chunkserver(NodeId(2));
    let mut faults: Vec<String> = Vec::new();
    let mut phase_started = Instant::now();
    let status = loop {
        if let Some(status) = cp.try_wait().context("poll cp")? {
            break status;
        }
        if started.elapsed() > COPY_TIMEOUT {
            let _ = cp.kill();
            let _ = cp.wait();
            bail!("cp did not finish within {COPY_TIMEOUT:?} (faults: {faults:?}); dst size {}", size_of(&dst));
        }
        let copied = size_of(&dst);
        let due = phase_started.elapsed() >= FAULT_AFTER;
        match faults.len() {
            0 if copied >= FIRST_FAULT_BYTES || due => {
                cluster.kill(chunkserver, Signal::SIGKILL)?;
                faults.push(format!("SIGKILL {chunkserver} at {} MiB, {:.1?}", copied >> 20, started.elapsed()));
                eprintln!("{}", faults.last().map(String::as_str).unwrap_or_default());
                phase_started = Instant::now();
            }
            1 if copied >= SECOND_FAULT_BYTES || due => {
                let leader = cluster.metaserver_leader(None).await?;
                cluster.kill(NodeRef::metaserver(leader), Signal::SIGKILL)?;
                faults.push(format!(
                    "SIGKILL metaserver-{leader} (leader) at {} MiB, {:.1?}",
                    copied >> 20,
                    started.elapsed()
                ));
                eprintln!("{}", faults.last().map(String::as_str).unwrap_or_default());
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = cp.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    eprintln!("cp finished after {:.1?}: {status} {stderr}", started.elapsed());
    if !status.success() {
        bail!("cp failed ({status}) with faults {faults:?}: {stderr}");
    }
    if faults.len() < 2 {
        bail!("the copy finished before both faults were injected ({faults:?}); make FILE_MIB larger");
    }
    let new_leader = cluster.metaserver_leader(None).await?;
    eprintln!("metaserver leader now {new_leader}");

    // Read back through a fresh mount (no page cache shared with the writer), and through the
    // writer's mount.
    let verify = cluster.add_mount("verify", &["allow_other".to_owned()]).await?;
    for path in [verify.join("big"), dst.clone()] {
        let got = sh(&local, &format!("sha256sum < '{}'", path.display()))?.stdout;
        if got != expected {
            bail!("sha256 of {} is {got:?}, expected {expected:?} (faults: {faults:?})", path.display());
        }
    }
    let size = size_of(&verify.join("big"));
    if size != FILE_MIB << 20 {
        bail!("size {size}, expected {}", FILE_MIB << 20);
    }
    cluster.finish(ALLOWED)
}

/// How long the chunk of an open file may take to be healed: the dead chunkserver's lease must
/// expire first, then a healing round must copy the chunk.
const HEAL_TIMEOUT: Duration = Duration::from_secs(120);
const META_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A python3 writer that keeps `path` open: writes and fsyncs `FIRST` bytes, says `ready`, then
/// appends and fsyncs 64 KiB every 50 ms until its stdin closes; then closes the file and
/// prints the sha256 and length of everything it wrote. Any error ends it with a traceback.
const OPEN_WRITER: &str = r#"
import hashlib, os, select, sys
path = sys.argv[1]
h = hashlib.sha256()
total = 0
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
def put(n):
    global total
    data = os.urandom(n)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    h.update(data)
    total += n
put(3 << 20)
print("ready", flush=True)
while True:
    readable, _, _ = select.select([sys.stdin], [], [], 0.05)
    if readable and not sys.stdin.readline():
        break
    put(64 << 10)
os.close(fd)
print(h.hexdigest(), total, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_writer_survives_healing_of_its_chunk() -> anyhow::Result<()> {
    let options = FuseOptions { chunkservers: 4, ..FuseOptions::default() };
    let mut cluster = FuseCluster::start_with("fuse-open-writer", options).await?;
    let path = cluster.mnt().join("log");
    let mut writer = Command::new("python3")
        .args(["-c", OPEN_WRITER])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the python3 writer")?;
    let mut lines = BufReader::new(writer.stdout.take().context("writer stdout")?).lines();
    let ready = lines.next().transpose().context("read the writer")?;
    ensure!(ready.as_deref() == Some("ready"), "the writer said {ready:?}");

    // Kill a chunkserver that holds chunk 0 of the open file.
    let meta_addr = cluster.node(NodeRef::metaserver(NodeId(1)))?.addrs.client.to_string();
    let mut meta = meta_client(&meta_addr, META_RPC_TIMEOUT)?;
    let looked = meta.lookup(pb::LookupRequest { cred: root(), parent: 1, name: b"log".to_vec() }).await?.into_inner();
    let ino = looked.attr.context("the file's attributes")?.ino;
    let chunks =
        meta.get_chunks(pb::GetChunksRequest { cred: root(), ino, first_index: 0, count: 1 }).await?.into_inner();
    let chunk = chunks.chunks.first().context("chunk 0")?.clone();
    let mut victim = None;
    for id in 1..=4 {
        let node = NodeRef::chunkserver(NodeId(id));
        let address = cluster.node(node)?.addrs.client.to_string();
        if chunk.replicas.iter().any(|r| r.address == address) {
            victim = Some(node);
            break;
        }
    }
    let victim = victim.context("a chunkserver holding chunk 0")?;
    let victim_address = cluster.node(victim)?.addrs.client.to_string();
    eprintln!("SIGKILL {victim}, a replica of chunk {} (version {})", chunk.chunk_id, chunk.version);
    cluster.kill(victim, Signal::SIGKILL)?;

    // Healed while the writer keeps the file open and appends.
    let healed = poll_until("chunk 0 healed while its file is open", HEAL_TIMEOUT, || {
        let mut meta = meta.clone();
        let victim_address = victim_address.clone();
        async move {
            let r = meta
                .get_chunks(pb::GetChunksRequest { cred: root(), ino, first_index: 0, count: 1 })
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            let c = r.chunks.first().cloned().ok_or("no chunk 0")?;
            let fsck = meta.fsck(pb::FsckRequest { limit: 10 }).await.map_err(|s| s.to_string())?.into_inner();
            let registered = fsck.chunkservers.iter().any(|s| s.address == victim_address);
            let listed = c.replicas.iter().any(|r| r.address == victim_address);
            if registered || listed || c.replicas.len() < 3 || fsck.under_replicated_count > 0 {
                return Err(format!("victim registered {registered}, listed {listed}; chunk 0 {c:?}; fsck {fsck:?}"));
            }
            Ok(c)
        }
    })
    .await?;
    ensure!(healed.version > chunk.version, "the healed chunk's version {} (was {})", healed.version, chunk.version);
    if let Some(status) = writer.try_wait().context("poll the writer")? {
        bail!("the writer ended before healing finished: {status}");
    }
    eprintln!("chunk 0 healed at version {} while open; the writer goes on", healed.version);
    tokio::time::sleep(Duration::from_secs(1)).await;

    drop(writer.stdin.take());
    let summary = lines.next().transpose().context("read the writer's summary")?.unwrap_or_default();
    let status = writer.wait().context("reap the writer")?;
    ensure!(status.success(), "the writer failed ({status}): {summary:?}");
    let mut fields = summary.split_whitespace();
    let (sha, len) = (fields.next().unwrap_or_default().to_owned(), fields.next().unwrap_or_default().to_owned());
    let verify = cluster.add_mount("verify", &["allow_other".to_owned()]).await?;
    let local = cluster.scratch("local")?;
    let got = sh(
        &local,
        &format!("sha256sum < '{}'; stat -c %s '{}'", verify.join("log").display(), verify.join("log").display()),
    )?
    .stdout;
    ensure!(
        got.split_whitespace().collect::<Vec<_>>() == [sha.as_str(), "-", len.as_str()],
        "read back {got:?}, the writer wrote {summary:?}"
    );
    cluster.finish(ALLOWED)
}

/// Chunkserver capacity in the full-disk test: room for the kept file and part of the big one.
const FULL_CAPACITY: &str = "96MiB";

/// A python3 writer of `argv[2]` MiB of random data to `argv[1]`, fsynced and closed; prints
/// `ok` or the name of the first errno it met (from write, fsync or close) and the MiB written.
const FILL_WRITER: &str = r#"
import errno, os, sys
path, mib = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
done, failure = 0, None
try:
    for _ in range(mib):
        os.write(fd, os.urandom(1 << 20))
        done += 1
    os.fsync(fd)
except OSError as e:
    failure = e
try:
    os.close(fd)
except OSError as e:
    failure = failure or e
print(errno.errorcode[failure.errno] if failure else "ok", done, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_chunkservers_answer_enospc_and_lose_nothing() -> anyhow::Result<()> {
    let options = FuseOptions {
        chunkserver_args: ["--capacity", FULL_CAPACITY].iter().map(Into::into).collect(),
        ..FuseOptions::default()
    };
    let mut cluster = FuseCluster::start_with("fuse-full", options).await?;
    let mnt = cluster.mnt();
    let fill = |name: &str, mib: u64| {
        let out = Command::new("python3")
            .args(["-c", FILL_WRITER])
            .arg(mnt.join(name))
            .arg(mib.to_string())
            .output()
            .context("run the python3 writer")?;
        ensure!(out.status.success(), "the writer failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    ensure!(fill("kept", 32)? == "ok 32", "a 32 MiB file fits in {FULL_CAPACITY}");
    let kept = sh(&mnt, "sha256sum < kept")?.stdout;

    // A file larger than what is left: the application sees ENOSPC, as from a local disk.
    let big = fill("big", 200)?;
    ensure!(big.starts_with("ENOSPC "), "writing 200 MiB into {FULL_CAPACITY} chunkservers: {big}");
    eprintln!("the 200 MiB writer got {big}");
    ensure!(sh(&mnt, "sha256sum < kept")?.stdout == kept, "the kept file changed");
    // The operator learns why from the logs (the client only sees ENOSPC): a chunkserver
    // refused the chain write, or — when its registry figure was already fresh — the metaserver
    // found no server with room for the next chunk.
    let logs = sh(&cluster.dir().join("logs"), "cat chunkserver-*.log metaserver-*.log")?.stdout;
    ensure!(
        logs.contains("refusing writes: out of space")
            || logs.contains("too few live chunkservers with a chunk's worth of free space"),
        "no server logged why writes were refused"
    );
    // And from fsck: every server is full (96 MiB: 32 kept, 64 in the big file's first chunk).
    let meta_addr = cluster.node(NodeRef::metaserver(NodeId(1)))?.addrs.client.to_string();
    let meta = meta_client(&meta_addr, META_RPC_TIMEOUT)?;
    poll_until("fsck to show every chunkserver without room", Duration::from_secs(30), || {
        let mut meta = meta.clone();
        async move {
            let r = meta.fsck(pb::FsckRequest { limit: 1 }).await.map_err(|s| s.to_string())?.into_inner();
            let full = r.space.iter().filter(|s| s.free_bytes < r.chunk_size_bytes).count();
            if r.space.len() == 3 && full == 3 {
                Ok(())
            } else {
                Err(format!("{full} of {} full: {:?}", r.space.len(), r.space))
            }
        }
    })
    .await?;

    // Deleting frees the space once the chunkservers have dropped the chunks: writing fits again.
    sh(&mnt, "rm big")?;
    poll_until("a 32 MiB write to fit after the delete", Duration::from_secs(60), || async {
        match fill("again", 32) {
            Ok(out) if out == "ok 32" => Ok(()),
            Ok(out) => Err(out),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await?;
    ensure!(sh(&mnt, "sha256sum < kept")?.stdout == kept, "the kept file changed after the delete");
    let verify = cluster.add_mount("verify", &["allow_other".to_owned()]).await?;
    ensure!(sh(&verify, "sha256sum < kept")?.stdout == kept, "the kept file reads differently on a fresh mount");
    cluster.finish(&[])
}
