//! Leases as replicated state: which exist, their granted TTL, and which keys they carry.
//!
//! Only grant, revoke and expiry are replicated. Countdowns, keep-alives and the decision that a
//! lease expired live on the leader (time never enters apply); it proposes `LeaseExpire` for
//! leases it found expired, and a new leader restarts every countdown, as etcd's lessor does.
//! The TTL stored is the granted one; the API layer raises too-small TTLs to its minimum before
//! proposing, since that minimum depends on configuration.

use cairn_proto::coordinator::{LeaseExpire, LeaseExpireResponse};
use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse};

use super::error::KvError;
use super::keys;
use super::range::{self, header, KeySpan};
use super::writer::Writer;
use super::{LEASE_KEYS, LEASE_LEASES};
use crate::limits::LEASE_TTL_SECS_MAX;
use crate::rsm::store::StateRead;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// The TTL it was granted with.
    pub ttl_secs: i64,
}

pub(crate) fn exists(state: &dyn StateRead, id: i64) -> Result<bool, KvError> {
    Ok(state.get(LEASE_LEASES, &keys::lease_id_key(id))?.is_some())
}

/// Every lease, by id.
pub fn lease_ids(state: &dyn StateRead) -> Result<Vec<i64>, KvError> {
    let mut ids = Vec::new();
    let mut failure = None;
    state.scan(LEASE_LEASES, &[], None, false, &mut |k, _| match keys::decode_lease_id(k) {
        Ok(id) => {
            ids.push(id);
            true
        }
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(ids),
    }
}

/// The lease `id`, if it exists.
pub fn lease_get(state: &dyn StateRead, id: i64) -> Result<Option<LeaseInfo>, KvError> {
    match state.get(LEASE_LEASES, &keys::lease_id_key(id))? {
        Some(bytes) => Ok(Some(LeaseInfo { id, ttl_secs: keys::decode_i64(&bytes, "lease ttl")? })),
        None => Ok(None),
    }
}

/// The keys attached to lease `id`, in key order.
pub fn lease_keys(state: &dyn StateRead, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
    let (start, end) = keys::lease_keys_bounds(id);
    let mut out = Vec::new();
    state.scan(LEASE_KEYS, &start, end.as_deref(), false, &mut |k, _| {
        out.push(k[start.len()..].to_vec());
        true
    })?;
    Ok(out)
}

/// `LeaseGrant` with an id the API layer chose (apply cannot pick one deterministically).
pub(crate) fn apply_grant(w: &mut Writer<'_>, req: &LeaseGrantRequest) -> Result<LeaseGrantResponse, KvError> {
    // etcd's lessor answers a zero id with "lease not found".
    if req.id == 0 {
        return Err(KvError::LeaseNotFound);
    }
    if req.ttl > LEASE_TTL_SECS_MAX {
        return Err(KvError::LeaseTtlTooLarge);
    }
    if exists(w.view(), req.id)? {
        return Err(KvError::LeaseExist);
    }
    w.staged_mut().put(LEASE_LEASES, keys::lease_id_key(req.id).to_vec(), keys::i64_bytes(req.ttl).to_vec());
    Ok(LeaseGrantResponse { header: Some(header(w.revision())), id: req.id, ttl: req.ttl, error: String::new() })
}

/// `LeaseRevoke`: deletes the lease and, at one revision, every key attached to it.
pub(crate) fn apply_revoke(w: &mut Writer<'_>, req: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, KvError> {
    if !exists(w.view(), req.id)? {
        return Err(KvError::LeaseNotFound);
    }
    revoke(w, req.id)?;
    Ok(LeaseRevokeResponse { header: Some(header(w.revision())) })
}

/// `LeaseExpire`: revokes each listed lease that still exists, each at its own revision (as if
/// the leader had proposed one revocation per lease, as etcd does). Missing ids are skipped:
/// a client may have revoked the lease while the expiry was in flight.
pub(crate) fn apply_expire(w: &mut Writer<'_>, req: &LeaseExpire) -> Result<LeaseExpireResponse, KvError> {
    let mut revoked = Vec::new();
    for &id in &req.ids {
        if exists(w.view(), id)? {
            revoke(w, id)?;
            w.end_revision();
            revoked.push(id);
        }
    }
    Ok(LeaseExpireResponse { revoked })
}

/// Deletes lease `id` and its keys (in key order, like etcd's lessor) at the open revision.
fn revoke(w: &mut Writer<'_>, id: i64) -> Result<(), KvError> {
    for key in lease_keys(w.view(), id)? {
        match range::latest(w.view(), &key)? {
            Some(kv) if kv.lease == id => {
                w.delete_range(KeySpan::One(&key))?;
            }
            // An attachment without a matching live key: drop the stale entry, keep the key.
            _ => w.staged_mut().delete(LEASE_KEYS, keys::lease_key_entry(id, &key)),
        }
    }
    w.staged_mut().delete(LEASE_LEASES, keys::lease_id_key(id).to_vec());
    Ok(())
}
