//! The one table from domain errors to gRPC status, with etcd v3.4's codes and messages
//! (`etcdserver/api/v3rpc/rpctypes/error.go`), so etcd clients recognise and retry them.

use tonic::{Code, Status};

use crate::mvcc::KvError;
use crate::rsm::RsmError;

/// Errors the etcd API layer produces.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Rsm(#[from] RsmError),
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
        RsmError::Internal(m) => Status::internal(format!("etcdserver: {m}")),
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match &e {
            ApiError::Kv(k) => kv_status(k),
            ApiError::Rsm(r) => rsm_status(r),
        }
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
