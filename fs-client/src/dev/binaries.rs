//! Finding the server binaries.
//!
//! `cargo build` puts every workspace binary in `target/<profile>/`; a `cargo test` binary lives
//! one level down in `target/<profile>/deps/`. So the directory of the running executable (or
//! its parent, when it is called `deps`) holds the servers for both `cairn` and the tests,
//! unless `CAIRN_BIN_DIR` says otherwise.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{DevError, ServiceKind};

/// Environment variable naming the directory that holds the server binaries.
pub const BIN_DIR_ENV: &str = "CAIRN_BIN_DIR";

/// The directory holding the server binaries for this process: `$CAIRN_BIN_DIR` if set and
/// non-empty, else the current executable's directory (its parent if that is `deps`).
pub fn bin_dir() -> Result<PathBuf, DevError> {
    let env = std::env::var_os(BIN_DIR_ENV);
    if let Some(dir) = env.as_ref().filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| DevError::io("find the current executable", e))?;
    Ok(bin_dir_from(env, &exe))
}

/// The pure rule behind [`bin_dir`], given the value of `CAIRN_BIN_DIR` and the executable path.
pub fn bin_dir_from(env: Option<OsString>, exe: &Path) -> PathBuf {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|name| name == "deps") {
        if let Some(parent) = dir.parent() {
            return parent.to_path_buf();
        }
    }
    dir.to_path_buf()
}

/// The path of `kind`'s binary in `dir`, or [`DevError::BinaryNotFound`].
pub fn binary_path(dir: &Path, kind: ServiceKind) -> Result<PathBuf, DevError> {
    let path = dir.join(kind.binary_name());
    if path.is_file() {
        Ok(path)
    } else {
        Err(DevError::BinaryNotFound { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins() {
        let dir = bin_dir_from(Some("/opt/cairn/bin".into()), Path::new("/work/target/debug/cairn"));
        assert_eq!(dir, PathBuf::from("/opt/cairn/bin"));
    }

    #[test]
    fn empty_env_is_ignored() {
        let dir = bin_dir_from(Some("".into()), Path::new("/work/target/debug/cairn"));
        assert_eq!(dir, PathBuf::from("/work/target/debug"));
    }

    #[test]
    fn exe_dir_for_a_normal_binary() {
        let dir = bin_dir_from(None, Path::new("/work/target/release/cairn"));
        assert_eq!(dir, PathBuf::from("/work/target/release"));
    }

    #[test]
    fn deps_parent_for_a_test_binary() {
        let dir = bin_dir_from(None, Path::new("/work/target/debug/deps/multi_process-0123abcd"));
        assert_eq!(dir, PathBuf::from("/work/target/debug"));
    }

    #[test]
    fn missing_binary_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = binary_path(tmp.path(), ServiceKind::Coordinator).expect_err("missing");
        assert!(err.to_string().contains("cairn-coordinator"), "{err}");
        std::fs::write(tmp.path().join("cairn-coordinator"), b"").expect("write");
        assert!(binary_path(tmp.path(), ServiceKind::Coordinator).is_ok());
    }
}
