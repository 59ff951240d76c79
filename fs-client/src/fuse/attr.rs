//! Conversions between the metaserver's protobuf types and FUSE's: attributes, file types,
//! times, and the caller's credentials (supplementary groups come from /proc).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::meta::{self, Credentials, FileType as PbFileType, Timespec};
use fuser::{FileAttr, FileType, INodeNo};

use crate::limits::{FUSE_BLKSIZE_BYTES, PROC_STATUS_READ_BYTES};

pub fn file_type(t: i32) -> FileType {
    match PbFileType::try_from(t).unwrap_or(PbFileType::Regular) {
        PbFileType::Directory => FileType::Directory,
        PbFileType::Symlink => FileType::Symlink,
        PbFileType::Fifo => FileType::NamedPipe,
        PbFileType::Socket => FileType::Socket,
        PbFileType::CharDevice => FileType::CharDevice,
        PbFileType::BlockDevice => FileType::BlockDevice,
        PbFileType::Regular | PbFileType::Unspecified => FileType::RegularFile,
    }
}

/// The metaserver file type of an st_mode's type bits.
pub fn type_from_mode(mode: u32) -> PbFileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => PbFileType::Directory,
        libc::S_IFLNK => PbFileType::Symlink,
        libc::S_IFIFO => PbFileType::Fifo,
        libc::S_IFSOCK => PbFileType::Socket,
        libc::S_IFCHR => PbFileType::CharDevice,
        libc::S_IFBLK => PbFileType::BlockDevice,
        _ => PbFileType::Regular,
    }
}

pub fn system_time(t: Option<&Timespec>) -> SystemTime {
    match t {
        Some(t) if t.sec >= 0 => UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec.min(999_999_999)),
        Some(t) => {
            // Before 1970: subtract whole seconds, then add the nanoseconds back.
            let before = UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs())).unwrap_or(UNIX_EPOCH);
            before + Duration::from_nanos(u64::from(t.nsec.min(999_999_999)))
        }
        None => UNIX_EPOCH,
    }
}

pub fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                Timespec { sec: -(d.as_secs() as i64), nsec: 0 }
            } else {
                Timespec { sec: -(d.as_secs() as i64) - 1, nsec: 1_000_000_000 - d.subsec_nanos() }
            }
        }
    }
}

pub fn now() -> Timespec {
    timespec(SystemTime::now())
}

/// FUSE attributes of a metaserver inode. `size` overrides the server's size (a file with
/// buffered writes is longer locally than on the server).
/// `mode` after a write by a caller without CAP_FSETID (Linux's setattr_should_drop_suidgid):
/// setuid dropped, and setgid when the group may execute or the caller is not in the file's
/// group (`in_group` false).
pub fn suid_killed(mode: u32, in_group: bool) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 || !in_group {
        mode &= !libc::S_ISGID;
    }
    mode
}

/// `st_blocks` (512-byte units) of `a` when its size here is `size`: the bytes the server
/// reports allocated plus what local writes added past the server's size. Without the server's
/// figure (older servers, some answers), the size.
fn blocks(a: &meta::Attr, size: u64) -> u64 {
    let bytes = match a.allocated_bytes {
        Some(allocated) => allocated.saturating_add(size.saturating_sub(a.size)),
        None => size,
    };
    bytes.div_ceil(512)
}

pub fn file_attr(a: &meta::Attr, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size,
        blocks: blocks(a, size),
        atime: system_time(a.atime.as_ref()),
        mtime: system_time(a.mtime.as_ref()),
        ctime: system_time(a.ctime.as_ref()),
        crtime: system_time(a.ctime.as_ref()),
        kind: file_type(a.r#type),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: FUSE_BLKSIZE_BYTES,
        flags: 0,
    }
}

/// Supplementary groups of a process, from the `Groups:` line of /proc/<pid>/status.
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// The caller's credentials: uid and gid from the request, supplementary groups from /proc
/// (empty when the process is gone).
pub fn credentials(uid: u32, gid: u32, pid: u32) -> Credentials {
    let groups = if pid == 0 { Vec::new() } else { proc_status(pid).map(|s| parse_groups(&s)).unwrap_or_default() };
    Credentials { uid, gid, groups }
}

