//! `cairn mount`: the FUSE client. See docs/fs-client.md.
//!
//! * `options.rs`: mount options (flags, `-o` lists, the `mount.cairn` helper's arguments).
//! * `meta.rs`: metaserver calls with endpoint failover and the EIO timeout.
//! * `chunkio.rs`: chain writes and verified, failing-over reads on chunkservers.
//! * `closer.rs`: released handles, closed on the metaserver in batches.
//! * `layout.rs`: chunk arithmetic and the per-file write buffer (pure).
//! * `rope.rs`: read data kept in the messages it arrived in (readahead windows, replies).
//! * `attr.rs`: protobuf ↔ FUSE conversions and caller credentials.
//! * `cache.rs`: what the client answers itself within the attribute TTL (directory attributes
//!   after its own changes, the absence of file capabilities).
//! * `signals.rs`: whether a caller has a signal pending (ends blocking lock waits).
//! * `core.rs`: every operation's logic over the two services; `fs.rs`: the fuser adapter that
//!   runs each request on its own Tokio task.
//!
//! What it promises: close-to-open consistency (close and fsync wait until data is on every
//! replica and the size is committed; open sees what other clients closed), metadata through
//! the metaserver's linearizable API, and no hang when the cluster is unreachable (EIO after
//! the configured timeout).

mod attr;
mod cache;
mod chunkio;
mod closer;
mod core;
mod fs;
mod layout;
mod meta;
mod options;
mod rope;
mod signals;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};

pub use meta::leader_hint;
pub use options::{parse_helper_args, parse_source, MountOptions};

use crate::limits::{FUSE_READER_THREADS, MOUNT_READY_TIMEOUT, UNMOUNT_GRACE};

/// The filesystem type in /proc/mounts.
pub const FS_TYPE: &str = "fuse.cairn";
/// The source (fsname) of every Cairn mount starts with this, followed by the endpoints.
pub const FS_SOURCE_PREFIX: &str = "cairn:";

/// Mounts and serves until unmounted (foreground), or starts a background copy of itself and
/// returns once the mount is live.
pub fn mount(options: &MountOptions) -> anyhow::Result<()> {
    if options.foreground {
        serve(options)
    } else {
        daemonize(options)
    }
}

fn fuse_config(options: &MountOptions) -> fuser::Config {
    use fuser::MountOption as M;
    let mut mount_options = vec![
        M::FSName(format!("{FS_SOURCE_PREFIX}{}", options.metaservers.join(","))),
        M::Subtype("cairn".to_owned()),
        if options.read_only { M::RO } else { M::RW },
    ];
    if options.default_permissions {
        mount_options.push(M::DefaultPermissions);
    }
    for flag in &options.kernel_flags {
        mount_options.push(match flag.as_str() {
            "suid" => M::Suid,
            "nosuid" => M::NoSuid,
            "dev" => M::Dev,
            "nodev" => M::NoDev,
            "exec" => M::Exec,
            "noexec" => M::NoExec,
            "atime" => M::Atime,
            "noatime" => M::NoAtime,
            "sync" => M::Sync,
            "async" => M::Async,
            "dirsync" => M::DirSync,
            other => M::CUSTOM(other.to_owned()),
        });
    }
    let mut config = fuser::Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(FUSE_READER_THREADS);
    config.clone_fd = true;
    config
}

