//! etcd's `Txn`: compares, then the success or failure branch, as one revision.
//!
//! Order of work, as in etcd v3.4's applier:
//! 1. Every compare on the chosen path (nested txns included) is evaluated against the state
//!    before the txn, so nested compares never see the txn's own writes.
//! 2. Every put on the path is checked (ignore_value/ignore_lease need the key; a lease must
//!    exist), then every range's revision; the first failure fails the whole txn, unapplied.
//! 3. The operations run in order; reads see the txn's earlier writes. All writes share
//!    revision `begin + 1`, with sub-revisions in order of execution.

use std::cmp::Ordering;
use std::collections::HashSet;

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::response_op::Response;
use cairn_proto::etcdserverpb::{Compare, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse};
use cairn_proto::mvccpb::KeyValue;

use super::error::KvError;
use super::kv::{self, validate_delete_range, validate_put};
use super::range::{self, header, validate_range, KeySpan};
use super::writer::Writer;
use super::{lease, writer};
use crate::limits::KV_TXN_OPS_MAX;
use crate::rsm::store::StateRead;

/// Checks a txn the way etcd's API layer does before proposing it: at most `KV_TXN_OPS_MAX`
/// compares or operations per branch (nested txns share the budget as in etcd), no empty keys or
/// empty operations, and no key written twice, or written and deleted, on any one path.
pub fn validate_txn(req: &TxnRequest) -> Result<(), KvError> {
    check_txn(req, KV_TXN_OPS_MAX)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// True if the txn only reads, whatever its compares decide; such a txn may be served from a
/// read view with [`read_txn`] instead of through Raft.
pub fn is_read_only(req: &TxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

fn check_txn(req: &TxnRequest, ops_max: usize) -> Result<(), KvError> {
    let ops = req.compare.len().max(req.success.len()).max(req.failure.len());
    if ops > ops_max {
        return Err(KvError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(KvError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => validate_range(r)?,
            Some(Request::RequestPut(p)) => validate_put(p)?,
            Some(Request::RequestDeleteRange(d)) => validate_delete_range(d)?,
            Some(Request::RequestTxn(t)) => check_txn(t, ops_max - ops)?,
            // etcd answers an empty operation with this (odd) error.
            None => return Err(KvError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted key or range, as etcd's `checkIntervals` sees it.
struct Deletion {
    start: Vec<u8>,
    /// `None` for a single key.
    end: Option<Vec<u8>>,
}

impl Deletion {
    fn covers(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: within one list of operations (and the txns nested in it), a key
/// may not be put twice, nor put and deleted. The two branches of a nested txn exclude each
/// other, so they may put the same key.
///
/// Like etcd, a deletion with range end "\0" (every key from `key` on) takes part in no
/// conflict: etcd's interval tree reads it as the empty interval `[key, "\0")`. Such a txn is
/// well defined here too: operations run in order, so a put after the deletion recreates the key.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deletion>), KvError> {
    let mut dels: Vec<Deletion> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) if d.range_end.as_slice() != [0] => {
                Some(Deletion { start: d.key.clone(), end: (!d.range_end.is_empty()).then(|| d.range_end.clone()) })
            }
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.covers(k)) {
                return Err(KvError::DuplicateKey);
            }
        }
        puts.extend(puts_then.iter().cloned());
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.iter().any(|d| d.covers(&k)) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.covers(&p.key)) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Which branch each txn on the chosen path takes: this txn's, then one per nested txn of the
/// chosen branch, in order.
struct Decision {
    succeeded: bool,
    nested: Vec<Decision>,
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn decide(state: &dyn StateRead, req: &TxnRequest) -> Result<Decision, KvError> {
    let mut succeeded = true;
    for c in &req.compare {
        if !compare_holds(state, c)? {
            succeeded = false;
            break;
        }
    }
    let nested = branch(req, succeeded)
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestTxn(t)) => Some(decide(state, t)),
            _ => None,
        })
        .collect::<Result<_, _>>()?;
    Ok(Decision { succeeded, nested })
}

/// etcd's `applyCompare`: with a range, the compare must hold for every key in it; if no key
/// matches, a value compare fails and the others compare against an all-zero key-value.
fn compare_holds(state: &dyn StateRead, c: &Compare) -> Result<bool, KvError> {
    let kvs = range::latest_in(state, KeySpan::new(&c.key, &c.range_end))?;
    if kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// etcd's `compareKV`. A missing or mismatched target value compares as zero (empty for
/// VALUE); unknown targets compare equal and unknown results hold, as in etcd.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let number = |pick: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(pick).unwrap_or(0);
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&number(|t| match t {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&number(|t| match t {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&number(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&number(|t| match t {
            TargetUnion::Lease(l) => Some(*l),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}

fn out_of_step() -> KvError {
    KvError::Malformed("txn decision out of step with its operations".into())
}

/// Visits every non-txn operation on the chosen path, depth first, in order.
fn for_each_op(
    req: &TxnRequest,
    decision: &Decision,
    f: &mut dyn FnMut(&RequestOp) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let mut nested = decision.nested.iter();
    for op in branch(req, decision.succeeded) {
        match &op.request {
            Some(Request::RequestTxn(t)) => for_each_op(t, nested.next().ok_or_else(out_of_step)?, f)?,
            _ => f(op)?,
        }
    }
    Ok(())
}

/// etcd's `checkRequestPut` and `checkRequestRange` over the chosen path, against the state
/// before the txn.
fn check_path(state: &dyn StateRead, req: &TxnRequest, decision: &Decision, begin: i64) -> Result<(), KvError> {
    for_each_op(req, decision, &mut |op| {
        let Some(Request::RequestPut(p)) = &op.request else {
            return Ok(());
        };
        if (p.ignore_value || p.ignore_lease) && range::latest(state, &p.key)?.is_none() {
            return Err(KvError::KeyNotFound);
        }
        if p.lease != 0 && !lease::exists(state, p.lease)? {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    })?;
    // etcd compares with its compaction revision, -1 before the first compaction.
    let compacted = range::compacted(state)?.unwrap_or(-1);
    for_each_op(req, decision, &mut |op| {
        let Some(Request::RequestRange(r)) = &op.request else {
            return Ok(());
        };
        if r.revision == 0 {
            Ok(())
        } else if r.revision > begin {
            Err(KvError::FutureRev)
        } else if r.revision < compacted {
            Err(KvError::Compacted { compact_revision: compacted.max(0) })
        } else {
            Ok(())
        }
    })
}

/// Runs the chosen branch. Sub-responses carry etcd's revisions: a range sees the revision so
/// far, a put the txn's revision, a delete the txn's revision once anything changed; a nested
/// txn's header is empty, as in etcd.
fn execute(w: &mut Writer<'_>, req: &TxnRequest, decision: &Decision) -> Result<TxnResponse, KvError> {
    let mut nested = decision.nested.iter();
    let ops = branch(req, decision.succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                Some(Response::ResponseRange(range::range_at(w.view(), r, w.revision())?))
            }
            Some(Request::RequestPut(p)) => Some(Response::ResponsePut(kv::put(w, p)?)),
            Some(Request::RequestDeleteRange(d)) => Some(Response::ResponseDeleteRange(kv::delete_range(w, d)?)),
            Some(Request::RequestTxn(t)) => {
                Some(Response::ResponseTxn(execute(w, t, nested.next().ok_or_else(out_of_step)?)?))
            }
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse { header: Some(ResponseHeader::default()), succeeded: decision.succeeded, responses })
}

/// A `Txn` command: one revision for all its writes.
pub(crate) fn apply_txn(w: &mut Writer<'_>, req: &TxnRequest) -> Result<TxnResponse, KvError> {
    validate_txn(req)?;
    let begin = w.revision();
    let decision = decide(w.view(), req)?;
    check_path(w.view(), req, &decision, begin)?;
    let mut resp = execute(w, req, &decision)?;
    resp.header = Some(header(w.revision()));
    Ok(resp)
}

/// Serves a read-only txn (see [`is_read_only`]) from a consistent view, outside Raft.
pub fn read_txn(state: &dyn StateRead, req: &TxnRequest) -> Result<TxnResponse, KvError> {
    if !is_read_only(req) {
        return Err(KvError::Malformed("read_txn given a txn that writes".into()));
    }
    let mut w = writer::Writer::new(state)?;
    apply_txn(&mut w, req)
}
