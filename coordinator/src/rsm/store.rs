//! The storage a replicated state machine reads and writes.
//!
//! Applications (the coordinator's MVCC KV, the metaserver's namespace) see only the traits in
//! this module, never RocksDB: the same state-machine code runs against [`MemStore`] in unit tests
//! and against [`RocksStore`] in servers.
//!
//! Contract:
//! - Data lives in named column families ("tables"); keys within a table are ordered bytewise.
//! - A [`WriteSet`] is applied atomically: a reader sees all of it or none of it.
//! - [`StateStore::read_view`] returns a consistent point-in-time view; later writes are not
//!   visible through it.
//! - Writes are not synced one by one. The runtime makes them durable before it depends on
//!   them (before a snapshot is built, which is when the Raft log underneath may be purged).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::limits::{
    STATE_BLOCK_CACHE_BYTES, STATE_BLOOM_BITS_PER_KEY, STATE_MEMTABLE_BLOOM_RATIO, STATE_WAL_MAX_BYTES,
    STATE_WAL_PRIME_BYTES, STATE_WAL_PRIME_FREE_MIN_BYTES, STATE_WAL_RECYCLE_FILES,
};

/// Errors from the storage engine. They are not expected in normal operation: the callers treat
/// them as fatal for the state machine (the node stops applying rather than diverging).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    #[error("storage engine: {0}")]
    Engine(String),
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Engine(e.into_string())
    }
}

/// Visitor used by [`StateRead::scan`]: receives each (key, value) in order; returns `false` to stop.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> bool + 'a;

/// Read access to the tables.
pub trait StateRead {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Visits keys in `[start, end)` (`end = None` means to the end of the table) in ascending
    /// order, or descending when `reverse` is set.
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError>;
}

/// A store: reads, atomic write sets, and consistent views.
pub trait StateStore: StateRead + Send + Sync + 'static {
    fn write(&self, writes: WriteSet) -> Result<(), StoreError>;

    /// A consistent point-in-time view of every table.
    fn read_view(&self) -> Box<dyn StateRead + '_>;

    /// Makes every write so far durable (survives a process crash).
    fn sync(&self) -> Result<(), StoreError>;
}

/// One write operation within a [`WriteSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: &'static str,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        table: &'static str,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// An ordered list of writes applied atomically by [`StateStore::write`].
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    ops: Vec<WriteOp>,
}

impl WriteSet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, table: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put { table, key: key.into(), value: value.into() });
    }
    pub fn delete(&mut self, table: &'static str, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete { table, key: key.into() });
    }
    pub fn delete_range(&mut self, table: &'static str, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::DeleteRange { table, start: start.into(), end: end.into() });
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }
    pub fn extend(&mut self, other: WriteSet) {
        self.ops.extend(other.ops);
    }
}

/// Reads through a pending [`WriteSet`]: what a command sees when an earlier command of the same
/// batch has not been written yet. Used by applications that stage several changes before writing.
pub fn read_through<'a>(
    base: &'a dyn StateRead,
    pending: &'a WriteSet,
    table: &str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    for op in pending.ops.iter().rev() {
        match op {
            WriteOp::Put { table: t, key: k, value } if *t == table && k == key => return Ok(Some(value.clone())),
            WriteOp::Delete { table: t, key: k } if *t == table && k == key => return Ok(None),
            WriteOp::DeleteRange { table: t, start, end }
                if *t == table && key >= start.as_slice() && key < end.as_slice() =>
            {
                return Ok(None)
            }
            _ => {}
        }
    }
    base.get(table, key)
}

type Tables = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory store for unit tests of state machines.
#[derive(Debug, Clone)]
pub struct MemStore {
    tables: Arc<RwLock<Tables>>,
}

impl MemStore {
    pub fn new(tables: &[&str]) -> Self {
        let map = tables.iter().map(|t| (t.to_string(), BTreeMap::new())).collect();
        Self { tables: Arc::new(RwLock::new(map)) }
    }
}

