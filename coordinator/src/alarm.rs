//! Alarms of this member. NOSPACE is raised when the data directory's filesystem has less free
//! space than the configured reserve, and cleared when space returns (or by an operator's
//! `etcdctl alarm disarm`, which the monitor re-raises if the disk is still short). While it is
//! raised this member refuses writes that add data (etcd's "database space exceeded"); reads,
//! deletes, revocations and compaction still work, so an operator can make room.
//!
//! Alarms here are per member: each member watches its own disk and refuses the writes it
//! receives. (etcd replicates alarms through Raft; that is not done yet.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Alarms {
    nospace: AtomicBool,
}

impl Alarms {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Relaxed)
    }

    pub fn set_nospace(&self, raised: bool) {
        let was = self.nospace.swap(raised, Ordering::Relaxed);
        if was != raised {
            if raised {
                tracing::error!("NOSPACE alarm raised: refusing writes until disk space is freed");
            } else {
                tracing::warn!("NOSPACE alarm cleared");
            }
        }
    }
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let unit = st.fragment_size() as u64;
    Ok((st.blocks_available() as u64 * unit, st.blocks() as u64 * unit))
}

/// Checks the disk every `interval` and raises or clears NOSPACE.
pub async fn monitor_disk(
    alarms: Arc<Alarms>,
    data_dir: PathBuf,
    free_bytes_min: u64,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        match disk_space(&data_dir) {
            Ok((free, _total)) => alarms.set_nospace(free < free_bytes_min),
            Err(e) => tracing::warn!(error = %e, dir = %data_dir.display(), "cannot read free disk space"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_reads_this_filesystem() {
        let (free, total) = disk_space(std::path::Path::new("/")).expect("statvfs");
        assert!(total > 0 && free <= total);
    }
}
