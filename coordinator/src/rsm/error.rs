//! Errors of the consensus runtime, as its callers see them.

use super::types::NodeId;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RsmError {
    /// This node cannot serve the request and knows (or does not know) who can.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// No leader is known: an election is under way or the cluster has lost its quorum.
    #[error("no leader")]
    NoLeader,
    /// The request did not finish in time; it may or may not have been applied.
    #[error("request timed out")]
    Timeout,
    #[error("shutting down")]
    ShuttingDown,
    /// A peer failed or answered something unexpected.
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
    /// A membership change that cannot be made (unknown member, already a voter, ...).
    #[error("membership: {0}")]
    Membership(String),
    #[error("{0}")]
    Internal(String),
}