fn scan_map(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: Option<&[u8]>,
    reverse: bool,
    visit: &mut Visitor<'_>,
) {
    let upper = match end {
        Some(e) => Bound::Excluded(e.to_vec()),
        None => Bound::Unbounded,
    };
    if let Some(e) = end {
        if e <= start {
            return;
        }
    }
    let range = map.range((Bound::Included(start.to_vec()), upper));
    if reverse {
        for (k, v) in range.rev() {
            if !visit(k, v) {
                return;
            }
        }
    } else {
        for (k, v) in range {
            if !visit(k, v) {
                return;
            }
        }
    }
}

/// A frozen copy of a [`MemStore`], its "consistent view".
struct MemView(Tables);

impl StateRead for MemView {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.get(table).ok_or_else(|| StoreError::UnknownTable(table.into()))?;
        Ok(t.get(key).cloned())
    }
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        let t = self.0.get(table).ok_or_else(|| StoreError::UnknownTable(table.into()))?;
        scan_map(t, start, end, reverse, visit);
        Ok(())
    }
}

impl StateRead for MemStore {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tables = self.tables.read().map_err(|_| StoreError::Engine("poisoned".into()))?;
        let t = tables.get(table).ok_or_else(|| StoreError::UnknownTable(table.into()))?;
        Ok(t.get(key).cloned())
    }
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        // Copy out first so the visitor may call back into the store.
        let copy = {
            let tables = self.tables.read().map_err(|_| StoreError::Engine("poisoned".into()))?;
            tables.get(table).ok_or_else(|| StoreError::UnknownTable(table.into()))?.clone()
        };
        scan_map(&copy, start, end, reverse, visit);
        Ok(())
    }
}

impl StateStore for MemStore {
    fn write(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut tables = self.tables.write().map_err(|_| StoreError::Engine("poisoned".into()))?;
        for op in &writes.ops {
            let name = match op {
                WriteOp::Put { table, .. } | WriteOp::Delete { table, .. } | WriteOp::DeleteRange { table, .. } => {
                    *table
                }
            };
            if !tables.contains_key(name) {
                return Err(StoreError::UnknownTable(name.into()));
            }
        }
        for op in writes.ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    tables.get_mut(table).map(|t| t.insert(key, value));
                }
                WriteOp::Delete { table, key } => {
                    tables.get_mut(table).map(|t| t.remove(&key));
                }
                WriteOp::DeleteRange { table, start, end } => {
                    if let Some(t) = tables.get_mut(table) {
                        let doomed: Vec<Vec<u8>> = t.range(start..end).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            t.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }
    fn read_view(&self) -> Box<dyn StateRead + '_> {
        let tables = match self.tables.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Box::new(MemView(tables))
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The RocksDB store: one column family per table.
pub struct RocksStore {
    db: Arc<rocksdb::DB>,
}

impl RocksStore {
    /// Opens (creating if needed) a RocksDB at `path` with the given tables.
    pub fn open(path: &Path, tables: &[&str]) -> Result<Self, StoreError> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cache = rocksdb::Cache::new_lru_cache(STATE_BLOCK_CACHE_BYTES);
        let cfs: Vec<rocksdb::ColumnFamilyDescriptor> =
            tables.iter().map(|t| rocksdb::ColumnFamilyDescriptor::new(*t, table_options(&cache))).collect();
        opts.set_recycle_log_file_num(STATE_WAL_RECYCLE_FILES);
        opts.set_max_total_wal_size(STATE_WAL_MAX_BYTES);
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, cfs)?;
        let store = Self { db: Arc::new(db) };
        store.prime_wal(tables)?;
        Ok(store)
    }

