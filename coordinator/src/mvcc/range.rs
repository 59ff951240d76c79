//! Reading keys: etcd's `Range`, at the current revision or an older one.
//!
//! Everything here takes a `&dyn StateRead`, so the same code answers a client read on a
//! consistent view outside Raft and a range inside a txn during apply (through the txn's staged
//! writes).

use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_proto::mvccpb::KeyValue;

use super::error::KvError;
use super::keys::{self, META_COMPACTED, META_REVISION};
use super::{KV_HISTORY, KV_LATEST, KV_META};
use crate::rsm::store::StateRead;

/// The revision of an empty store, as in etcd: the first change is revision 2.
pub(crate) const INITIAL_REVISION: i64 = 1;

/// A set of user keys as etcd requests name it with `key` and `range_end`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeySpan<'k> {
    /// `range_end` empty: just `key`.
    One(&'k [u8]),
    /// `range_end` is "\0": every key >= `key`.
    From(&'k [u8]),
    /// Every key in `[key, range_end)`; empty when `range_end <= key`.
    Between(&'k [u8], &'k [u8]),
}

impl<'k> KeySpan<'k> {
    pub(crate) fn new(key: &'k [u8], range_end: &'k [u8]) -> Self {
        match range_end {
            [] => KeySpan::One(key),
            [0] => KeySpan::From(key),
            end => KeySpan::Between(key, end),
        }
    }

    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeySpan::One(key) => k == key,
            KeySpan::From(key) => k >= key,
            KeySpan::Between(key, end) => k >= key && k < end,
        }
    }
}

fn meta_i64(state: &dyn StateRead, key: &[u8]) -> Result<Option<i64>, KvError> {
    match state.get(KV_META, key)? {
        Some(bytes) => Ok(Some(keys::decode_i64(&bytes, "kv_meta")?)),
        None => Ok(None),
    }
}

/// The store revision: the revision of the latest change, 1 for an empty store.
pub fn current_revision(state: &dyn StateRead) -> Result<i64, KvError> {
    Ok(meta_i64(state, META_REVISION)?.unwrap_or(INITIAL_REVISION))
}

/// The compaction revision, `None` before the first compaction (etcd's -1).
pub(crate) fn compacted(state: &dyn StateRead) -> Result<Option<i64>, KvError> {
    meta_i64(state, META_COMPACTED)
}

/// The revision of the latest compaction; 0 if the store was never compacted. Reads and watches
/// below it fail with [`KvError::Compacted`].
pub fn compact_revision(state: &dyn StateRead) -> Result<i64, KvError> {
    Ok(compacted(state)?.unwrap_or(0).max(0))
}

/// The live value of `key`.
pub(crate) fn latest(state: &dyn StateRead, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
    match state.get(KV_LATEST, key)? {
        Some(bytes) => Ok(Some(keys::decode_kv(key, &bytes)?)),
        None => Ok(None),
    }
}

/// Every live key-value in `span` at the current revision, in key order.
pub(crate) fn latest_in(state: &dyn StateRead, span: KeySpan<'_>) -> Result<Vec<KeyValue>, KvError> {
    Ok(scan_kvs(state, span, None, usize::MAX)?.kvs)
}

/// Resolves a requested revision (0 or less: `current`) and checks it is still readable.
pub(crate) fn readable_revision(state: &dyn StateRead, requested: i64, current: i64) -> Result<i64, KvError> {
    if requested > current {
        return Err(KvError::FutureRev);
    }
    let at = if requested <= 0 { current } else { requested };
    if let Some(c) = compacted(state)? {
        if at < c {
            return Err(KvError::Compacted { compact_revision: c });
        }
    }
    Ok(at)
}

/// Key-values found by a scan, and how many keys matched (decoded or not).
pub(crate) struct Found {
    pub(crate) kvs: Vec<KeyValue>,
    pub(crate) count: i64,
}

/// Finds the keys of `span` live at revision `at` (`None`: the current revision, read from
/// `kv_latest`; otherwise reconstructed from `kv_history`). Counts every match but decodes only
/// the first `keep`.
pub(crate) fn scan_kvs(
    state: &dyn StateRead,
    span: KeySpan<'_>,
    at: Option<i64>,
    keep: usize,
) -> Result<Found, KvError> {
    match at {
        None => scan_latest(state, span, keep),
        Some(at) => scan_history(state, span, at, keep),
    }
}

