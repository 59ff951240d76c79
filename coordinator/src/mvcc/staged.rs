//! Writes staged during one apply, readable before they reach the store.
//!
//! A command's writes reach the store only after `apply` returns, yet later steps of the same
//! command must see earlier ones: a txn range after a put, a put after a delete, the revision
//! counter bumped twice by `LeaseExpire`. [`Staged`] keeps the pending changes in ordered maps
//! and answers `get` and `scan` as the store will look once they are written, so every reader in
//! this module works unchanged on the store, on a read view, or mid-apply.
//!
//! Nothing reaches the caller's [`WriteSet`] until [`Staged::flush`], so a command that fails
//! halfway leaves no trace.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::rsm::store::{StateRead, StoreError, Visitor, WriteOp, WriteSet};

/// Pending value per key: `Some` to write, `None` to delete.
type TableChanges = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Pending entries of one table in scan order.
type PendingEntries<'p> = Box<dyn Iterator<Item = (&'p Vec<u8>, &'p Option<Vec<u8>>)> + 'p>;

/// Pending changes of several tables.
#[derive(Debug, Default)]
struct Changes {
    tables: BTreeMap<&'static str, TableChanges>,
}

impl Changes {
    fn set(&mut self, table: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.tables.entry(table).or_default().insert(key, value);
    }

    /// Folds `writes`, which are not in `base` yet, into per-key changes. A range deletion is
    /// expanded into the keys it removes, so the result needs no range logic.
    fn from_write_set(base: &dyn StateRead, writes: &WriteSet) -> Result<Changes, StoreError> {
        let mut changes = Changes::default();
        for op in writes.ops() {
            match op {
                WriteOp::Put { table, key, value } => changes.set(table, key.clone(), Some(value.clone())),
                WriteOp::Delete { table, key } => changes.set(table, key.clone(), None),
                WriteOp::DeleteRange { table, start, end } => {
                    let mut doomed = Vec::new();
                    base.scan(table, start, Some(end), false, &mut |k, _| {
                        doomed.push(k.to_vec());
                        true
                    })?;
                    let pending = changes.tables.entry(table).or_default();
                    for value in pending.range_mut(start.clone()..end.clone()).map(|(_, v)| v) {
                        *value = None;
                    }
                    for key in doomed {
                        pending.insert(key, None);
                    }
                }
            }
        }
        Ok(changes)
    }
}

fn get_through(
    base: &dyn StateRead,
    changes: &Changes,
    table: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    match changes.tables.get(table).and_then(|t| t.get(key)) {
        Some(pending) => Ok(pending.clone()),
        None => base.get(table, key),
    }
}

/// Scans `base` merged with `changes`: pending entries replace or hide base entries with the same
/// key and are interleaved in order.
fn scan_through(
    base: &dyn StateRead,
    changes: &Changes,
    table: &str,
    start: &[u8],
    end: Option<&[u8]>,
    reverse: bool,
    visit: &mut Visitor<'_>,
) -> Result<(), StoreError> {
    let Some(pending) = changes.tables.get(table) else {
        return base.scan(table, start, end, reverse, visit);
    };
    if end.is_some_and(|e| e <= start) {
        return Ok(());
    }
    let upper = match end {
        Some(e) => Bound::Excluded(e),
        None => Bound::Unbounded,
    };
    let range = pending.range::<[u8], _>((Bound::Included(start), upper));
    let mut pending: PendingEntries<'_> = if reverse { Box::new(range.rev()) } else { Box::new(range) };
    let mut next = pending.next();
    let mut stopped = false;
    // Visits a pending entry (deletions are skipped); false when the visitor wants to stop.
    let emit = |visit: &mut Visitor<'_>, key: &[u8], value: &Option<Vec<u8>>| match value {
        Some(v) => visit(key, v),
        None => true,
    };
    base.scan(table, start, end, reverse, &mut |key, value| {
        while let Some((pk, pv)) = next {
            let before = if reverse { pk.as_slice() > key } else { pk.as_slice() < key };
            if !before {
                break;
            }
            if !emit(visit, pk, pv) {
                stopped = true;
                return false;
            }
            next = pending.next();
        }
        if let Some((pk, pv)) = next {
            if pk.as_slice() == key {
                next = pending.next();
                if !emit(visit, pk, pv) {
                    stopped = true;
                    return false;
                }
                return true;
            }
        }
        if !visit(key, value) {
            stopped = true;
            return false;
        }
        true
    })?;
    if stopped {
        return Ok(());
    }
    while let Some((pk, pv)) = next {
        if !emit(visit, pk, pv) {
            break;
        }
        next = pending.next();
    }
    Ok(())
}

