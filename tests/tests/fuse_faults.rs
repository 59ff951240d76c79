//! Faults under a running application: while `cp` copies a large file into the mount, SIGKILL a
//! chunkserver, then the metaserver leader. The copy must succeed, and the file read back
//! through a fresh second mount must have the source's sha256.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_fs_client::dev::NodeRef;
use cairn_tests::{sh, AllowedError, FuseCluster, FuseOptions, NodeId, Signal};

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