fn scan_latest(state: &dyn StateRead, span: KeySpan<'_>, keep: usize) -> Result<Found, KvError> {
    let (start, end) = match span {
        KeySpan::One(key) => {
            let kv = latest(state, key)?;
            let count = i64::from(kv.is_some());
            let kvs = if keep > 0 { kv.into_iter().collect() } else { Vec::new() };
            return Ok(Found { kvs, count });
        }
        KeySpan::From(key) => (key, None),
        KeySpan::Between(key, end) => (key, Some(end)),
    };
    let mut found = Found { kvs: Vec::new(), count: 0 };
    let mut failure = None;
    state.scan(KV_LATEST, start, end, false, &mut |k, v| {
        found.count += 1;
        if found.kvs.len() < keep {
            match keys::decode_kv(k, v) {
                Ok(kv) => found.kvs.push(kv),
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            }
        }
        true
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// Reconstructs the keys of `span` as of revision `at`: for each key, its newest history entry
/// at or below `at`, if that entry is a put.
fn scan_history(state: &dyn StateRead, span: KeySpan<'_>, at: i64, keep: usize) -> Result<Found, KvError> {
    if let KeySpan::One(key) = span {
        let kv = version_at(state, key, at)?;
        let count = i64::from(kv.is_some());
        let kvs = if keep > 0 { kv.into_iter().collect() } else { Vec::new() };
        return Ok(Found { kvs, count });
    }
    let (start, end) = match span {
        KeySpan::Between(key, end) => (keys::history_prefix(key), Some(keys::history_prefix(end))),
        KeySpan::From(key) | KeySpan::One(key) => (keys::history_prefix(key), None),
    };
    let mut fold = AsOf { at, keep, found: Found { kvs: Vec::new(), count: 0 }, key: None };
    let mut failure = None;
    state.scan(KV_HISTORY, &start, end.as_deref(), false, &mut |k, v| match fold.entry(k, v) {
        Ok(()) => true,
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    fold.close()?;
    Ok(fold.found)
}

/// Folds `kv_history` entries, which arrive grouped by key, into each key's value as of `at`.
struct AsOf {
    at: i64,
    keep: usize,
    found: Found,
    /// The key being folded, and its newest entry at or below `at` so far.
    key: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

impl AsOf {
    fn entry(&mut self, k: &[u8], v: &[u8]) -> Result<(), KvError> {
        let (user, main, _) = keys::decode_history_key(k)?;
        if self.key.as_ref().is_none_or(|(current, _)| *current != user) {
            self.close()?;
            self.key = Some((user, None));
        }
        if main <= self.at {
            if let Some((_, newest)) = &mut self.key {
                *newest = Some(v.to_vec());
            }
        }
        Ok(())
    }

    /// Counts, and keeps if there is room, the key being folded if it was live at `at`.
    fn close(&mut self) -> Result<(), KvError> {
        let Some((user, Some(value))) = self.key.take() else {
            return Ok(());
        };
        if !keys::history_value_is_put(&value)? {
            return Ok(());
        }
        self.found.count += 1;
        if self.found.kvs.len() < self.keep {
            if let Some(kv) = keys::decode_history_value(&user, &value)? {
                self.found.kvs.push(kv);
            }
        }
        Ok(())
    }
}

/// The value of `key` as of revision `at`, from `kv_history`.
pub(crate) fn version_at(state: &dyn StateRead, key: &[u8], at: i64) -> Result<Option<KeyValue>, KvError> {
    match newest_entry_below(state, key, at.saturating_add(1))? {
        Some(value) => keys::decode_history_value(key, &value),
        None => Ok(None),
    }
}

/// The raw value of `key`'s newest history entry with a main revision below `below`.
pub(crate) fn newest_entry_below(state: &dyn StateRead, key: &[u8], below: i64) -> Result<Option<Vec<u8>>, KvError> {
    let start = keys::history_prefix(key);
    let end = keys::history_key(key, below, 0);
    let mut newest = None;
    state.scan(KV_HISTORY, &start, Some(&end), true, &mut |_, v| {
        newest = Some(v.to_vec());
        false
    })?;
    Ok(newest)
}

/// Checks a range request the way etcd's API layer does before serving it.
pub fn validate_range(req: &RangeRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(())
}

/// Serves a `RangeRequest` from `state` (a consistent read view, or the store itself), with
/// etcd v3.4's semantics: key ranges, revision, limit/more/count, sorting, filters, keys_only and
/// count_only. The header carries only the revision; the API layer fills in the rest.
pub fn range(state: &dyn StateRead, req: &RangeRequest) -> Result<RangeResponse, KvError> {
    validate_range(req)?;
    let current = current_revision(state)?;
    range_at(state, req, current)
}

/// [`range`] against a view whose revision is `current` (inside a txn: including its changes).
pub(crate) fn range_at(state: &dyn StateRead, req: &RangeRequest, current: i64) -> Result<RangeResponse, KvError> {
    let at = readable_revision(state, req.revision, current)?;
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Like etcd: a sort target other than KEY without an order means ascending.
    let mut order = SortOrder::try_from(req.sort_order).ok();
    let target = SortTarget::try_from(req.sort_target).ok();
    if req.sort_target != SortTarget::Key as i32 && order == Some(SortOrder::None) {
        order = Some(SortOrder::Ascend);
    }
    let limit = usize::try_from(req.limit).ok().filter(|l| *l > 0);
    // Like etcd: an explicit sort order or a revision filter looks at every key, then truncates;
    // otherwise one extra key is enough to tell whether there are `more`. (So, as in etcd, a sort
    // target with no explicit order sorts only the first `limit + 1` keys.)
    let fetch_all = req.sort_order != SortOrder::None as i32 || filtered;
    let keep = match (req.count_only, limit) {
        (true, _) => 0,
        (false, Some(l)) if !fetch_all => l.saturating_add(1),
        (false, _) => usize::MAX,
    };
    let found = scan_kvs(state, KeySpan::new(&req.key, &req.range_end), (at != current).then_some(at), keep)?;
    let mut kvs = found.kvs;
    // etcd applies the revision filters after counting, so `count` ignores them.
    kvs.retain(|kv| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    });
    if let (Some(order @ (SortOrder::Ascend | SortOrder::Descend)), Some(target)) = (order, target) {
        sort_kvs(&mut kvs, order, target);
    }
    let mut more = false;
    if let Some(l) = limit {
        if kvs.len() > l {
            kvs.truncate(l);
            more = true;
        }
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse { header: Some(header(current)), kvs, more, count: found.count })
}

/// Sorts stably, so keys that tie on the target stay in key order (etcd's sort is not stable and
/// leaves ties in an unspecified order).
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

/// A response header carrying `revision`; the API layer adds cluster, member and term.
pub(crate) fn header(revision: i64) -> ResponseHeader {
    ResponseHeader { revision, ..Default::default() }
}
