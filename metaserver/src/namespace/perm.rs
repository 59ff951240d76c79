//! Permission rules, as Linux applies them to a local filesystem.
//!
//! The metaserver checks them itself: a client that skips the kernel's checks (or a program
//! talking gRPC directly) cannot bypass them. Root (uid 0) bypasses read and write checks and
//! needs one execute bit for execute on a non-directory, like a process with CAP_DAC_OVERRIDE;
//! it also bypasses ownership rules (CAP_FOWNER, CAP_CHOWN, CAP_FSETID, CAP_MKNOD).

use super::errno::Errno;
use super::types::{Caller, Inode, S_ISVTX};

pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// Whether `caller` has every access in `mask` (`MAY_*` bits) to `inode`.
pub fn permits(inode: &Inode, caller: &Caller, mask: u32) -> bool {
    if caller.is_root() {
        return mask & MAY_EXEC == 0 || inode.is_dir() || inode.mode & 0o111 != 0;
    }
    let bits = if caller.uid == inode.uid {
        (inode.mode >> 6) & 7
    } else if caller.in_group(inode.gid) {
        (inode.mode >> 3) & 7
    } else {
        inode.mode & 7
    };
    bits & mask == mask
}

/// EACCES unless `caller` has `mask` access.
pub fn check(inode: &Inode, caller: &Caller, mask: u32) -> Result<(), Errno> {
    if permits(inode, caller, mask) {
        Ok(())
    } else {
        Err(Errno::Acces)
    }
}

/// Whether `caller` owns `inode` or is root (the "owner or CAP_FOWNER" rule).
pub fn owns(inode: &Inode, caller: &Caller) -> bool {
    caller.is_root() || caller.uid == inode.uid
}

/// The sticky-directory rule for removing or renaming `victim` out of `dir`: in a sticky
/// directory only the victim's owner, the directory's owner or root may. EPERM otherwise.
pub fn check_sticky(dir: &Inode, victim: &Inode, caller: &Caller) -> Result<(), Errno> {
    if dir.mode & S_ISVTX == 0 || caller.is_root() || caller.uid == dir.uid || caller.uid == victim.uid {
        Ok(())
    } else {
        Err(Errno::Perm)
    }
}
