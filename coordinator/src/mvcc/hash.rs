//! Consistency hashes for `Maintenance.Hash` and `Maintenance.HashKV`: replicas that applied
//! the same log hash equal, so comparing members' hashes detects divergence.

use super::keys::{decode_history_key, decode_i64, META_COMPACTED};
use super::{KvError, KV_HISTORY, KV_META, TABLES};
use crate::rsm::store::StateRead;

/// CRC-32 over every row of every KV and lease table (etcd's `Hash`: the whole backend).
pub fn hash_all(state: &dyn StateRead) -> Result<u32, KvError> {
    let mut h = crc32fast::Hasher::new();
    for table in TABLES {
        h.update(table.as_bytes());
        state.scan(table, &[], None, false, &mut |k, v| {
            h.update(&(k.len() as u64).to_be_bytes());
            h.update(k);
            h.update(&(v.len() as u64).to_be_bytes());
            h.update(v);
            true
        })?;
    }
    Ok(h.finalize())
}

/// CRC-32 over the key history up to `revision` (0 = everything), and the compaction revision
/// (etcd's `HashKV`). Rows are visited in key order, which is the same on every replica.
pub fn hash_kv(state: &dyn StateRead, revision: i64) -> Result<(u32, i64), KvError> {
    let compacted = match state.get(KV_META, META_COMPACTED)? {
        Some(bytes) => decode_i64(&bytes, "compacted revision")?,
        None => 0,
    };
    let mut h = crc32fast::Hasher::new();
    let mut failure = None;
    state.scan(KV_HISTORY, &[], None, false, &mut |k, v| match decode_history_key(k) {
        Ok((_, main, _)) => {
            if revision == 0 || main <= revision {
                h.update(k);
                h.update(v);
            }
            true
        }
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok((h.finalize(), compacted))
}
