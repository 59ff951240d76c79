//! The client's errors.

use super::types::{LeaseId, Revision};

/// What a call of the client library can fail with.
///
/// The variants say what the caller may conclude. Above all: [`ClientError::OutcomeUnknown`]
/// is the only error after which a write may have been applied; after every other error the
/// write was not applied (or, for [`ClientError::Server`], the server refused it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `connect` was given no endpoint.
    #[error("no coordinator endpoints given")]
    NoEndpoints,
    /// `connect` was given more endpoints than the client supports.
    #[error("{count} coordinator endpoints given; at most {max} are supported")]
    TooManyEndpoints { count: usize, max: usize },
    /// An endpoint could not be parsed as `host:port` or `http://host:port`.
    #[error("invalid coordinator endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The caller passed something the client refuses before asking a server (a non-positive
    /// TTL, options that contradict each other, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Every attempt failed in a way that allowed another (unreachable endpoints, no leader, ...)
    /// and the attempts ran out. Nothing was applied.
    #[error("{operation}: no coordinator could serve the request in {attempts} attempts; last: {last}")]
    Unavailable { operation: &'static str, attempts: u32, last: String },
    /// A write failed in a way that leaves its outcome unknown: the deadline passed, the
    /// connection broke after the request was sent, or the server said "request timed out". The
    /// write may have been applied, or may still be; it is not retried automatically because it
    /// might then be applied twice. Read the state back to find out.
    #[error("{operation}: outcome unknown (the request may or may not have been applied) at {endpoint}: {reason}")]
    OutcomeUnknown { operation: &'static str, endpoint: String, reason: String },
    /// The server answered with an error that retrying elsewhere would not change (a bad request,
    /// a failed precondition, a compacted revision in a read, ...). `message` is etcd's error
    /// string, e.g. "etcdserver: mvcc: required revision has been compacted".
    #[error("{operation}: {endpoint} answered {code:?}: {message}")]
    Server { operation: &'static str, endpoint: String, code: tonic::Code, message: String },
    /// The lease does not exist (never granted, revoked, or expired).
    #[error("lease {lease} not found")]
    LeaseNotFound { lease: LeaseId },
    /// A watch asked for events from a revision the server no longer keeps. Events from
    /// `compact_revision` on are still available; whatever happened before is only visible as
    /// current state (read it, then watch from the read's revision + 1).
    #[error("the watch's start revision has been compacted; the oldest available revision is {compact_revision}")]
    Compacted { compact_revision: Revision },
    /// The server canceled a watch for a reason the client cannot recover from.
    #[error("watch canceled by the server: {reason}")]
    WatchCanceled { reason: String },
    /// A server's answer lacks something the etcd API promises (a response header, an event's
    /// key-value, ...). A write that gets this answer was processed by the server.
    #[error("{operation}: malformed answer from {endpoint}: {what}")]
    Malformed { operation: &'static str, endpoint: String, what: &'static str },
}

impl ClientError {
    /// Whether a write that failed with this error may have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown { .. })
    }
}