/// Mounts, serves requests until the filesystem is unmounted (or SIGTERM/SIGINT unmounts it),
/// then closes the session.
pub fn serve(options: &MountOptions) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the Tokio runtime")?;
    // Channels are created inside the runtime (tonic spawns their connection tasks there).
    let _entered = runtime.enter();
    let meta = meta::MetaClient::new(&options.metaservers, options.timeout)?;
    let core = core::Core::new(meta, options.attr_ttl);
    runtime
        .block_on(core.start())
        .map_err(|e| anyhow::anyhow!("open a session on the metaservers {:?}: {e:?}", options.metaservers))?;
    let heartbeat = runtime.spawn(core.clone().heartbeat_loop());
    let fs = fs::CairnFs::new(core.clone(), runtime.handle().clone(), options.attr_ttl, options.entry_ttl);
    let mut session = fuser::Session::new(fs, &options.mountpoint, &fuse_config(options))
        .with_context(|| format!("mount at {}", options.mountpoint.display()))?;
    tracing::info!(mountpoint = %options.mountpoint.display(), session = core.session(), "mounted");
    let mut unmounter = session.unmount_callable();
    let mountpoint = options.mountpoint.clone();
    let connection = fuse_connection(&mountpoint);
    runtime.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; unmounting");
        if let Err(e) = unmounter.unmount() {
            // Busy (a process has a file open or its cwd inside): detach lazily so the
            // session ends and the kernel releases the rest when they let go.
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            let _ = unmount_command(&mountpoint, true);
        }
        // A process stuck inside the filesystem would keep the connection (and this process)
        // alive after a lazy detach: abort the connection after a grace period.
        tokio::time::sleep(UNMOUNT_GRACE).await;
        if let Some(id) = connection {
            tracing::warn!(connection = id, "session still running after unmount; aborting the FUSE connection");
            abort_connection(id);
        }
    });
    let result = session.run();
    heartbeat.abort();
    runtime.block_on(core.close_session());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result.context("serve FUSE requests")
}

/// The FUSE connection id of the mount at `mountpoint` (the minor number of its device, from
/// /proc/self/mountinfo: asking the filesystem itself could block before it serves requests).
fn fuse_connection(mountpoint: &Path) -> Option<u64> {
    let canonical = std::fs::canonicalize(mountpoint).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    connection_of(&text, &canonical)
}

fn connection_of(mountinfo: &str, mountpoint: &Path) -> Option<u64> {
    let want = mountpoint.display().to_string().replace(' ', "\\040");
    // The last matching line is the mount on top.
    mountinfo.lines().rfind(|l| l.split(' ').nth(4) == Some(want.as_str())).and_then(|l| {
        let (_major, minor) = l.split(' ').nth(2)?.split_once(':')?;
        minor.parse().ok()
    })
}

/// Aborts a FUSE connection: every pending and future request fails with ENOTCONN, so the
/// session ends. Mounts the fusectl filesystem first if needed.
fn abort_connection(id: u64) {
    let dir = Path::new("/sys/fs/fuse/connections");
    let abort = dir.join(id.to_string()).join("abort");
    if !abort.exists() {
        let _ = Command::new("mount").args(["-t", "fusectl", "none"]).arg(dir).status();
    }
    if let Err(e) = std::fs::write(&abort, "1") {
        tracing::error!(path = %abort.display(), error = %e, "could not abort the FUSE connection");
    }
}

