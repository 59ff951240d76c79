//! A small builder for etcd transactions: `if compares then ops else ops`, applied atomically.
//!
//! ```
//! use cairn_coordinator::client::{CmpOp, Compare, LeaseId, Revision, Txn, TxnOp};
//! // Register under a lease unless someone else already holds the key.
//! let txn = Txn::new()
//!     .when([Compare::create_revision("/chunkservers/7", CmpOp::Equal, Revision(0))])
//!     .and_then([TxnOp::put("/chunkservers/7", "10.0.0.7:7000", Some(LeaseId(42)))])
//!     .or_else([TxnOp::get("/chunkservers/7")]);
//! ```

use cairn_proto::etcdserverpb::{
    compare, request_op, response_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};

use super::types::{prefix_range_end, KeyValue, LeaseId, Range, Revision};

/// How a [`Compare`] relates the stored value to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

impl CmpOp {
    fn to_proto(self) -> i32 {
        let result = match self {
            CmpOp::Equal => compare::CompareResult::Equal,
            CmpOp::Greater => compare::CompareResult::Greater,
            CmpOp::Less => compare::CompareResult::Less,
            CmpOp::NotEqual => compare::CompareResult::NotEqual,
        };
        result as i32
    }
}

/// One condition of a transaction, on one key (or, with [`Compare::with_prefix`], on every key
/// under a prefix). A key that does not exist has version, create and mod revision 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Compare(cairn_proto::etcdserverpb::Compare);

impl Compare {
    fn new(key: Vec<u8>, op: CmpOp, target: compare::CompareTarget, union: compare::TargetUnion) -> Self {
        Compare(cairn_proto::etcdserverpb::Compare {
            result: op.to_proto(),
            target: target as i32,
            key,
            range_end: Vec::new(),
            target_union: Some(union),
        })
    }

    pub fn value(key: impl Into<Vec<u8>>, op: CmpOp, value: impl Into<Vec<u8>>) -> Self {
        Compare::new(key.into(), op, compare::CompareTarget::Value, compare::TargetUnion::Value(value.into()))
    }

    pub fn version(key: impl Into<Vec<u8>>, op: CmpOp, version: i64) -> Self {
        Compare::new(key.into(), op, compare::CompareTarget::Version, compare::TargetUnion::Version(version))
    }

    pub fn create_revision(key: impl Into<Vec<u8>>, op: CmpOp, revision: Revision) -> Self {
        Compare::new(key.into(), op, compare::CompareTarget::Create, compare::TargetUnion::CreateRevision(revision.0))
    }

    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CmpOp, revision: Revision) -> Self {
        Compare::new(key.into(), op, compare::CompareTarget::Mod, compare::TargetUnion::ModRevision(revision.0))
    }

    /// Compares the key's lease; `None` is "no lease".
    pub fn lease(key: impl Into<Vec<u8>>, op: CmpOp, lease: Option<LeaseId>) -> Self {
        let id = lease.map_or(0, |l| l.0);
        Compare::new(key.into(), op, compare::CompareTarget::Lease, compare::TargetUnion::Lease(id))
    }

    /// Applies the condition to every key starting with this compare's key.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_range_end(&self.0.key);
        self
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnOp(RequestOp);

impl TxnOp {
    fn of(request: request_op::Request) -> Self {
        TxnOp(RequestOp { request: Some(request) })
    }

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: Option<LeaseId>) -> Self {
        TxnOp::of(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            lease: lease.map_or(0, |l| l.0),
            ..Default::default()
        }))
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::of(request_op::Request::RequestRange(RangeRequest { key: key.into(), ..Default::default() }))
    }

    pub fn get_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        TxnOp::of(request_op::Request::RequestRange(RangeRequest { key, range_end, ..Default::default() }))
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::of(request_op::Request::RequestDeleteRange(DeleteRangeRequest { key: key.into(), ..Default::default() }))
    }

    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        TxnOp::of(request_op::Request::RequestDeleteRange(DeleteRangeRequest { key, range_end, ..Default::default() }))
    }

    /// A nested transaction.
    pub fn txn(txn: Txn) -> Self {
        TxnOp::of(request_op::Request::RequestTxn(txn.into()))
    }
}