/// /proc/PID/status in one read. It is read on every FUSE request, on the thread that reads
/// /dev/fuse; `read_to_string` knows no size for /proc files and reads it in nine growing
/// pieces.
fn proc_status(pid: u32) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(format!("/proc/{pid}/status"))?;
    let mut buf = vec![0u8; PROC_STATUS_READ_BYTES];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..])? {
            0 => break,
            n => len += n,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_drop_setuid_and_setgid_as_linux_does() {
        assert_eq!(suid_killed(0o6777, true), 0o777, "setgid with group execute goes");
        assert_eq!(suid_killed(0o6777, false), 0o777);
        assert_eq!(suid_killed(0o2767, true), 0o2767, "without group execute it stays for a group member");
        assert_eq!(suid_killed(0o2767, false), 0o767, "and goes for others");
        assert_eq!(suid_killed(0o4755, true), 0o755);
        assert_eq!(suid_killed(0o1777, false), 0o1777, "the sticky bit stays");
    }

    #[test]
    fn times_round_trip_with_nanoseconds() {
        for ts in [
            Timespec { sec: 0, nsec: 0 },
            Timespec { sec: 1_700_000_000, nsec: 123_456_789 },
            Timespec { sec: -1, nsec: 500_000_000 },
            Timespec { sec: -100, nsec: 0 },
        ] {
            assert_eq!(timespec(system_time(Some(&ts))), ts);
        }
    }

    #[test]
    fn proc_status_is_read_whole() {
        let me = std::process::id();
        let status = proc_status(me).expect("own status");
        assert!(status.contains("\nGroups:") && status.ends_with('\n'), "{status}");
        assert!(proc_status(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn attr_conversion() {
        let a = meta::Attr {
            ino: 42,
            r#type: PbFileType::Directory as i32,
            mode: libc::S_IFDIR | 0o1755,
            uid: 7,
            gid: 8,
            size: 4096,
            nlink: 3,
            rdev: 0,
            mtime: Some(Timespec { sec: 10, nsec: 5 }),
            ..Default::default()
        };
        let f = file_attr(&a, 5000);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!(f.kind, FileType::Directory);
        assert_eq!(f.perm, 0o1755);
        assert_eq!((f.uid, f.gid, f.nlink, f.size, f.blocks), (7, 8, 3, 5000, 10));
        assert_eq!(f.mtime, UNIX_EPOCH + Duration::new(10, 5));
        assert_eq!(f.blksize, FUSE_BLKSIZE_BYTES);
    }

    #[test]
    fn blocks_follow_the_allocation_plus_local_growth() {
        let sparse = meta::Attr { size: 1 << 30, allocated_bytes: Some(4096), ..Default::default() };
        assert_eq!(file_attr(&sparse, 1 << 30).blocks, 8);
        // 1 000 bytes written past the server's end, still buffered here.
        assert_eq!(file_attr(&sparse, (1 << 30) + 1000).blocks, 10);
        let unknown = meta::Attr { size: 1 << 30, allocated_bytes: None, ..Default::default() };
        assert_eq!(file_attr(&unknown, 1 << 30).blocks, 1 << 21);
    }

    #[test]
    fn mode_types() {
        assert_eq!(type_from_mode(libc::S_IFIFO | 0o644), PbFileType::Fifo);
        assert_eq!(type_from_mode(libc::S_IFREG | 0o644), PbFileType::Regular);
        assert_eq!(type_from_mode(0o644), PbFileType::Regular);
        assert_eq!(type_from_mode(libc::S_IFBLK), PbFileType::BlockDevice);
        assert_eq!(file_type(PbFileType::Socket as i32), FileType::Socket);
    }

    #[test]
    fn groups_from_proc_status() {
        let status = "Name:\tbash\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), [4, 24, 27, 1000]);
        assert!(parse_groups("Groups:\t\n").is_empty());
        assert!(parse_groups("Name: x\n").is_empty());
    }
}
