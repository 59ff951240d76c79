//! Mount options: the typed form shared by `cairn mount` flags, `-o` lists and the
//! `mount.cairn` helper (which mount(8) runs for `mount -t fuse.cairn` and /etc/fstab).

use std::path::PathBuf;
use std::time::Duration;

use crate::limits::{MOUNT_ATTR_TTL_DEFAULT_MS, MOUNT_ENTRY_TTL_DEFAULT_MS, MOUNT_TIMEOUT_DEFAULT_MS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Metaserver gRPC endpoints (host:port).
    pub metaservers: Vec<String>,
    pub foreground: bool,
    pub log_file: Option<PathBuf>,
    /// tracing filter used when RUST_LOG is not set.
    pub log_level: String,
    pub read_only: bool,
    pub allow_other: bool,
    /// Kernel permission checks (on by default; the metaserver checks as well).
    pub default_permissions: bool,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// How long an operation retries an unreachable cluster before failing with EIO.
    pub timeout: Duration,
    /// Generic kernel mount flags passed through (nosuid, nodev, noexec, noatime, ...).
    pub kernel_flags: Vec<String>,
}

impl MountOptions {
    pub fn new(mountpoint: PathBuf, metaservers: Vec<String>) -> MountOptions {
        MountOptions {
            mountpoint,
            metaservers,
            foreground: false,
            log_file: None,
            log_level: "warn".to_owned(),
            read_only: false,
            allow_other: false,
            default_permissions: true,
            attr_ttl: Duration::from_millis(MOUNT_ATTR_TTL_DEFAULT_MS),
            entry_ttl: Duration::from_millis(MOUNT_ENTRY_TTL_DEFAULT_MS),
            timeout: Duration::from_millis(MOUNT_TIMEOUT_DEFAULT_MS),
            kernel_flags: Vec::new(),
        }
    }

    /// Applies one `-o` list (comma-separated). Options that only mean something to mount(8)
    /// or fstab (defaults, noauto, _netdev, ...) are accepted and ignored.
    pub fn apply_o(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let ms = |v: Option<&str>| -> Result<Duration, String> {
                v.ok_or_else(|| format!("{key} needs a value"))?
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|e| format!("{opt}: {e}"))
            };
            match key {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                "default_permissions" => self.default_permissions = true,
                "no_default_permissions" => self.default_permissions = false,
                "attr_ttl_ms" => self.attr_ttl = ms(value)?,
                "entry_ttl_ms" => self.entry_ttl = ms(value)?,
                "timeout_ms" => self.timeout = ms(value)?,
                "log_file" => self.log_file = Some(PathBuf::from(value.ok_or("log_file needs a value")?)),
                "log_level" => self.log_level = value.ok_or("log_level needs a value")?.to_owned(),
                "suid" | "nosuid" | "dev" | "nodev" | "exec" | "noexec" | "atime" | "noatime" | "sync" | "async"
                | "dirsync" => self.kernel_flags.push(key.to_owned()),
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev" | "nofail" | "relatime"
                | "norelatime" | "strictatime" | "lazytime" | "nolazytime" => {}
                k if k.starts_with("x-") || k.starts_with("comment=") => {}
                _ => return Err(format!("unknown mount option {opt:?}")),
            }
        }
        Ok(())
    }
}

/// Parses a metaserver source as written in fstab or `mount -t fuse.cairn SOURCE DIR`:
/// `host:port[,host:port...]`, optionally prefixed with `cairn://` or `cairn:`.
pub fn parse_source(source: &str) -> Vec<String> {
    let s = source.strip_prefix("cairn://").or_else(|| source.strip_prefix("cairn:")).unwrap_or(source);
    s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect()
}

/// The `mount.cairn` helper's command line: `SOURCE MOUNTPOINT [-o opts] [-f] [-n] [-s] [-v]`
/// (what mount(8) passes to /sbin/mount.fuse.cairn).
pub fn parse_helper_args(args: &[String]) -> Result<MountOptions, String> {
    let mut positional = Vec::new();
    let mut o_lists = Vec::new();
    let mut foreground = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => o_lists.push(it.next().ok_or("-o needs a value")?.clone()),
            s if s.starts_with("-o") => o_lists.push(s[2..].to_owned()),
            "-f" => foreground = true,
            // Fake mount, no mtab, sloppy, verbose: nothing to do differently.
            "-n" | "-s" | "-v" => {}
            "-t" => {
                it.next();
            }
            s if s.starts_with('-') => return Err(format!("unknown flag {s:?}")),
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = positional.as_slice() else {
        return Err("usage: mount.cairn HOST:PORT[,HOST:PORT...] MOUNTPOINT [-o OPTIONS]".to_owned());
    };
    let mut options = MountOptions::new(PathBuf::from(mountpoint), parse_source(source));
    options.foreground = foreground;
    for list in o_lists {
        options.apply_o(&list)?;
    }
    if options.metaservers.is_empty() {
        return Err("no metaserver endpoint in the source".to_owned());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o_lists() {
        let mut o = MountOptions::new("/mnt".into(), vec!["a:1".into()]);
        assert!(o.default_permissions && !o.read_only && !o.allow_other);
        o.apply_o("ro,allow_other,attr_ttl_ms=250,entry_ttl_ms=0,timeout_ms=5000,nosuid,_netdev,defaults").expect("ok");
        assert!(o.read_only && o.allow_other);
        assert_eq!(o.attr_ttl, Duration::from_millis(250));
        assert_eq!(o.entry_ttl, Duration::ZERO);
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.kernel_flags, ["nosuid"]);
        o.apply_o("no_default_permissions,rw").expect("ok");
        assert!(!o.default_permissions && !o.read_only);
        assert!(o.apply_o("bogus").is_err());
        assert!(o.apply_o("attr_ttl_ms=x").is_err());
        assert!(o.apply_o("timeout_ms").is_err());
    }

    #[test]
    fn helper_command_line() {
        let args: Vec<String> =
            ["cairn://127.0.0.1:7000,127.0.0.1:7001", "/mnt/c", "-o", "rw,allow_other,log_file=/tmp/x.log", "-n"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let o = parse_helper_args(&args).expect("parse");
        assert_eq!(o.metaservers, ["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert_eq!(o.mountpoint, PathBuf::from("/mnt/c"));
        assert!(o.allow_other && !o.foreground);
        assert_eq!(o.log_file, Some(PathBuf::from("/tmp/x.log")));
        assert!(parse_helper_args(&["only-one".to_string()]).is_err());
        assert_eq!(parse_source("h:1"), ["h:1"]);
        assert_eq!(parse_source("cairn:h:1,h:2"), ["h:1", "h:2"]);
    }
}
