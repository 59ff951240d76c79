//! What a failed test leaves behind: its cluster's logs and metadata, not its chunk data.
//!
//! Keeping the whole directory of every failed test once filled CI's disk: one failed copy test
//! left 1.3 GiB of chunks, the chunkservers of every later test found less free space than their
//! reserve, and eight tests failed with ENOSPC behind the first one. Logs are what a diagnosis
//! needs; `CAIRN_TEST_KEEP_DATA=1` keeps the chunk data too.

use std::path::Path;

use tempfile::TempDir;

/// Set to `1` to keep a failed test's chunk data and scratch files as well as its logs.
pub const KEEP_DATA_ENV: &str = "CAIRN_TEST_KEEP_DATA";

/// Keeps `dir` after a failed test, minus the bulky parts (unless [`KEEP_DATA_ENV`] is set),
/// and says where it is, what was dropped and how much disk is left (a full disk fails tests
/// in ways that look like bugs).
pub fn keep_for_diagnosis(dir: TempDir) -> String {
    keep(dir, std::env::var(KEEP_DATA_ENV).is_ok_and(|v| v == "1"))
}

fn keep(dir: TempDir, keep_data: bool) -> String {
    let path = dir.keep();
    let dropped = if keep_data { Vec::new() } else { drop_bulk(&path) };
    let mut text = format!("{}", path.display());
    if !dropped.is_empty() {
        text.push_str(&format!(" (removed to save disk: {}; {KEEP_DATA_ENV}=1 keeps them)", dropped.join(", ")));
    }
    if let Some(free) = cairn_fs_client::dev::disk_available_bytes(&path) {
        text.push_str(&format!("; {:.1} GiB free on its disk", free as f64 / (1u64 << 30) as f64));
    }
    text
}

/// Removes the chunkservers' data directories and the scratch directory (local copies of test
/// files). Never follows into a mount: only these names directly under `path` are touched, and
/// `remove_dir_all` does not cross into a FUSE mount because mounts are under `mnt*`, not here.
fn drop_bulk(path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
    let mut dropped = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bulky = name.starts_with("chunkserver-") || name == "scratch";
        if bulky && entry.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir_all(entry.path()).is_ok() {
            dropped.push(name);
        }
    }
    dropped.sort();
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_logs_and_drops_chunk_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["logs", "metaserver-1", "chunkserver-1/blobs", "scratch/local"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        std::fs::write(dir.path().join("logs/chunkserver-1.log"), b"log").expect("write");
        std::fs::write(dir.path().join("chunkserver-1/blobs/000001.blob"), b"data").expect("write");
        let path = dir.path().to_path_buf();
        let text = keep(dir, false);
        assert!(text.contains("removed to save disk: chunkserver-1, scratch"), "{text}");
        assert!(path.join("logs/chunkserver-1.log").exists() && path.join("metaserver-1").exists());
        assert!(!path.join("chunkserver-1").exists() && !path.join("scratch").exists());
        std::fs::remove_dir_all(&path).expect("clean up");
    }
}
