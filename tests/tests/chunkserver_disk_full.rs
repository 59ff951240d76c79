//! A chunkserver whose disk fills up under it: writes fail with RESOURCE_EXHAUSTED naming the
//! full replica (never an internal error, never a half-written chunk reported as written), its
//! acknowledged data stays readable, and once space is freed it takes writes again without a
//! restart.
//!
//! Chunkserver-3's data directory is a small tmpfs (mounting it needs root, as the FUSE tests do), and a
//! filler file eats its free space right after a write: within the chunkserver's one-second
//! cache of the free-space figure, its own check lets the next write through and RocksDB itself
//! hits ENOSPC — the case of another process filling a shared disk. RocksDB then refuses every
//! write until it has recovered.

mod chunkserver_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cairn_chunkserver::client::{failed_replica, ChunkClient};
use cairn_fs_client::dev::Signal;
use cairn_proto::chunk::WriteHeader;
use chunkserver_common::{assert_truthful_prefix, cs, poll, random_bytes, ChunkCluster, MIB};
use tonic::Code;

/// Big enough for RocksDB's recovery, which waits for one memtable (64 MiB) of free space
/// beside what the test stores.
const TMPFS_BYTES: usize = 384 * MIB;
/// Free space the filler leaves: less than the write that follows it.
const LEFT_FREE_BYTES: u64 = 24 * MIB as u64;
/// RocksDB re-checks the free space every 5 s before it resumes writes.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A tmpfs mounted over a directory, lazily unmounted when dropped (the chunkserver on it may
/// still be running when a failed test unwinds).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_bytes: usize) -> anyhow::Result<Tmpfs> {
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"]).arg(dir))?;
        Ok(Tmpfs(dir.to_owned()))
    }

    fn available_bytes(&self) -> anyhow::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.0)?;
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg("-l").arg(&self.0)) {
            eprintln!("unmount {}: {e:#}", self.0.display());
        }
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn header(chunk_id: u64, chain: Vec<String>) -> WriteHeader {
    WriteHeader { chunk_id, version: 1, create: true, chunk_size_bytes: 0, chain, sync: true, stream_bytes: 0 }
}

async fn read_all(client: &ChunkClient, chunk: u64) -> anyhow::Result<Vec<u8>> {
    Ok(client.read(chunk, 1, 0, 64 * MIB as u64).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_clearly_and_recovers_without_restart() -> anyhow::Result<()> {
    // A small reserve, so that the disk, not the reserve, is what runs out.
    let mut cluster = ChunkCluster::start("cs-full", &["--disk-reserve", "1MiB", "--scrub-rate", "0"]).await?;
    cluster.cluster.kill(cs(3), Signal::SIGKILL)?;
    let tmpfs = Tmpfs::mount(&cluster.data_dir(3), TMPFS_BYTES)?;
    cluster.cluster.restart(cs(3)).await?;
    cluster.cluster.wait_node_ready(cs(3), Duration::from_secs(30)).await?;
    cluster.wait_registered(&[1, 2, 3]).await?;

    let primary = cluster.client(1);
    let full = cluster.client(3);
    let chain = vec![cluster.addr(3)];

    // Acknowledged on both replicas before the disk fills.
    let acknowledged = random_bytes(8 * MIB + 99, 21);
    assert_eq!(primary.write(header(1, chain.clone()), 0, &acknowledged, MIB).await?.replicas, 2);

    // Another process takes the disk: the filler leaves less than the next write needs.
    let filler = cluster.data_dir(3).join("filler");
    let filler_bytes = tmpfs.available_bytes()?.saturating_sub(LEFT_FREE_BYTES);
    run(Command::new("fallocate").arg("-l").arg(filler_bytes.to_string()).arg(&filler))?;

    let source = random_bytes(48 * MIB, 22);
    let err = primary.write(header(2, chain.clone()), 0, &source, MIB).await.expect_err("the tail's disk is full");
    let err = err.status().context("a gRPC status")?.clone();
    eprintln!("write through the chain to the full replica: {err:?}");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(failed_replica(&err), Some(cluster.addr(3)), "the error names the full replica: {err:?}");
    if err.message().contains("No space left on device") {
        eprintln!("RocksDB itself hit ENOSPC (the path this test aims at)");
    } else {
        eprintln!("the chunkserver's own free-space check refused the write first");
    }

    // Directly to the full replica: refused, with the reason.
    let err = full.write(header(3, vec![]), 0, &random_bytes(4 * MIB, 23), MIB).await.expect_err("disk full");
    let err = err.status().context("a gRPC status")?.clone();
    eprintln!("direct write to the full replica: {err:?}");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("space") || err.message().contains("disk full"), "{err:?}");

    // Nothing acknowledged is lost and nothing unacknowledged is claimed, even while full.
    assert!(read_all(&full, 1).await? == acknowledged, "the full replica lost acknowledged data");
    assert_truthful_prefix(&cluster, &[1, 3], 2, &source).await?;

    // Space comes back: writes resume without a restart.
    std::fs::remove_file(&filler)?;
    let after = random_bytes(2 * MIB + 7, 24);
    poll("writes after the disk was freed", RECOVERY_TIMEOUT, || async {
        match primary.write(header(4, chain.clone()), 0, &after, MIB).await {
            Ok(response) if response.replicas == 2 => Ok(()),
            Ok(response) => Err(format!("{} replicas", response.replicas)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    assert!(read_all(&full, 4).await? == after, "the recovered replica returns other bytes");
    assert!(read_all(&full, 1).await? == acknowledged, "the recovered replica lost acknowledged data");
    assert_eq!(full.write(header(5, vec![]), 0, &source, MIB).await?.replicas, 1);
    assert!(read_all(&full, 5).await? == source);

    // The tmpfs goes before the cluster directory is removed (a mount point cannot be).
    cluster.cluster.kill(cs(3), Signal::SIGKILL)?;
    drop(tmpfs);
    cluster.finish(&[])
}
