//! Two mounts of one cluster (two `cairn mount` processes, as on two machines): a file closed
//! on one is read correctly on the other (close-to-open, including overwrites, truncation,
//! appends, renames and deletes); flock(2) locks (util-linux `flock`) and POSIX fcntl locks
//! (python3) conflict across the mounts, each kind only with its own kind, as on Linux; SIGKILL
//! of the process holding a lock frees it; a blocked waiter ends on a signal (a handler's
//! exception, SIGKILL).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use cairn_tests::{poll_until, run_bounded, run_checks, sh, Check, FuseCluster};

/// How long a lock freed by a killed holder may take to become available on the other mount.
/// The kernel releases the holder's locks when its files are closed at exit, so this is fast
/// unless the release is lost; then the lock would wait for session expiry.
const LOCK_FREE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one non-blocking lock attempt (a hung request fails the check).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a blocking waiter is left to queue its request before it is killed.
const WAITER_SETTLE: Duration = Duration::from_secs(1);

/// A python3 process on `path` holding a lock (`kind`: `flock`, `fcntl`, or `both`: an flock
/// and then, without waiting, an fcntl lock) until killed; it prints `locked` once it holds
/// the lock.
fn spawn_holder(path: &Path, kind: &str) -> anyhow::Result<Child> {
    let script = r#"
import fcntl, os, sys, time
kind, path = sys.argv[1], sys.argv[2]
f = open(path, "r+")
if kind in ("flock", "both"):
    fcntl.flock(f, fcntl.LOCK_EX)
if kind in ("fcntl", "both"):
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if kind == "both" else 0), 100, 0)  # bytes 0..99
    except OSError as e:
        print("fcntl lock refused:", e, flush=True)
        sys.exit(1)
print("locked", flush=True)
time.sleep(3600)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, kind])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the python3 lock holder")?;
    let stdout = child.stdout.take().context("holder stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("read the holder's output")?;
    if line.trim() != "locked" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the {kind} holder did not lock {}: {line:?}", path.display());
    }
    Ok(child)
}

/// Whether a non-blocking fcntl write lock on `range` (`start,len`) of `path` is granted now.
fn fcntl_try(path: &Path, start: u64, len: u64) -> anyhow::Result<bool> {
    let script = r#"
import errno, fcntl, sys
f = open(sys.argv[1], "r+")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
    print("granted")
except OSError as e:
    if e.errno in (errno.EAGAIN, errno.EACCES):
        print("conflict")
    else:
        raise
"#;
    let out = run_bounded(
        Command::new("python3").args(["-c", script]).arg(path).args([start.to_string(), len.to_string()]),
        PROBE_TIMEOUT,
    )?;
    match out.stdout.trim() {
        "granted" => Ok(true),
        "conflict" => Ok(false),
        text => bail!("fcntl probe: {:?} {text} {}", out.status, out.stderr),
    }
}

/// Whether util-linux `flock -n` gets an exclusive lock on `path` now (exit 1 means conflict).
fn flock_try(path: &Path) -> anyhow::Result<bool> {
    let out = run_bounded(
        Command::new("flock").args(["--nonblock", "--exclusive", "--conflict-exit-code", "75"]).arg(path).arg("true"),
        PROBE_TIMEOUT,
    )?;
    match out.status.and_then(|s| s.code()) {
        Some(0) => Ok(true),
        Some(75) => Ok(false),
        _ => bail!("flock: {:?} {}", out.status, out.stderr),
    }
}

