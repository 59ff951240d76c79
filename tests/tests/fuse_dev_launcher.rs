//! `cairn dev up` / `cairn dev down` as a developer runs them (the README's first command):
//! up starts the nine servers and mounts the cluster at DIR/mnt, printing the path and
//! recording CAIRN_MOUNT in cluster.env; a killed mount is mounted again by the next up; down
//! unmounts (nothing left in /proc/self/mountinfo, even for a dead mount) and stops everything;
//! data survives down/up; `--no-mount` starts only the servers; `down --purge` removes it all.
//! On the way, `cairn fsck` shows that files created and closed unwritten keep no chunk.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use cairn_fs_client::dev::{bin_dir, is_fuse_mounted, ClusterState, MOUNT_BINARY};

fn cairn(args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let binary = bin_dir()?.join(MOUNT_BINARY);
    let output = Command::new(&binary)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .with_context(|| format!("run {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("cairn {args:?} failed ({}):\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(stdout)
}

fn env_value(dir: &Path, key: &str) -> anyhow::Result<Option<String>> {
    let path = dir.join("cluster.env");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    Ok(text.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned)))
}

fn mount_pid(dir: &Path) -> anyhow::Result<u32> {
    let state = ClusterState::read(dir)?.context("cluster.json")?;
    state.mount("mnt").and_then(|m| m.pid).context("no running mount recorded")
}

/// Stops the cluster if the test fails half-way (best effort; the test's own down is checked).
struct Guard<'a>(&'a Path);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = cairn(&["dev", "down"], self.0);
    }
}

#[test]
fn dev_up_mounts_and_dev_down_unmounts() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("cairn-dev-launcher-").tempdir()?;
    let dir = tmp.path().join("dev");
    let mnt = dir.join("mnt");
    let _guard = Guard(&dir);

    let out = cairn(&["dev", "up"], &dir)?;
    if !out.contains(&format!("mounted at {}", mnt.display())) {
        bail!("dev up did not print the mount path:\n{out}");
    }
    assert_eq!(env_value(&dir, "CAIRN_MOUNT")?, Some(mnt.display().to_string()));
    assert!(is_fuse_mounted(&mnt)?, "{} is not a FUSE mount after dev up", mnt.display());
    std::fs::write(mnt.join("hello"), b"kept across restarts").context("write through the mount")?;

    // Files created and closed without a write keep no chunk: the map holds hello's alone.
    for i in 0..20 {
        std::fs::File::create(mnt.join(format!("empty-{i}"))).context("create an empty file")?;
    }
    let endpoints = env_value(&dir, "CAIRN_METASERVER_ENDPOINTS")?.context("no metaserver endpoints")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        // The mount closes a handle after close(2) returns (FUSE release): poll.
        let fsck = Command::new(bin_dir()?.join(MOUNT_BINARY)).args(["fsck", "--metaserver", &endpoints]).output()?;
        let report = String::from_utf8_lossy(&fsck.stdout).into_owned();
        if fsck.status.success() && report.contains("chunks: 1\n") {
            break;
        }
        if std::time::Instant::now() >= deadline {
            bail!("empty files still hold chunks ({}):\n{report}", fsck.status);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // A SIGKILLed client leaves a dead mount; the next `dev up` replaces it.
    let pid = mount_pid(&dir)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = cairn(&["dev", "up"], &dir)?;
    assert!(out.contains("already running"), "{out}");
    assert_ne!(mount_pid(&dir)?, pid, "the mount was not restarted");
    assert_eq!(std::fs::read(mnt.join("hello")).context("read after remount")?, b"kept across restarts");

    // down unmounts and stops everything; nothing stays mounted.
    let out = cairn(&["dev", "down"], &dir)?;
    assert!(out.contains(&format!("unmounted {}", mnt.display())), "{out}");
    assert!(!is_fuse_mounted(&mnt)?, "{} still mounted after dev down", mnt.display());
    assert_eq!(env_value(&dir, "CAIRN_MOUNT")?, None);
    let state = ClusterState::read(&dir)?.context("cluster.json kept")?;
    assert!(state.nodes.iter().all(|n| n.pid.is_none()) && state.mounts.iter().all(|m| m.pid.is_none()));

    // A dead mount (client killed, nothing else cleaned up) is removed by down too.
    cairn(&["dev", "up"], &dir)?;
    assert_eq!(std::fs::read(mnt.join("hello")).context("read after restart")?, b"kept across restarts");
    let pid = mount_pid(&dir)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    cairn(&["dev", "down"], &dir)?;
    assert!(!is_fuse_mounted(&mnt)?, "a dead mount was left behind by dev down");

    // --no-mount: servers only.
    let out = cairn(&["dev", "up", "--no-mount"], &dir)?;
    assert!(!out.contains("mounted at"), "{out}");
    assert!(!is_fuse_mounted(&mnt)?);
    assert_eq!(env_value(&dir, "CAIRN_MOUNT")?, None);
    assert!(env_value(&dir, "CAIRN_METASERVER_ENDPOINTS")?.is_some());

    let out = cairn(&["dev", "down", "--purge"], &dir)?;
    assert!(out.contains("purged"), "{out}");
    assert!(!dir.exists(), "{} survived --purge", dir.display());
    Ok(())
}