/// A store as seen through writes that are not in it yet (normally none: the runtime hands each
/// command a fresh [`WriteSet`], but the contract does not promise it).
pub(crate) struct Pending<'a> {
    base: &'a dyn StateRead,
    changes: Changes,
}

impl<'a> Pending<'a> {
    pub(crate) fn new(base: &'a dyn StateRead, writes: &WriteSet) -> Result<Self, StoreError> {
        let changes = if writes.is_empty() { Changes::default() } else { Changes::from_write_set(base, writes)? };
        Ok(Self { base, changes })
    }
}

impl StateRead for Pending<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_through(self.base, &self.changes, table, key)
    }
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        scan_through(self.base, &self.changes, table, start, end, reverse, visit)
    }
}

/// The changes of one command, staged over the state it applies to.
pub(crate) struct Staged<'a> {
    base: &'a dyn StateRead,
    changes: Changes,
}

impl<'a> Staged<'a> {
    pub(crate) fn new(base: &'a dyn StateRead) -> Self {
        Self { base, changes: Changes::default() }
    }

    pub(crate) fn put(&mut self, table: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.changes.set(table, key.into(), Some(value.into()));
    }

    pub(crate) fn delete(&mut self, table: &'static str, key: impl Into<Vec<u8>>) {
        self.changes.set(table, key.into(), None);
    }

    /// Moves the staged changes into `writes`. Each key appears once, with its final value, so
    /// the order of the resulting writes does not matter.
    pub(crate) fn flush(self, writes: &mut WriteSet) {
        for (table, changes) in self.changes.tables {
            for (key, value) in changes {
                match value {
                    Some(v) => writes.put(table, key, v),
                    None => writes.delete(table, key),
                }
            }
        }
    }
}

impl StateRead for Staged<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_through(self.base, &self.changes, table, key)
    }
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        scan_through(self.base, &self.changes, table, start, end, reverse, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rsm::store::{MemStore, StateStore};

    fn collect(view: &dyn StateRead, start: &[u8], end: Option<&[u8]>, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        view.scan("t", start, end, reverse, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .expect("scan");
        out
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        items.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn staged_scan_merges_puts_and_deletes() {
        let store = MemStore::new(&["t"]);
        let mut ws = WriteSet::new();
        for k in ["b", "d", "f"] {
            ws.put("t", k.as_bytes().to_vec(), b"base".to_vec());
        }
        store.write(ws).expect("write");
        let mut staged = Staged::new(&store);
        staged.put("t", b"a".to_vec(), b"new".to_vec());
        staged.put("t", b"d".to_vec(), b"new".to_vec());
        staged.delete("t", b"f".to_vec());
        staged.put("t", b"g".to_vec(), b"new".to_vec());
        let want = pairs(&[("a", "new"), ("b", "base"), ("d", "new"), ("g", "new")]);
        assert_eq!(collect(&staged, b"", None, false), want);
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(collect(&staged, b"", None, true), rev);
        assert_eq!(collect(&staged, b"b", Some(b"e"), false), pairs(&[("b", "base"), ("d", "new")]));
        assert_eq!(staged.get("t", b"f").expect("get"), None);
        assert_eq!(staged.get("t", b"b").expect("get"), Some(b"base".to_vec()));
        // Stopping early is honoured on every path.
        let mut n = 0;
        staged
            .scan("t", b"", None, false, &mut |_, _| {
                n += 1;
                n < 2
            })
            .expect("scan");
        assert_eq!(n, 2);
        let mut ws = WriteSet::new();
        staged.flush(&mut ws);
        store.write(ws).expect("write");
        assert_eq!(collect(&store, b"", None, false), want);
    }

    #[test]
    fn pending_expands_range_deletes() {
        let store = MemStore::new(&["t"]);
        let mut ws = WriteSet::new();
        for k in ["a", "b", "c"] {
            ws.put("t", k.as_bytes().to_vec(), b"base".to_vec());
        }
        store.write(ws).expect("write");
        let mut ws = WriteSet::new();
        ws.put("t", b"bb".to_vec(), b"x".to_vec());
        ws.delete_range("t", b"b".to_vec(), b"c".to_vec());
        ws.put("t", b"b".to_vec(), b"again".to_vec());
        let pending = Pending::new(&store, &ws).expect("pending");
        assert_eq!(collect(&pending, b"", None, false), pairs(&[("a", "base"), ("b", "again"), ("c", "base")]));
    }
}
