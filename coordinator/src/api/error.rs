//! The one table from domain errors to gRPC status, with etcd v3.4's codes and messages
//! (`etcdserver/api/v3rpc/rpctypes/error.go`), so etcd clients recognise and retry them.

use tonic::{Code, Status};

use crate::election::ElectionError;
use crate::lock::LockError;
use crate::membership::MemberError;
use crate::mvcc::KvError;
use crate::rsm::RsmError;

/// Errors the etcd API layer produces.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Rsm(#[from] RsmError),
    #[error(transparent)]
    Member(#[from] MemberError),
    /// The NOSPACE alarm is raised on this member.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

pub fn kv_status(e: &KvError) -> Status {
    let code = match e {
        KvError::Compacted { .. } | KvError::FutureRev | KvError::LeaseTtlTooLarge => Code::OutOfRange,
        KvError::LeaseNotFound => Code::NotFound,
        KvError::LeaseExist => Code::FailedPrecondition,
        KvError::TooManyOps
        | KvError::DuplicateKey
        | KvError::KeyNotFound
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::EmptyKey
        | KvError::RequestTooLarge
        | KvError::Malformed(_) => Code::InvalidArgument,
        KvError::Other { .. } => Code::Unknown,
        KvError::Store(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

pub fn rsm_status(e: &RsmError) -> Status {
    match e {
        RsmError::NotLeader { .. } | RsmError::NoLeader => Status::unavailable("etcdserver: no leader"),
        RsmError::Timeout => Status::unavailable("etcdserver: request timed out"),
        RsmError::ShuttingDown => Status::unavailable("etcdserver: server stopped"),
        RsmError::Peer { .. } => Status::unavailable(format!("etcdserver: {e}")),
        RsmError::Membership(m) => Status::failed_precondition(format!("etcdserver: {m}")),
        RsmError::Internal(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

pub fn member_status(e: &MemberError) -> Status {
    let code = match e {
        MemberError::NotFound => Code::NotFound,
        MemberError::PeerUrlExists | MemberError::NotLearner | MemberError::LastVoter => Code::FailedPrecondition,
        MemberError::BadPeerUrl(_) => Code::InvalidArgument,
    };
    Status::new(code, e.to_string())
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match &e {
            ApiError::Kv(k) => kv_status(k),
            ApiError::Rsm(r) => rsm_status(r),
            ApiError::Member(m) => member_status(m),
            ApiError::NoSpace => Status::resource_exhausted(e.to_string()),
        }
    }
}

// ---- Lock and Election ----
//
// etcd 3.4 serves these two services through an embedded client, which turns every failure into
// a plain Go error: gRPC code UNKNOWN with etcd's message ("etcdserver: requested lease not
// found", "election: not leader", ...). Cairn answers the same for failures that are answers;
// failures of availability keep their UNAVAILABLE codes so that clients retry them.

pub fn lock_status(e: &LockError) -> Status {
    match e {
        LockError::Api(ApiError::Rsm(r)) => rsm_status(r),
        LockError::Api(ApiError::Kv(k @ KvError::Store(_))) => kv_status(k),
        LockError::Api(ApiError::Kv(k)) => Status::unknown(k.to_string()),
        LockError::Api(ApiError::Member(m)) => member_status(m),
        LockError::Api(ApiError::NoSpace) => Status::resource_exhausted(e.to_string()),
        LockError::TooManyWaiters => Status::resource_exhausted(e.to_string()),
    }
}

pub fn election_status(e: &ElectionError) -> Status {
    match e {
        ElectionError::Lock(l) => lock_status(l),
        ElectionError::NotLeader | ElectionError::NoLeader | ElectionError::MissingLeaderKey => {
            Status::unknown(e.to_string())
        }
    }
}

impl From<LockError> for Status {
    fn from(e: LockError) -> Status {
        lock_status(&e)
    }
}

impl From<ElectionError> for Status {
    fn from(e: ElectionError) -> Status {
        election_status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_codes_and_strings() {
        let s = kv_status(&KvError::Compacted { compact_revision: 3 });
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(kv_status(&KvError::LeaseNotFound).code(), Code::NotFound);
        assert_eq!(kv_status(&KvError::TooManyOps).message(), "etcdserver: too many operations in txn request");
        assert_eq!(rsm_status(&RsmError::NoLeader).message(), "etcdserver: no leader");
    }
}