    /// Leaves the store writing its WAL over a recycled file instead of appending to a new one.
    ///
    /// Every Raft write ends in an fdatasync of the WAL, one on the leader and then one on a
    /// follower. Appending grows the file, so each of those syncs also commits the inode's new
    /// size through the filesystem journal; overwriting blocks already written does not (about
    /// 0.19 against 0.14 ms per sync on this project's test machine, three writers at once).
    /// RocksDB recycles a WAL file only after the memtables it holds were flushed, which a new
    /// or freshly restarted store would reach only after tens of MiB of writes. So at open:
    /// write [`STATE_WAL_PRIME_BYTES`] of zeros to the unused default column family, flush
    /// (that WAL file becomes recyclable), write once more and flush again (the WAL switches
    /// onto the recycled file), then delete the filler. Costs one sequential write of that
    /// size per open.
    fn prime_wal(&self, tables: &[&str]) -> Result<(), StoreError> {
        const FILLER_VALUE_BYTES: usize = 1024 * 1024;
        match crate::alarm::disk_space(self.db.path()) {
            Ok((free, _)) if free < STATE_WAL_PRIME_FREE_MIN_BYTES => {
                tracing::warn!(free_bytes = free, "little free disk space: the WAL is appended to, not recycled");
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the free disk space; priming the WAL anyway"),
        }
        let filler = vec![0u8; FILLER_VALUE_BYTES];
        let keys: Vec<Vec<u8>> =
            (0..STATE_WAL_PRIME_BYTES / FILLER_VALUE_BYTES).map(|i| format!("wal-prime-{i:04}").into_bytes()).collect();
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let tables: Vec<&rocksdb::ColumnFamily> = tables.iter().map(|t| self.cf(t)).collect::<Result<_, _>>()?;
        let flush_all = || -> Result<(), StoreError> {
            // Every column family with data in the current WAL must flush before it retires.
            self.db.flush_opt(&flush)?;
            self.db.flush_cfs_opt(&tables, &flush)?;
            Ok(())
        };
        for key in &keys {
            self.db.put(key, &filler)?;
        }
        flush_all()?;
        self.db.put(b"wal-prime-switch", b"")?;
        flush_all()?;
        for key in &keys {
            self.db.delete(key)?;
        }
        self.db.delete(b"wal-prime-switch")?;
        Ok(())
    }

    pub fn db(&self) -> &Arc<rocksdb::DB> {
        &self.db
    }

    fn cf(&self, table: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(table).ok_or_else(|| StoreError::UnknownTable(table.into()))
    }

    /// Compacts every table fully (reclaims the space of deleted and overwritten rows).
    pub fn compact_all(&self, tables: &[&str]) -> Result<(), StoreError> {
        for table in tables {
            self.db.compact_range_cf(self.cf(table)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes the store occupies on disk (SST, blob, WAL and manifest files), for status
    /// reporting.
    pub fn size_bytes(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(self.db.path()) else { return 0 };
        entries.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
    }
}

/// Options of every table. The state machines mostly do point reads, and many of them miss (a
/// create probes its new name, etcd a key about to be written): whole-key Bloom filters in the
/// memtable and in the SST files answer a miss without searching, and index and filter blocks
/// stay in a shared block cache.
fn table_options(cache: &rocksdb::Cache) -> rocksdb::Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(STATE_BLOOM_BITS_PER_KEY, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = rocksdb::Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_memtable_prefix_bloom_ratio(STATE_MEMTABLE_BLOOM_RATIO);
    opts.set_memtable_whole_key_filtering(true);
    opts
}

fn rocks_scan(
    db: &rocksdb::DB,
    cf: &rocksdb::ColumnFamily,
    snapshot: Option<&rocksdb::Snapshot<'_>>,
    start: &[u8],
    end: Option<&[u8]>,
    reverse: bool,
    visit: &mut Visitor<'_>,
) -> Result<(), StoreError> {
    if let Some(e) = end {
        if e <= start {
            return Ok(());
        }
    }
    let mut ro = rocksdb::ReadOptions::default();
    if let Some(s) = snapshot {
        ro.set_snapshot(s);
    }
    ro.set_iterate_lower_bound(start.to_vec());
    if let Some(e) = end {
        ro.set_iterate_upper_bound(e.to_vec());
    }
    let mut it = db.raw_iterator_cf_opt(cf, ro);
    if reverse {
        it.seek_to_last();
    } else {
        it.seek_to_first();
    }
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
        if !visit(k, v) {
            return Ok(());
        }
        if reverse {
            it.prev();
        } else {
            it.next();
        }
    }
    it.status()?;
    Ok(())
}

impl StateRead for RocksStore {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(table)?, key)?)
    }
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        rocks_scan(&self.db, self.cf(table)?, None, start, end, reverse, visit)
    }
}

