//! Whether the thread behind a FUSE request has a signal waiting to be taken.
//!
//! The kernel tells a filesystem that a caller was interrupted with FUSE_INTERRUPT, but fuser
//! 0.18 drops those requests. For most requests that does not matter: they end within the
//! mount's RPC timeout. A blocking lock wait (F_SETLKW, flock) can last for ever, and the
//! kernel will not let its caller go, not even for SIGKILL, until the filesystem answers. So
//! such a wait watches its caller in /proc and answers EINTR once a signal the caller does not
//! block is pending (SIGKILL cannot be blocked), or once the caller is gone. Dropping the wait
//! cancels its RPC, and the metaserver withdraws the queued request.
//!
//! EINTR is the answer even where a local filesystem would restart the call for an SA_RESTART
//! handler: FUSE cannot return ERESTARTSYS.

use std::time::Duration;

/// Resolves when thread `tid` (the FUSE request's pid) has an unblocked signal pending or no
/// longer exists; checks every `poll`.
pub async fn interrupted(tid: u32, poll: Duration) {
    let path = format!("/proc/{tid}/status");
    loop {
        tokio::time::sleep(poll).await;
        match tokio::fs::read_to_string(&path).await {
            Ok(status) => {
                if signal_pending(&status) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            // Anything else (no /proc, permissions): keep waiting as if there were no signal.
            Err(_) => {}
        }
    }
}

/// Whether a /proc/TID/status text shows a pending signal (thread's or process-wide) that the
/// thread does not block.
fn signal_pending(status: &str) -> bool {
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(sig_pnd: &str, shd_pnd: &str, sig_blk: &str) -> String {
        format!(
            "Name:\tflock\nState:\tS (sleeping)\nSigQ:\t1/95000\nSigPnd:\t{sig_pnd}\nShdPnd:\t{shd_pnd}\n\
             SigBlk:\t{sig_blk}\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000002\n"
        )
    }

    #[test]
    fn pending_signals() {
        let none = "0000000000000000";
        assert!(!signal_pending(&status(none, none, none)));
        // SIGKILL (9) to the thread, SIGINT (2) to the process.
        assert!(signal_pending(&status("0000000000000100", none, none)));
        assert!(signal_pending(&status(none, "0000000000000002", none)));
        // A blocked SIGINT waits; SIGKILL is never blocked in practice but the mask rules apply.
        assert!(!signal_pending(&status(none, "0000000000000002", "0000000000000002")));
        assert!(signal_pending(&status(none, "0000000000000006", "0000000000000002")));
        // Unreadable fields count as no signal.
        assert!(!signal_pending("Name:\tx\nSigPnd:\tzz\n"));
    }

    #[tokio::test]
    async fn a_missing_thread_counts_as_interrupted() {
        // Pid numbers stop well below u32::MAX (pid_max is at most 2^22).
        tokio::time::timeout(Duration::from_secs(5), interrupted(u32::MAX, Duration::from_millis(1)))
            .await
            .expect("a thread that does not exist ends the wait");
    }

    #[tokio::test]
    async fn a_live_thread_without_signals_keeps_waiting() {
        let me = std::process::id();
        let waited = tokio::time::timeout(Duration::from_millis(50), interrupted(me, Duration::from_millis(1))).await;
        assert!(waited.is_err(), "no signal is pending for the test process");
    }
}
