//! etcd's `Put` and `DeleteRange`, as standalone commands and as txn operations.

use cairn_proto::etcdserverpb::{DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse};

use super::error::KvError;
use super::lease;
use super::range::{self, header, KeySpan};
use super::writer::Writer;

/// Checks a put the way etcd's API layer does before proposing it.
pub fn validate_put(req: &PutRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

/// Checks a delete the way etcd's API layer does before proposing it.
pub fn validate_delete_range(req: &DeleteRangeRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// A `Put` command on its own: checks its lease, then writes.
pub(crate) fn apply_put(w: &mut Writer<'_>, req: &PutRequest) -> Result<PutResponse, KvError> {
    validate_put(req)?;
    if req.lease != 0 && !lease::exists(w.view(), req.lease)? {
        return Err(KvError::LeaseNotFound);
    }
    put(w, req)
}

/// Writes a put whose lease the caller has checked (a txn checks all its ops before any runs).
pub(crate) fn put(w: &mut Writer<'_>, req: &PutRequest) -> Result<PutResponse, KvError> {
    let wants_prev = req.ignore_value || req.ignore_lease || req.prev_kv;
    let prev = if wants_prev { range::latest(w.view(), &req.key)? } else { None };
    let (value, lease) = match &prev {
        None if req.ignore_value || req.ignore_lease => return Err(KvError::KeyNotFound),
        Some(p) => (
            if req.ignore_value { p.value.clone() } else { req.value.clone() },
            if req.ignore_lease { p.lease } else { req.lease },
        ),
        None => (req.value.clone(), req.lease),
    };
    let kv = w.put(&req.key, value, lease)?;
    Ok(PutResponse { header: Some(header(kv.mod_revision)), prev_kv: prev.filter(|_| req.prev_kv) })
}

/// Deletes the keys of a `DeleteRange`. The header revision is the revision after it (unchanged
/// if nothing, in this request so far, was changed).
pub(crate) fn delete_range(w: &mut Writer<'_>, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, KvError> {
    validate_delete_range(req)?;
    let deleted = w.delete_range(KeySpan::new(&req.key, &req.range_end))?;
    let count = i64::try_from(deleted.len()).map_err(|_| KvError::Malformed("too many keys".into()))?;
    Ok(DeleteRangeResponse {
        header: Some(header(w.revision())),
        deleted: count,
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    })
}
