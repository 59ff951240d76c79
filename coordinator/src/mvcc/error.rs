//! The MVCC store's errors, with etcd's exact messages.
//!
//! `Display` of every etcd-defined variant is the string etcd v3.4 puts in its gRPC status
//! (`etcdserver/api/v3rpc/rpctypes/error.go`), so the API layer can pass it through unchanged;
//! mapping to gRPC status codes is the API layer's job.
//!
//! Deterministic failures of a replicated command (a lease that does not exist, a compacted
//! revision) travel back to the proposer inside `InternalResponse` as an `ApplyError`
//! `{code, message}`; [`KvError::code`] and [`KvError::from_code`] make that round trip. Storage
//! failures ([`KvError::Store`]) are never sent that way: they are not deterministic, and the
//! runtime stops applying when one happens.

use crate::rsm::store::StoreError;

/// An error of the MVCC key-value and lease store.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The requested revision was compacted away. `compact_revision` is the store's compaction
    /// revision when known (watchers report it to clients); 0 after a trip through `ApplyError`.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// A command or request Cairn cannot interpret (undecodable bytes, an empty oneof).
    #[error("cairn: malformed request: {0}")]
    Malformed(String),
    /// An error code this build does not know, e.g. from a newer replica; kept verbatim.
    #[error("{message}")]
    Other { code: i32, message: String },
    /// The storage engine failed, or stored data did not decode. Never deterministic, never
    /// returned to a client as an apply result.
    #[error(transparent)]
    Store(#[from] StoreError),
}

// Stable codes for `ApplyError.code`. They are part of the replicated log's format: never
// renumber one, only add.
const CODE_COMPACTED: i32 = 1;
const CODE_FUTURE_REV: i32 = 2;
const CODE_LEASE_NOT_FOUND: i32 = 3;
const CODE_LEASE_EXIST: i32 = 4;
const CODE_LEASE_TTL_TOO_LARGE: i32 = 5;
const CODE_TOO_MANY_OPS: i32 = 6;
const CODE_DUPLICATE_KEY: i32 = 7;
const CODE_KEY_NOT_FOUND: i32 = 8;
const CODE_VALUE_PROVIDED: i32 = 9;
const CODE_LEASE_PROVIDED: i32 = 10;
const CODE_EMPTY_KEY: i32 = 11;
const CODE_REQUEST_TOO_LARGE: i32 = 12;
const CODE_MALFORMED: i32 = 13;
const CODE_STORE: i32 = 14;

impl KvError {
    /// A stable number identifying the variant, for `ApplyError.code`.
    pub fn code(&self) -> i32 {
        match self {
            KvError::Compacted { .. } => CODE_COMPACTED,
            KvError::FutureRev => CODE_FUTURE_REV,
            KvError::LeaseNotFound => CODE_LEASE_NOT_FOUND,
            KvError::LeaseExist => CODE_LEASE_EXIST,
            KvError::LeaseTtlTooLarge => CODE_LEASE_TTL_TOO_LARGE,
            KvError::TooManyOps => CODE_TOO_MANY_OPS,
            KvError::DuplicateKey => CODE_DUPLICATE_KEY,
            KvError::KeyNotFound => CODE_KEY_NOT_FOUND,
            KvError::ValueProvided => CODE_VALUE_PROVIDED,
            KvError::LeaseProvided => CODE_LEASE_PROVIDED,
            KvError::EmptyKey => CODE_EMPTY_KEY,
            KvError::RequestTooLarge => CODE_REQUEST_TOO_LARGE,
            KvError::Malformed(_) => CODE_MALFORMED,
            KvError::Other { code, .. } => *code,
            KvError::Store(_) => CODE_STORE,
        }
    }

    /// Rebuilds an error from `ApplyError {code, message}`. Unknown codes become
    /// [`KvError::Other`] with the message kept, so nothing is lost across versions.
    pub fn from_code(code: i32, message: String) -> KvError {
        match code {
            CODE_COMPACTED => KvError::Compacted { compact_revision: 0 },
            CODE_FUTURE_REV => KvError::FutureRev,
            CODE_LEASE_NOT_FOUND => KvError::LeaseNotFound,
            CODE_LEASE_EXIST => KvError::LeaseExist,
            CODE_LEASE_TTL_TOO_LARGE => KvError::LeaseTtlTooLarge,
            CODE_TOO_MANY_OPS => KvError::TooManyOps,
            CODE_DUPLICATE_KEY => KvError::DuplicateKey,
            CODE_KEY_NOT_FOUND => KvError::KeyNotFound,
            CODE_VALUE_PROVIDED => KvError::ValueProvided,
            CODE_LEASE_PROVIDED => KvError::LeaseProvided,
            CODE_EMPTY_KEY => KvError::EmptyKey,
            CODE_REQUEST_TOO_LARGE => KvError::RequestTooLarge,
            CODE_MALFORMED => {
                let detail = message.strip_prefix("cairn: malformed request: ").unwrap_or(&message);
                KvError::Malformed(detail.to_string())
            }
            _ => KvError::Other { code, message },
        }
    }

    /// Stored data that does not decode: the state is damaged, which is as fatal as an engine
    /// failure.
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> KvError {
        KvError::Store(StoreError::Engine(format!("corrupt mvcc state: {what}")))
    }
}
