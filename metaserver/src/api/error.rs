//! The one table from runtime errors to gRPC status for MetaService. POSIX errors never become a
//! status: they travel in the responses' `errno` field.

use cairn_coordinator::rsm::RsmError;
use tonic::Status;

pub fn status(e: RsmError) -> Status {
    match e {
        RsmError::NotLeader { leader } => Status::unavailable(format!("not the leader (leader: {leader:?})")),
        RsmError::NoLeader => Status::unavailable("no leader"),
        RsmError::Timeout => Status::deadline_exceeded("request timed out; it may or may not have been applied"),
        RsmError::ShuttingDown => Status::unavailable("shutting down"),
        RsmError::Peer { peer, message } => Status::unavailable(format!("peer {peer}: {message}")),
        RsmError::Membership(m) => Status::failed_precondition(format!("membership: {m}")),
        RsmError::Internal(m) => Status::internal(m),
    }
}
