//! The changes of one command, readable before they are written.
//!
//! `apply` reads and changes several rows (two parents, a child, counters) and may fail with an
//! errno halfway. [`Tx`] keeps the pending rows in a map layered over the store: reads see them,
//! and nothing reaches the runtime's [`WriteSet`] unless the whole command succeeds
//! ([`Tx::commit`]). A failed command therefore leaves no trace.
//!
//! Rows read from the store are remembered for the rest of the command: the checks of one
//! command read the same rows more than once (a create reads its directory and probes the new
//! name both in its own checks and in the shared "can a name be made here" checks), and every
//! store read is a memtable and SST search (a tenth of a busy leader's CPU went there).

use std::cell::RefCell;
use std::collections::BTreeMap;

use cairn_coordinator::rsm::store::{StateRead, StoreError, Visitor, WriteSet};

type Changes = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

pub struct Tx<'a> {
    base: &'a dyn StateRead,
    changes: Changes,
    /// Rows already read from `base` in this command (`None`: known absent).
    read: RefCell<Changes>,
}

impl<'a> Tx<'a> {
    pub fn new(base: &'a dyn StateRead) -> Self {
        Tx { base, changes: BTreeMap::new(), read: RefCell::new(BTreeMap::new()) }
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
        let id = (static_name(table), key.to_vec());
        if let Some(pending) = self.changes.get(&id) {
            return Ok(pending.clone());
        }
        if let Some(known) = self.read.borrow().get(&id) {
            return Ok(known.clone());
        }
        let row = self.base.get(table, key)?;
        // Tables outside the namespace's list share the "" slot: not remembered.
        if !id.0.is_empty() {
            self.read.borrow_mut().insert(id, row.clone());
        }
        Ok(row)
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

#[cfg(test)]
mod tests {
    use cairn_coordinator::rsm::store::{MemStore, StateStore};

    use super::*;
    use crate::namespace::keys::{INODES, META, TABLES};

    /// A store that counts the reads that reach it.
    struct Counting {
        store: MemStore,
        reads: std::cell::Cell<usize>,
    }

    impl StateRead for Counting {
        fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.reads.set(self.reads.get() + 1);
            self.store.get(table, key)
        }

        fn scan(
            &self,
            table: &str,
            start: &[u8],
            end: Option<&[u8]>,
            reverse: bool,
            visit: &mut Visitor<'_>,
        ) -> Result<(), StoreError> {
            self.store.scan(table, start, end, reverse, visit)
        }
    }

    #[test]
    fn rows_are_read_once_and_pending_changes_win() {
        let store = MemStore::new(TABLES);
        let mut writes = WriteSet::new();
        writes.put(INODES, b"a".to_vec(), b"1".to_vec());
        store.write(writes).expect("write");
        let base = Counting { store, reads: std::cell::Cell::new(0) };

        let mut tx = Tx::new(&base);
        assert_eq!(tx.get(INODES, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(tx.get(INODES, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(tx.get(META, b"missing").expect("get"), None);
        assert_eq!(tx.get(META, b"missing").expect("get"), None);
        assert_eq!(base.reads.get(), 2, "each row reaches the store once");

        // The command's own changes shadow what it read before.
        tx.put(INODES, b"a".to_vec(), b"2".to_vec());
        tx.put(META, b"missing".to_vec(), b"now".to_vec());
        assert_eq!(tx.get(INODES, b"a").expect("get"), Some(b"2".to_vec()));
        assert_eq!(tx.get(META, b"missing").expect("get"), Some(b"now".to_vec()));
        tx.delete(INODES, b"a".to_vec());
        assert_eq!(tx.get(INODES, b"a").expect("get"), None);
        assert_eq!(base.reads.get(), 2);
    }
}