struct RocksView<'a> {
    store: &'a RocksStore,
    snapshot: rocksdb::Snapshot<'a>,
}

impl StateRead for RocksView<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshot.get_cf(self.store.cf(table)?, key)?)
    }
    fn scan(
        &self,
        table: &str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        rocks_scan(&self.store.db, self.store.cf(table)?, Some(&self.snapshot), start, end, reverse, visit)
    }
}

impl StateStore for RocksStore {
    fn write(&self, writes: WriteSet) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        for op in writes.ops {
            match op {
                WriteOp::Put { table, key, value } => batch.put_cf(self.cf(table)?, key, value),
                WriteOp::Delete { table, key } => batch.delete_cf(self.cf(table)?, key),
                WriteOp::DeleteRange { table, start, end } => batch.delete_range_cf(self.cf(table)?, start, end),
            }
        }
        // Not synced: the Raft log is the durable record; see the module contract.
        self.db.write(batch)?;
        Ok(())
    }
    fn read_view(&self) -> Box<dyn StateRead + '_> {
        Box::new(RocksView { store: self, snapshot: self.db.snapshot() })
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn StateStore) {
        let mut ws = WriteSet::new();
        ws.put("a", b"k1".to_vec(), b"v1".to_vec());
        ws.put("a", b"k2".to_vec(), b"v2".to_vec());
        ws.put("a", b"k3".to_vec(), b"v3".to_vec());
        store.write(ws).expect("write");
        let view = store.read_view();
        let mut ws = WriteSet::new();
        ws.delete("a", b"k2".to_vec());
        store.write(ws).expect("write");
        assert_eq!(store.get("a", b"k2").expect("get"), None);
        assert_eq!(view.get("a", b"k2").expect("get"), Some(b"v2".to_vec()));
        let mut seen = Vec::new();
        store
            .scan("a", b"k", None, true, &mut |k, _| {
                seen.push(k.to_vec());
                true
            })
            .expect("scan");
        assert_eq!(seen, vec![b"k3".to_vec(), b"k1".to_vec()]);
        let mut ws = WriteSet::new();
        ws.delete_range("a", b"k1".to_vec(), b"k3".to_vec());
        store.write(ws).expect("write");
        assert_eq!(store.get("a", b"k1").expect("get"), None);
        assert_eq!(store.get("a", b"k3").expect("get"), Some(b"v3".to_vec()));
        assert!(store.get("nope", b"x").is_err());
    }

    #[test]
    fn mem_store_semantics() {
        exercise(&MemStore::new(&["a"]));
    }

    #[test]
    fn rocks_store_semantics() {
        let dir = tempfile::tempdir().expect("tempdir");
        exercise(&RocksStore::open(dir.path(), &["a"]).expect("open"));
    }

    /// Sizes of the WAL files, newest (the one being written) last.
    fn wal_sizes(dir: &Path) -> Vec<u64> {
        let mut logs: Vec<(String, u64)> = std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().expect("stat").len()))
            .collect();
        logs.sort();
        logs.into_iter().map(|(_, len)| len).collect()
    }

    #[test]
    fn opens_onto_a_recycled_wal_and_recovers_from_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), &["a"]).expect("open");
        let current = *wal_sizes(dir.path()).last().expect("a WAL");
        assert!(current >= STATE_WAL_PRIME_BYTES as u64, "the WAL written is the primed file: {current} bytes");
        assert_eq!(store.db().get(b"wal-prime-0000").expect("get"), None, "the filler is deleted");
        let mut w = WriteSet::new();
        w.put("a", b"k".to_vec(), b"written over the recycled WAL".to_vec());
        store.write(w).expect("write");
        // Closed without flushing the memtables: reopening replays the recycled WAL, whose
        // tail still holds records of its earlier life.
        drop(store);
        let store = RocksStore::open(dir.path(), &["a"]).expect("reopen");
        assert_eq!(store.get("a", b"k").expect("get"), Some(b"written over the recycled WAL".to_vec()));
        assert!(*wal_sizes(dir.path()).last().expect("a WAL") >= STATE_WAL_PRIME_BYTES as u64, "primed again");
    }
}