/// A transaction under construction. Convert it into a [`TxnRequest`] (or pass it to
/// [`super::CoordinatorClient::txn`], which takes either).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    request: TxnRequest,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds conditions; all must hold for the success branch to run.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.request.compare.extend(compares.into_iter().map(|c| c.0));
        self
    }

    /// Adds operations to the branch run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.request.success.extend(ops.into_iter().map(|o| o.0));
        self
    }

    /// Adds operations to the branch run when some condition fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.request.failure.extend(ops.into_iter().map(|o| o.0));
        self
    }
}

impl From<Txn> for TxnRequest {
    fn from(txn: Txn) -> TxnRequest {
        txn.request
    }
}

/// Whether `request` only reads, whichever branch runs (then it is safe to retry anywhere).
pub(crate) fn is_read_only(request: &TxnRequest) -> bool {
    request.success.iter().chain(&request.failure).all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) => true,
        Some(request_op::Request::RequestTxn(nested)) => is_read_only(nested),
        _ => false,
    })
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every condition held (and the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// One answer per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

/// The answer to one operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    /// A read; its `revision` is the transaction's.
    Get(Range),
    Put {
        prev: Option<KeyValue>,
    },
    Delete {
        count: i64,
    },
    Txn(TxnOutcome),
}

impl TxnOutcome {
    /// Converts the server's answer; `Err` names what is missing.
    pub(crate) fn from_proto(
        succeeded: bool,
        revision: Revision,
        responses: Vec<ResponseOp>,
    ) -> Result<Self, &'static str> {
        let responses = responses
            .into_iter()
            .map(|op| match op.response {
                Some(response_op::Response::ResponseRange(r)) => Ok(TxnOpResponse::Get(Range {
                    revision,
                    kvs: r.kvs.into_iter().map(KeyValue::from_proto).collect(),
                    more: r.more,
                    count: r.count,
                })),
                Some(response_op::Response::ResponsePut(p)) => {
                    Ok(TxnOpResponse::Put { prev: p.prev_kv.map(KeyValue::from_proto) })
                }
                Some(response_op::Response::ResponseDeleteRange(d)) => Ok(TxnOpResponse::Delete { count: d.deleted }),
                Some(response_op::Response::ResponseTxn(t)) => {
                    TxnOutcome::from_proto(t.succeeded, revision, t.responses).map(TxnOpResponse::Txn)
                }
                None => Err("transaction answer without a response"),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxnOutcome { succeeded, revision, responses })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_the_request() {
        let request: TxnRequest = Txn::new()
            .when([
                Compare::create_revision("k", CmpOp::Equal, Revision(0)),
                Compare::value("p/", CmpOp::Greater, "").with_prefix(),
            ])
            .and_then([TxnOp::put("k", "v", Some(LeaseId(9)))])
            .or_else([TxnOp::get("k")])
            .into();
        assert_eq!(request.compare.len(), 2);
        assert_eq!(request.compare[0].target, compare::CompareTarget::Create as i32);
        assert_eq!(request.compare[0].result, compare::CompareResult::Equal as i32);
        assert_eq!(request.compare[1].range_end, b"p0".to_vec());
        assert!(matches!(
            &request.success[0].request,
            Some(request_op::Request::RequestPut(p)) if p.lease == 9 && p.value == b"v"
        ));
        assert!(!is_read_only(&request));
    }

    #[test]
    fn read_only_transactions_are_recognised() {
        let reads = Txn::new().and_then([TxnOp::get("a"), TxnOp::txn(Txn::new().or_else([TxnOp::get_prefix("b")]))]);
        assert!(is_read_only(&reads.clone().into()));
        let nested_write = reads.or_else([TxnOp::txn(Txn::new().and_then([TxnOp::delete("c")]))]);
        assert!(!is_read_only(&nested_write.into()));
        assert!(is_read_only(&Txn::new().into()));
    }

    #[test]
    fn missing_response_is_malformed_not_a_panic() {
        let outcome = TxnOutcome::from_proto(true, Revision(3), vec![ResponseOp { response: None }]);
        assert!(outcome.is_err());
    }
}
