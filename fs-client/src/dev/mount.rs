//! FUSE mounts of a dev cluster: `cairn mount MOUNTPOINT --metaserver ... --foreground` run as
//! a supervised child process, with its output in `DIR/logs/mount-<name>.log`.
//!
//! A mount is live when its mountpoint appears in `/proc/self/mountinfo` as a FUSE filesystem
//! and answers a `stat`. Unmounting asks the client first (SIGTERM: it unmounts itself and
//! exits); whatever is left — a killed client leaves a dead mount ("Transport endpoint is not
//! connected") — is removed with `fusermount3 -u`, then lazily (`-z`), so nothing stays stuck.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::logs::tail_lines;
use super::process::{is_alive, pid_of, Ownership};
use super::DevError;
use crate::limits::{
    DEV_EXIT_POLL_INTERVAL, DEV_KILL_WAIT, DEV_LOG_TAIL_LINES, DEV_MOUNT_PROBE_TIMEOUT, DEV_MOUNT_STOP_GRACE,
};

/// The binary that serves mounts (`cairn mount`).
pub const MOUNT_BINARY: &str = "cairn";

/// Name of the mount `cairn dev up` creates (at `DIR/mnt`).
pub const PRIMARY_MOUNT: &str = "mnt";

/// Mount options of dev mounts unless the spec says otherwise: `allow_other`, because tools and
/// test suites (pjdfstest) switch users inside the mount.
pub const DEFAULT_MOUNT_OPTIONS: &[&str] = &["allow_other"];

/// One mount of a cluster, as `cluster.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Short name, unique in the cluster (`mnt`, `mnt2`); names the log file.
    pub name: String,
    /// Absolute mountpoint.
    pub mountpoint: PathBuf,
    /// Pid of the `cairn mount --foreground` process; `None` when not running.
    pub pid: Option<u32>,
    /// `-o` options, in order.
    pub options: Vec<String>,
    pub log_path: PathBuf,
}

impl MountRecord {
    /// A record for mount `name` of the cluster in `dir`, mounted at `mountpoint` (by default
    /// `DIR/<name>`).
    pub fn new(dir: &Path, name: &str, mountpoint: Option<PathBuf>, options: Vec<String>) -> MountRecord {
        MountRecord {
            name: name.to_owned(),
            mountpoint: mountpoint.unwrap_or_else(|| dir.join(name)),
            pid: None,
            options,
            log_path: dir.join("logs").join(format!("mount-{name}.log")),
        }
    }

    /// The `cairn` arguments that serve this mount.
    pub fn command_args(&self, metaservers: &[String], extra: &[OsString]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "mount".into(),
            self.mountpoint.clone().into_os_string(),
            "--metaserver".into(),
            metaservers.join(",").into(),
            "--foreground".into(),
        ];
        if !self.options.is_empty() {
            args.push("-o".into());
            args.push(self.options.join(",").into());
        }
        args.extend(extra.iter().cloned());
        args
    }
}

/// Whether `pid` is alive and is the mount process of `mount` (its command line names the
/// mountpoint), so a reused pid is never signalled.
pub(crate) fn is_mount_process(pid: u32, mount: &MountRecord) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let mountpoint = mount.mountpoint.as_os_str().as_encoded_bytes();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.contains(&b"mount".as_slice()) && args.contains(&mountpoint)
        }
        Err(_) => true,
    }
}

/// The filesystem type of the mount at exactly `path` (`fuse`, `fuse.cairn`, `ext4`, ...), from
/// `/proc/self/mountinfo`; `None` if nothing is mounted there. The topmost mount wins.
pub fn mount_fstype(path: &Path) -> Result<Option<String>, DevError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| DevError::io("read /proc/self/mountinfo", e))?;
    Ok(fstype_in_mountinfo(&text, path))
}

/// Whether a FUSE filesystem is mounted at exactly `path`.
pub fn is_fuse_mounted(path: &Path) -> Result<bool, DevError> {
    Ok(mount_fstype(path)?.is_some_and(|t| is_fuse_type(&t)))
}

fn is_fuse_type(fstype: &str) -> bool {
    fstype == "fuse" || fstype.starts_with("fuse.")
}

fn fstype_in_mountinfo(text: &str, path: &Path) -> Option<String> {
    let wanted = path.as_os_str().as_encoded_bytes();
    let mut found = None;
    for line in text.lines() {
        // id parent major:minor root mountpoint options [optional fields...] - fstype source ...
        let mut fields = line.split(' ');
        let Some(mountpoint) = fields.nth(4) else { continue };
        if unescape_mountinfo(mountpoint) != wanted {
            continue;
        }
        let mut rest = fields.skip_while(|f| *f != "-");
        rest.next();
        if let Some(fstype) = rest.next() {
            found = Some(fstype.to_owned());
        }
    }
    found
}