/// Starts `cairn mount --foreground` in the background (own process group, output to the log
/// file) and waits until the mount appears in /proc/self/mountinfo.
fn daemonize(options: &MountOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the cairn executable")?;
    let mountpoint = std::fs::canonicalize(&options.mountpoint)
        .with_context(|| format!("mount point {}", options.mountpoint.display()))?;
    let log: Stdio = match &options.log_file {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("open the log file {}", p.display()))?
            .into(),
        None => Stdio::null(),
    };
    let mut args = vec![
        "mount".to_owned(),
        mountpoint.display().to_string(),
        "--foreground".to_owned(),
        "--metaserver".to_owned(),
        options.metaservers.join(","),
        "--log-file".to_owned(),
        options.log_file.as_ref().map_or_else(|| "/dev/null".to_owned(), |p| p.display().to_string()),
        "--log-level".to_owned(),
        options.log_level.clone(),
        "--attr-ttl-ms".to_owned(),
        options.attr_ttl.as_millis().to_string(),
        "--entry-ttl-ms".to_owned(),
        options.entry_ttl.as_millis().to_string(),
        "--timeout-ms".to_owned(),
        options.timeout.as_millis().to_string(),
    ];
    let mut o = Vec::new();
    if options.read_only {
        o.push("ro".to_owned());
    }
    if options.allow_other {
        o.push("allow_other".to_owned());
    }
    if !options.default_permissions {
        o.push("no_default_permissions".to_owned());
    }
    o.extend(options.kernel_flags.iter().cloned());
    if !o.is_empty() {
        args.push("-o".to_owned());
        args.push(o.join(","));
    }
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start the mount daemon")?;
    let started = Instant::now();
    loop {
        if is_mounted(&mountpoint)? {
            println!("mounted {} (pid {})", mountpoint.display(), child.id());
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("wait for the mount daemon")? {
            let hint = options.log_file.as_ref().map(|p| format!("; see {}", p.display())).unwrap_or_default();
            bail!("the mount daemon exited with {status} before the mount was live{hint}");
        }
        if started.elapsed() > MOUNT_READY_TIMEOUT {
            let _ = child.kill();
            bail!("the mount did not appear within {MOUNT_READY_TIMEOUT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether a Cairn filesystem is mounted at `mountpoint` (canonical path).
pub fn is_mounted(mountpoint: &Path) -> anyhow::Result<bool> {
    let mut text = String::new();
    std::fs::File::open("/proc/self/mountinfo")
        .and_then(|mut f| f.read_to_string(&mut text))
        .context("read /proc/self/mountinfo")?;
    Ok(mount_listed(&text, mountpoint))
}

/// Whether mountinfo lists a Cairn mount at `mountpoint`. Fields: id parent dev root
/// mountpoint opts [optional...] - fstype source superopts; spaces in paths are \040. The type
/// is `fuse.cairn`, or plain `fuse` when fusermount3 mounted it (it drops the subtype), with
/// the source `cairn:ENDPOINTS`.
fn mount_listed(mountinfo: &str, mountpoint: &Path) -> bool {
    let want = mountpoint.display().to_string().replace(' ', "\\040");
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else { return false };
        let fstype = fields.get(dash + 1).copied().unwrap_or_default();
        let source = fields.get(dash + 2).copied().unwrap_or_default();
        fields.get(4) == Some(&want.as_str())
            && (fstype == FS_TYPE || (fstype == "fuse" && source.starts_with(FS_SOURCE_PREFIX)))
    })
}

/// Unmounts through fusermount3 (works for root and for the user who mounted), falling back
/// to umount(8).
pub fn unmount_command(mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let mut fusermount = Command::new("fusermount3");
    fusermount.arg(if lazy { "-uz" } else { "-u" }).arg(mountpoint);
    if let Ok(status) = fusermount.status() {
        if status.success() {
            return Ok(());
        }
    }
    let mut umount = Command::new("umount");
    if lazy {
        umount.arg("-l");
    }
    let status = umount.arg(mountpoint).status().context("run umount")?;
    if !status.success() {
        bail!("could not unmount {} ({status})", mountpoint.display());
    }
    Ok(())
}

/// `cairn umount MOUNTPOINT`: unmounts and waits until the mount is gone.
pub fn umount(mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let canonical = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| PathBuf::from(mountpoint));
    unmount_command(&canonical, lazy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let info = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.cairn cairn:h:1 rw,user_id=0\n\
                    37 35 98:0 / /mnt/c rw - ext4 /dev/sda1 rw\n\
                    38 35 0:39 / /mnt/d rw,nosuid - fuse cairn:127.0.0.1:1 rw\n\
                    39 35 0:40 / /mnt/e rw,nosuid - fuse sshfs#x rw\n";
        assert!(mount_listed(info, Path::new("/mnt/a b")));
        assert!(!mount_listed(info, Path::new("/mnt/c")));
        assert!(!mount_listed(info, Path::new("/mnt/x")));
        assert!(mount_listed(info, Path::new("/mnt/d")));
        assert!(!mount_listed(info, Path::new("/mnt/e")));
        assert_eq!(connection_of(info, Path::new("/mnt/d")), Some(39));
        assert_eq!(connection_of(info, Path::new("/mnt/x")), None);
    }
}
