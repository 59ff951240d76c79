//! The changes of one command, readable before they are written.
//!
//! `apply` reads and changes several rows (two parents, a child, counters) and may fail with an
//! errno halfway. [`Tx`] keeps the pending rows in a map layered over the store: reads see them,
//! and nothing reaches the runtime's [`WriteSet`] unless the whole command succeeds
//! ([`Tx::commit`]). A failed command therefore leaves no trace.

use std::collections::BTreeMap;

use cairn_coordinator::rsm::store::{StateRead, StoreError, Visitor, WriteSet};

type Changes = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

pub struct Tx<'a> {
    base: &'a dyn StateRead,
    changes: Changes,
}

impl<'a> Tx<'a> {
    pub fn new(base: &'a dyn StateRead) -> Self {
        Tx { base, changes: BTreeMap::new() }
    }

    pub fn put(&mut self, table: &'static str, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.changes.insert((table, key.into()), Some(value));
    }

    pub fn delete(&mut self, table: &'static str, key: impl Into<Vec<u8>>) {
        self.changes.insert((table, key.into()), None);
    }

    /// Moves the pending changes into `writes`.
    pub fn commit(self, writes: &mut WriteSet) {
        for ((table, key), value) in self.changes {
            match value {
                Some(value) => writes.put(table, key, value),
                None => writes.delete(table, key),
            }
        }
    }
}

impl StateRead for Tx<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.changes.get(&(static_name(table), key.to_vec())) {
            return Ok(pending.clone());
        }
        self.base.get(table, key)
    }

    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        // Merge base rows with pending ones. Scans during apply are short (a directory's first
        // entry, an inode's xattrs), so collecting first is fine.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        self.base.scan(table, start, end, false, &mut |k, v| {
            merged.insert(k.to_vec(), v.to_vec());
            true
        })?;
        for ((t, k), v) in &self.changes {
            if *t != table || k.as_slice() < start || end.is_some_and(|e| k.as_slice() >= e) {
                continue;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        if reverse {
            for (k, v) in merged.iter().rev() {
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            for (k, v) in &merged {
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The `'static` name of a namespace table, for map lookups keyed by `&'static str`.
fn static_name(table: &str) -> &'static str {
    super::keys::TABLES.iter().copied().find(|t| *t == table).unwrap_or("")
}