/// Undoes the kernel's octal escapes in mountinfo paths (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Starts `cairn mount ... --foreground` for `mount`, output appended to its log. Creates the
/// mountpoint; a dead FUSE mount left there by a killed client is removed first.
pub(crate) fn spawn_mount(
    bin_dir: &Path,
    mount: &MountRecord,
    metaservers: &[String],
    extra: &[OsString],
    env: &[(OsString, OsString)],
    ownership: Ownership,
) -> Result<Child, DevError> {
    let binary = bin_dir.join(MOUNT_BINARY);
    if !binary.is_file() {
        return Err(DevError::BinaryNotFound { path: binary });
    }
    if is_fuse_mounted(&mount.mountpoint)? {
        force_unmount(&mount.mountpoint)?;
    }
    std::fs::create_dir_all(&mount.mountpoint)
        .map_err(|e| DevError::io(format!("create {}", mount.mountpoint.display()), e))?;
    if let Some(logs) = mount.log_path.parent() {
        std::fs::create_dir_all(logs).map_err(|e| DevError::io(format!("create {}", logs.display()), e))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&mount.log_path)
        .map_err(|e| DevError::io(format!("open {}", mount.log_path.display()), e))?;
    let args = command_args_checked(mount, metaservers, extra)?;
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    writeln!(log, "==== cairn dev: mounting {}: {} {} ====", mount.name, binary.display(), shown.join(" "))
        .map_err(|e| DevError::io(format!("write {}", mount.log_path.display()), e))?;
    let stderr = log.try_clone().map_err(|e| DevError::io(format!("duplicate {}", mount.log_path.display()), e))?;
    let mut command = Command::new(&binary);
    command
        .args(&args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    if ownership == Ownership::Detached {
        command.process_group(0);
    }
    let child = command.spawn().map_err(|source| DevError::MountSpawn { name: mount.name.clone(), source })?;
    tracing::debug!(mount = %mount.name, pid = child.id(), "mount started");
    Ok(child)
}

fn command_args_checked(
    mount: &MountRecord,
    metaservers: &[String],
    extra: &[OsString],
) -> Result<Vec<OsString>, DevError> {
    if metaservers.is_empty() {
        return Err(DevError::InvalidSpec("a mount needs at least one metaserver".into()));
    }
    Ok(mount.command_args(metaservers, extra))
}

/// Waits until `mount` is live (a FUSE mount at its mountpoint that answers `stat`). Fails at
/// once if the mount process (`pid`) exits, and after `timeout`; both errors carry the log tail.
pub(crate) async fn wait_mounted(mount: &MountRecord, pid: u32, timeout: Duration) -> Result<(), DevError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not mounted yet");
    loop {
        if !is_alive(pid) {
            return Err(mount_failed(mount, format!("mount process {pid} exited; last state: {last}")));
        }
        match is_fuse_mounted(&mount.mountpoint) {
            Ok(true) => match probe_stat(&mount.mountpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            },
            Ok(false) => last = "not in /proc/self/mountinfo as a FUSE filesystem".into(),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(mount_failed(mount, format!("not live after {timeout:?}: {last}")));
        }
        tokio::time::sleep(DEV_EXIT_POLL_INTERVAL).await;
    }
}

/// `stat` of the mountpoint on a blocking thread, bounded: a hung FUSE server must not hang the
/// caller (the thread is abandoned if it never returns).
async fn probe_stat(path: &Path) -> Result<(), String> {
    let owned = path.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(&owned));
    match tokio::time::timeout(DEV_MOUNT_PROBE_TIMEOUT, stat).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("stat {}: {e}", path.display())),
        Ok(Err(e)) => Err(format!("stat {}: {e}", path.display())),
        Err(_) => Err(format!("stat {} did not answer within {DEV_MOUNT_PROBE_TIMEOUT:?}", path.display())),
    }
}

fn mount_failed(mount: &MountRecord, reason: String) -> DevError {
    let tail = tail_lines(&mount.log_path, DEV_LOG_TAIL_LINES).unwrap_or_default();
    DevError::MountFailed {
        name: mount.name.clone(),
        mountpoint: mount.mountpoint.clone(),
        reason,
        log: mount.log_path.clone(),
        tail: tail.join("\n"),
    }
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Nothing was mounted and no mount process ran.
    NotMounted,
    /// The mount process unmounted and exited on SIGTERM.
    Clean,
    /// The process had to be killed and/or the mount removed with fusermount3.
    Forced,
}

