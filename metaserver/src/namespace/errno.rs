//! POSIX error numbers as the namespace returns them: the Linux values, so the FUSE client can
//! hand them to the kernel unchanged. EXDEV is deliberately absent: one namespace spans the
//! whole filesystem, so a rename never crosses devices.

use serde::{Deserialize, Serialize};

/// A deterministic failure of a namespace operation, numbered as on Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Errno {
    #[error("EPERM: operation not permitted")]
    Perm,
    #[error("EINTR: interrupted (a blocking lock wait was cancelled)")]
    Intr,
    #[error("EAGAIN: resource temporarily unavailable (a conflicting lock is held)")]
    Again,
    #[error("ENOENT: no such file or directory")]
    NoEnt,
    #[error("E2BIG: argument list too long")]
    TooBig,
    #[error("EBADF: bad file descriptor")]
    BadF,
    #[error("EACCES: permission denied")]
    Acces,
    #[error("EBUSY: device or resource busy")]
    Busy,
    #[error("EEXIST: file exists")]
    Exist,
    #[error("ENOTDIR: not a directory")]
    NotDir,
    #[error("EISDIR: is a directory")]
    IsDir,
    #[error("EINVAL: invalid argument")]
    Inval,
    #[error("EFBIG: file too large")]
    FBig,
    #[error("ENOSPC: no space left on device")]
    NoSpc,
    #[error("EMLINK: too many links")]
    MLink,
    #[error("ERANGE: result too large")]
    Range,
    #[error("ENAMETOOLONG: file name too long")]
    NameTooLong,
    #[error("ENOLCK: no locks available")]
    NoLck,
    #[error("ENOTEMPTY: directory not empty")]
    NotEmpty,
    #[error("ENODATA: no data available")]
    NoData,
    #[error("EOPNOTSUPP: operation not supported")]
    OpNotSupp,
    #[error("ENOTCONN: filesystem not formatted")]
    NotConn,
    #[error("EIO: input/output error (no replica of a chunk remains)")]
    Io,
    #[error("ESTALE: stale chunk version (fetch the chunk map again)")]
    Stale,
}

impl Errno {
    /// Every variant, for round-trip tests.
    pub const ALL: &'static [Errno] = &[
        Errno::Perm,
        Errno::Intr,
        Errno::Again,
        Errno::NoLck,
        Errno::NoEnt,
        Errno::TooBig,
        Errno::BadF,
        Errno::Acces,
        Errno::Busy,
        Errno::Exist,
        Errno::NotDir,
        Errno::IsDir,
        Errno::Inval,
        Errno::FBig,
        Errno::NoSpc,
        Errno::MLink,
        Errno::Range,
        Errno::NameTooLong,
        Errno::NotEmpty,
        Errno::NoData,
        Errno::OpNotSupp,
        Errno::NotConn,
        Errno::Io,
        Errno::Stale,
    ];

    /// The Linux errno value.
    pub const fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Intr => 4,
            Errno::Again => 11,
            Errno::NoLck => 37,
            Errno::NoEnt => 2,
            Errno::TooBig => 7,
            Errno::BadF => 9,
            Errno::Acces => 13,
            Errno::Busy => 16,
            Errno::Exist => 17,
            Errno::NotDir => 20,
            Errno::IsDir => 21,
            Errno::Inval => 22,
            Errno::FBig => 27,
            Errno::NoSpc => 28,
            Errno::MLink => 31,
            Errno::Range => 34,
            Errno::NameTooLong => 36,
            Errno::NotEmpty => 39,
            Errno::NoData => 61,
            Errno::OpNotSupp => 95,
            Errno::NotConn => 107,
            Errno::Io => 5,
            Errno::Stale => 116,
        }
    }

    /// The symbolic name (`"ENOENT"`), for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Perm => "EPERM",
            Errno::Intr => "EINTR",
            Errno::Again => "EAGAIN",
            Errno::NoLck => "ENOLCK",
            Errno::NoEnt => "ENOENT",
            Errno::TooBig => "E2BIG",
            Errno::BadF => "EBADF",
            Errno::Acces => "EACCES",
            Errno::Busy => "EBUSY",
            Errno::Exist => "EEXIST",
            Errno::NotDir => "ENOTDIR",
            Errno::IsDir => "EISDIR",
            Errno::Inval => "EINVAL",
            Errno::FBig => "EFBIG",
            Errno::NoSpc => "ENOSPC",
            Errno::MLink => "EMLINK",
            Errno::Range => "ERANGE",
            Errno::NameTooLong => "ENAMETOOLONG",
            Errno::NotEmpty => "ENOTEMPTY",
            Errno::NoData => "ENODATA",
            Errno::OpNotSupp => "EOPNOTSUPP",
            Errno::NotConn => "ENOTCONN",
            Errno::Io => "EIO",
            Errno::Stale => "ESTALE",
        }
    }

    /// The variant for a Linux errno value, if the namespace uses it.
    pub fn from_code(code: u32) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| e.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for &e in Errno::ALL {
            assert!(seen.insert(e.code()), "{e:?} reuses a code");
            assert_eq!(Errno::from_code(e.code()), Some(e));
        }
        assert_eq!(Errno::from_code(18), None, "EXDEV is never returned");
    }
}