/// A blocked lock wait on `path` (`kind`: `flock` or `fcntl`, on a lock someone else holds)
/// ends when its caller takes a signal: a SIGALRM handler's exception reaches the caller, and
/// a SIGKILLed waiter exits. FUSE does not let a caller go while the filesystem has its
/// request, so both depend on the mount noticing the signal.
fn blocked_waits_end_on_signals(path: &Path, kind: &str) -> anyhow::Result<()> {
    let script = r#"
import fcntl, signal, sys
kind, path, alarm = sys.argv[1], sys.argv[2], sys.argv[3] == "alarm"
class Alarm(Exception):
    pass
def on_alarm(*_):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
f = open(path, "r+")
print("waiting", flush=True)
try:
    # Armed right before the call, so the signal arrives while the call waits in the mount.
    if alarm:
        signal.alarm(1)
    if kind == "flock":
        fcntl.flock(f, fcntl.LOCK_EX)
    else:
        fcntl.lockf(f, fcntl.LOCK_EX, 1, 0)
    print("granted", flush=True)
except Alarm:
    print("interrupted", flush=True)
"#;
    let out = run_bounded(Command::new("python3").args(["-c", script, kind]).arg(path).arg("alarm"), PROBE_TIMEOUT)?;
    if out.stdout.split_whitespace().collect::<Vec<_>>() != ["waiting", "interrupted"] {
        bail!("a {kind} wait with a SIGALRM handler: {:?} {:?} {}", out.status, out.stdout, out.stderr);
    }
    let mut waiter = Command::new("python3")
        .args(["-c", script, kind])
        .arg(path)
        .arg("no-alarm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the python3 waiter")?;
    let mut line = String::new();
    BufReader::new(waiter.stdout.take().context("waiter stdout")?).read_line(&mut line).context("read the waiter")?;
    std::thread::sleep(WAITER_SETTLE);
    if let Some(status) = waiter.try_wait().context("poll the waiter")? {
        bail!("the {kind} waiter ended while the lock was held: {status:?} after {line:?}");
    }
    waiter.kill().context("SIGKILL the waiter")?;
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    while waiter.try_wait().context("poll the killed waiter")?.is_none() {
        if std::time::Instant::now() >= deadline {
            bail!("a SIGKILLed {kind} waiter was still there after {PROBE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn kill_holder(mut holder: Child) -> anyhow::Result<()> {
    holder.kill().context("SIGKILL the holder")?;
    holder.wait().context("reap the holder")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_share_files_and_locks() -> anyhow::Result<()> {
    let mut cluster = FuseCluster::start("fuse-two-mounts").await?;
    let a = cluster.mnt();
    let b = cluster.add_mount("mnt2", &["allow_other".to_owned()]).await?;
    let local = cluster.scratch("local")?;
    eprintln!("cluster in {}, mounts {} and {}", cluster.dir().display(), a.display(), b.display());
    let runtime = tokio::runtime::Handle::current();

    let checks: Vec<Check<'_>> = vec![
        (
            "close-to-open: writes, overwrites, truncation, appends, renames, deletes",
            Box::new(|| {
                sh(
                    &local,
                    &format!(
                        "A='{a}'; B='{b}'\n\
                         head -c 5000000 /dev/urandom > one; head -c 3000 /dev/urandom > two\n\
                         # File contents: close-to-open, so every open after the writer's close sees them.\n\
                         cp one \"$A/f\"; cmp one \"$B/f\"\n\
                         cat \"$B/f\" > /dev/null  # now cached on B\n\
                         cp two \"$A/f\"; cmp two \"$B/f\"   # shorter overwrite in place\n\
                         cat one >> \"$A/f\"; cat two one | cmp - \"$B/f\"\n\
                         truncate -s 1000 \"$A/f\"; head -c 1000 two | cmp - \"$B/f\"\n\
                         printf 'middle' | dd of=\"$A/f\" bs=1 seek=10 conv=notrunc status=none\n\
                         (head -c 10 two; printf middle; head -c 1000 two | tail -c +17) | cmp - \"$B/f\"\n\
                         # Names may be cached for the entry TTL (1 s by default): wait up to 5 s.\n\
                         eventually() {{ for _ in $(seq 50); do if eval \"$1\"; then return 0; fi; sleep 0.1; done; echo \"never: $1\" >&2; return 1; }}\n\
                         mkdir \"$A/d\"; mv \"$A/f\" \"$A/d/g\"\n\
                         eventually '[ ! -e \"$B/f\" ]'; eventually '[ \"$(stat -c %s \"$B/d/g\")\" = 1000 ]'\n\
                         echo from-b > \"$B/d/h\"; eventually '[ \"$(cat \"$A/d/h\" 2>/dev/null)\" = from-b ]'\n\
                         rm \"$B/d/g\"; eventually '[ ! -e \"$A/d/g\" ]'; ls \"$A/d\"",
                        a = a.display(),
                        b = b.display()
                    ),
                )?;
                Ok(())
            }),
        ),
        (
            "flock conflicts across mounts; SIGKILL frees it",
            Box::new(|| {
                std::fs::write(a.join("flock-file"), b"x").context("create flock-file")?;
                let holder = spawn_holder(&a.join("flock-file"), "flock")?;
                let conflict_b = flock_try(&b.join("flock-file"));
                let conflict_a = flock_try(&a.join("flock-file"));
                let signals = blocked_waits_end_on_signals(&b.join("flock-file"), "flock");
                kill_holder(holder)?;
                signals?;
                if conflict_b? {
                    bail!("flock on mount 2 was granted while mount 1 held it");
                }
                if conflict_a? {
                    bail!("flock on mount 1 was granted while another process there held it");
                }
                runtime.block_on(poll_until("the flock to be free after SIGKILL", LOCK_FREE_TIMEOUT, || async {
                    match flock_try(&b.join("flock-file")) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("still locked".to_owned()),
                        Err(e) => Err(format!("{e:#}")),
                    }
                }))?;
                Ok(())
            }),
        ),
        (
            "fcntl locks conflict across mounts by range; SIGKILL frees them",
            Box::new(|| {
                std::fs::write(a.join("fcntl-file"), vec![0u8; 4096]).context("create fcntl-file")?;
                let holder = spawn_holder(&a.join("fcntl-file"), "fcntl")?;
                let overlapping = fcntl_try(&b.join("fcntl-file"), 50, 10);
                let disjoint = fcntl_try(&b.join("fcntl-file"), 100, 10);
                let same_mount = fcntl_try(&a.join("fcntl-file"), 0, 1);
                let signals = blocked_waits_end_on_signals(&b.join("fcntl-file"), "fcntl");
                kill_holder(holder)?;
                signals?;
                if overlapping? {
                    bail!("an overlapping fcntl lock on mount 2 was granted");
                }
                if !disjoint? {
                    bail!("a disjoint fcntl lock (bytes 100..109) on mount 2 was refused");
                }
                if same_mount? {
                    bail!("an overlapping fcntl lock from another process on mount 1 was granted");
                }
                runtime.block_on(poll_until(
                    "the fcntl lock to be free after SIGKILL",
                    LOCK_FREE_TIMEOUT,
                    || async {
                        match fcntl_try(&b.join("fcntl-file"), 0, 100) {
                            Ok(true) => Ok(()),
                            Ok(false) => Err("still locked".to_owned()),
                            Err(e) => Err(format!("{e:#}")),
                        }
                    },
                ))?;
                Ok(())
            }),
        ),
        (
            "flock and fcntl locks are independent of each other, as on Linux",
            Box::new(|| {
                std::fs::write(a.join("mixed-file"), vec![0u8; 4096]).context("create mixed-file")?;
                // One process takes both kinds on one file: its own flock must not block its
                // fcntl lock (procmail and dovecot lock mailboxes that way).
                let holder = spawn_holder(&a.join("mixed-file"), "both")?;
                let flock_b = flock_try(&b.join("mixed-file"));
                let overlapping = fcntl_try(&b.join("mixed-file"), 50, 10);
                let outside = fcntl_try(&b.join("mixed-file"), 200, 10);
                kill_holder(holder)?;
                if flock_b? {
                    bail!("an flock on mount 2 was granted while mount 1 held one");
                }
                if overlapping? {
                    bail!("an overlapping fcntl lock on mount 2 was granted");
                }
                if !outside? {
                    bail!("an fcntl lock outside the held range was refused: the flock counted as a POSIX lock");
                }
                Ok(())
            }),
        ),
    ];
    // The checks block on child processes; run them off the async worker that drives nothing.
    let result = tokio::task::block_in_place(|| run_checks(checks));
    result?;
    cluster.finish(&[])
}
