//! How much this chunkserver may still store, and the check that refuses a write before it
//! would fill the disk.
//!
//! Two limits apply: the disk's available space minus a reserve (so RocksDB always has room to
//! flush, compact and write its WAL — a full disk corrupts nothing but stops every write), and
//! an optional configured capacity counted in logical chunk bytes. The disk figure comes from
//! `statvfs` and is cached for `SPACE_REFRESH_INTERVAL`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ChunkError;
use crate::limits::{SPACE_REFRESH_INTERVAL, SPACE_WARN_INTERVAL};

/// Where the free-disk figure comes from (the real disk, or a fixed value in tests).
#[derive(Debug)]
enum DiskSource {
    Statvfs(PathBuf),
    Fixed(u64),
}

#[derive(Debug)]
pub struct Space {
    source: DiskSource,
    /// Disk bytes always left free.
    reserve_bytes: u64,
    /// Configured limit on logical chunk bytes, if any.
    capacity_limit_bytes: Option<u64>,
    /// Sum of the lengths of all chunks (logical bytes, holes included).
    stored_bytes: AtomicU64,
    disk: Mutex<Option<(Instant, DiskFigures)>>,
    /// When a refusal was last logged: a full disk refuses every write, one line per
    /// `SPACE_WARN_INTERVAL` says so without flooding the log.
    refusal_logged: Mutex<Option<Instant>>,
}

/// The disk as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFigures {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl Space {
    pub fn for_disk(data_dir: PathBuf, reserve_bytes: u64, capacity_limit_bytes: Option<u64>) -> Space {
        Space::new(DiskSource::Statvfs(data_dir), reserve_bytes, capacity_limit_bytes)
    }

    /// A disk that always reports `available_bytes` free (tests).
    pub fn fixed(available_bytes: u64, reserve_bytes: u64, capacity_limit_bytes: Option<u64>) -> Space {
        Space::new(DiskSource::Fixed(available_bytes), reserve_bytes, capacity_limit_bytes)
    }

    fn new(source: DiskSource, reserve_bytes: u64, capacity_limit_bytes: Option<u64>) -> Space {
        Space {
            source,
            reserve_bytes,
            capacity_limit_bytes,
            stored_bytes: AtomicU64::new(0),
            disk: Mutex::new(None),
            refusal_logged: Mutex::new(None),
        }
    }

    fn disk(&self) -> DiskFigures {
        let mut cached = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, figures)) = *cached {
            if at.elapsed() < SPACE_REFRESH_INTERVAL {
                return figures;
            }
        }
        let figures = match &self.source {
            DiskSource::Fixed(available) => DiskFigures { total_bytes: *available, available_bytes: *available },
            // The statvfs field types differ between platforms (u32 on some), hence the casts.
            #[allow(clippy::unnecessary_cast)]
            DiskSource::Statvfs(path) => match nix::sys::statvfs::statvfs(path) {
                Ok(s) => DiskFigures {
                    total_bytes: (s.blocks() as u64).saturating_mul(s.fragment_size() as u64),
                    available_bytes: (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64),
                },
                Err(e) => {
                    // Without a figure, assume the disk is full: refusing writes is safe.
                    tracing::warn!(path = %path.display(), error = %e, "statvfs failed; treating the disk as full");
                    DiskFigures { total_bytes: 0, available_bytes: 0 }
                }
            },
        };
        *cached = Some((Instant::now(), figures));
        figures
    }

    /// Bytes the registry advertises as this server's capacity.
    pub fn capacity_bytes(&self) -> u64 {
        let disk = self.disk().total_bytes.saturating_sub(self.reserve_bytes);
        self.capacity_limit_bytes.map_or(disk, |limit| limit.min(disk))
    }

    /// Bytes that may still be stored.
    pub fn free_bytes(&self) -> u64 {
        let disk_free = self.disk().available_bytes.saturating_sub(self.reserve_bytes);
        match self.capacity_limit_bytes {
            Some(limit) => disk_free.min(limit.saturating_sub(self.stored_bytes())),
            None => disk_free,
        }
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    pub fn set_stored_bytes(&self, bytes: u64) {
        self.stored_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Records a chunk's length change from `old` to `new` bytes.
    pub fn record_length_change(&self, old: u64, new: u64) {
        if new >= old {
            self.stored_bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            // Saturating: never wraps even if a caller's bookkeeping were off.
            let _ = self
                .stored_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(old - new)));
        }
    }

    /// Refuses a write that writes `data_bytes` and grows the stored length by `growth_bytes`
    /// when either would go beyond what is free.
    pub fn check_write(&self, data_bytes: u64, growth_bytes: u64) -> Result<(), ChunkError> {
        let disk_free = self.disk().available_bytes.saturating_sub(self.reserve_bytes);
        // Every write appends to the WAL and later to a blob file, growing or not.
        if data_bytes > disk_free {
            self.log_refusal("disk reserve", data_bytes, disk_free);
            return Err(ChunkError::NoSpace { needed_bytes: data_bytes, free_bytes: disk_free });
        }
        if let Some(limit) = self.capacity_limit_bytes {
            let free = limit.saturating_sub(self.stored_bytes());
            if growth_bytes > free {
                self.log_refusal("capacity", growth_bytes, free);
                return Err(ChunkError::NoSpace { needed_bytes: growth_bytes, free_bytes: free });
            }
        }
        Ok(())
    }

    /// An operator must learn that writes are refused (clients see ENOSPC, not which server).
    fn log_refusal(&self, limit: &'static str, needed_bytes: u64, free_bytes: u64) {
        let mut logged = self.refusal_logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.is_some_and(|at| at.elapsed() < SPACE_WARN_INTERVAL) {
            return;
        }
        *logged = Some(Instant::now());
        tracing::warn!(
            limit,
            needed_bytes,
            free_bytes,
            reserve_bytes = self.reserve_bytes,
            capacity_limit_bytes = self.capacity_limit_bytes,
            "refusing writes: out of space"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_writes_near_a_full_disk() {
        let space = Space::fixed(10_000, 4_000, None);
        assert_eq!(space.free_bytes(), 6_000);
        assert!(space.check_write(6_000, 6_000).is_ok());
        assert!(matches!(space.check_write(6_001, 0), Err(ChunkError::NoSpace { free_bytes: 6_000, .. })));
    }

    #[test]
    fn capacity_limit_counts_logical_bytes() {
        let space = Space::fixed(1 << 40, 0, Some(1_000));
        space.record_length_change(0, 900);
        assert_eq!(space.free_bytes(), 100);
        assert!(space.check_write(500, 100).is_ok(), "overwrites within the length need no capacity");
        assert!(space.check_write(500, 101).is_err());
        space.record_length_change(900, 100);
        assert_eq!(space.stored_bytes(), 100);
        space.record_length_change(5_000, 0);
        assert_eq!(space.stored_bytes(), 0);
    }

    #[test]
    fn statvfs_reads_the_real_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = Space::for_disk(dir.path().to_path_buf(), 0, None);
        assert!(space.free_bytes() > 0);
        assert!(space.capacity_bytes() >= space.free_bytes());
    }
}