/// Unmounts `mount`: SIGTERM to its process (when `pid` is still that process) and up to
/// [`DEV_MOUNT_STOP_GRACE`] for it to unmount and exit; then, whatever remains, SIGKILL for the
/// process and `fusermount3 -u` (then `-uz`) for the mount. Synchronous (usable from `Drop`).
pub fn unmount_blocking(mount: &MountRecord, pid: Option<u32>) -> Result<Unmounted, DevError> {
    let pid = pid.filter(|&p| is_mount_process(p, mount));
    let mounted = is_fuse_mounted(&mount.mountpoint)?;
    if pid.is_none() && !mounted {
        return Ok(Unmounted::NotMounted);
    }
    let mut clean = true;
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(pid_of(pid), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DEV_MOUNT_STOP_GRACE;
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(DEV_EXIT_POLL_INTERVAL);
        }
        if is_alive(pid) {
            clean = false;
            tracing::warn!(mount = %mount.name, pid, "mount process did not exit within the grace period");
            // Unmounting first lets a client stuck on the kernel connection return.
            force_unmount(&mount.mountpoint)?;
            let _ = nix::sys::signal::kill(pid_of(pid), nix::sys::signal::Signal::SIGKILL);
            let deadline = Instant::now() + DEV_KILL_WAIT;
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(DEV_EXIT_POLL_INTERVAL);
            }
        }
    }
    if is_fuse_mounted(&mount.mountpoint)? {
        clean = false;
        force_unmount(&mount.mountpoint)?;
    }
    Ok(if clean { Unmounted::Clean } else { Unmounted::Forced })
}

/// Removes the FUSE mount at `path`: `fusermount3 -u`, then a lazy `fusermount3 -uz` (detaches
/// it even while busy or dead), then `umount -l`. Fails only if a FUSE mount is still there.
pub fn force_unmount(path: &Path) -> Result<(), DevError> {
    let attempts: [(&str, &[&str]); 3] =
        [("fusermount3", &["-u"]), ("fusermount3", &["-u", "-z"]), ("umount", &["-l"])];
    let mut tried = Vec::new();
    for (program, flags) in attempts {
        if !is_fuse_mounted(path)? {
            return Ok(());
        }
        let output = Command::new(program).args(flags).arg(path).stdin(Stdio::null()).output();
        match output {
            Ok(o) if o.status.success() => {}
            Ok(o) => tried.push(format!(
                "{program} {}: {} {}",
                flags.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => tried.push(format!("{program}: {e}")),
        }
    }
    if is_fuse_mounted(path)? {
        return Err(DevError::UnmountFailed { mountpoint: path.to_path_buf(), tried: tried.join("; ") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
90 22 0:50 / /tmp/c/mnt rw,nosuid,nodev,relatime shared:60 - fuse.cairn cairn rw,user_id=0,group_id=0,allow_other\n\
91 22 0:51 / /tmp/my\\040dir/mnt rw,nosuid,nodev shared:61 - fuse cairn rw,user_id=0\n\
92 22 0:52 / /tmp/plain rw - tmpfs tmpfs rw\n";

    #[test]
    fn mountinfo_lookup_finds_fuse_mounts_and_unescapes_paths() {
        assert_eq!(fstype_in_mountinfo(MOUNTINFO, Path::new("/tmp/c/mnt")).as_deref(), Some("fuse.cairn"));
        assert_eq!(fstype_in_mountinfo(MOUNTINFO, Path::new("/tmp/my dir/mnt")).as_deref(), Some("fuse"));
        assert_eq!(fstype_in_mountinfo(MOUNTINFO, Path::new("/tmp/plain")).as_deref(), Some("tmpfs"));
        assert_eq!(fstype_in_mountinfo(MOUNTINFO, Path::new("/tmp/c")), None);
        assert!(is_fuse_type("fuse.cairn") && is_fuse_type("fuse") && !is_fuse_type("fusectl"));
        assert_eq!(unescape_mountinfo(r"a\134b\011c\0"), b"a\\b\tc\\0");
    }

    #[test]
    fn the_root_filesystem_is_not_a_fuse_mount() {
        assert!(mount_fstype(Path::new("/")).expect("mountinfo").is_some());
        assert!(!is_fuse_mounted(Path::new("/")).expect("mountinfo"));
    }

    #[test]
    fn mount_command_line() {
        let record = MountRecord::new(Path::new("/c"), "mnt", None, vec!["allow_other".into(), "ro".into()]);
        assert_eq!(record.log_path, PathBuf::from("/c/logs/mount-mnt.log"));
        let args = record.command_args(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], &["--x".into()]);
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "mount",
                "/c/mnt",
                "--metaserver",
                "127.0.0.1:1,127.0.0.1:2",
                "--foreground",
                "-o",
                "allow_other,ro",
                "--x"
            ]
        );
        assert!(command_args_checked(&record, &[], &[]).is_err());
    }

    #[test]
    fn unmounting_nothing_is_a_no_op() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let record = MountRecord::new(tmp.path(), "mnt", None, Vec::new());
        // Our own pid is alive but is not a mount process of this record.
        assert_eq!(unmount_blocking(&record, Some(std::process::id())).expect("unmount"), Unmounted::NotMounted);
        force_unmount(&record.mountpoint).expect("nothing to unmount");
    }
}
