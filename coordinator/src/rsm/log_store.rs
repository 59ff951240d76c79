//! The Raft log in RocksDB.
//!
//! Promises: an append is reported flushed to openraft only after the WAL holding it is synced;
//! the vote is synced before `save_vote` returns.
//!
//! `append` writes its entries with a synced write and completes the flush callback before it
//! returns, blocking the Raft core's worker thread for the fsync. openraft 0.9 awaits each
//! append's flush before its core does anything else, so the core waits for the fsync either way;
//! syncing in place saves the two thread wake-ups a separate syncer thread cost (the write handed
//! to the thread, the callback handed back), about a tenth of a 1-client Raft write on this
//! machine. The other worker threads keep serving while one waits for the disk. Group commit
//! comes from batching proposals (see `node`), not from here. Measurements: docs/benchmarks.md.
//!
//! The most recent entries are also kept in memory ([`TailCache`]): replication and apply read
//! the entries the leader has just appended, and serving them from memory takes two RocksDB
//! iterators (one per read) off the path of every Raft write. The cache only ever holds a
//! suffix of what is on disk: entries enter after their write succeeded, and leave before a
//! truncate deletes them.
//!
//! Layout (column families of the node's single RocksDB instance):
//! - `raft_log`: big-endian log index -> bincode(Entry)
//! - `raft_meta`: `vote`, `last_purged` -> bincode values (older stores also hold an unused
//!   `committed`)

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::limits::{LOG_TAIL_CACHE_BYTES, LOG_TAIL_CACHE_ENTRIES};

pub(crate) const LOG_TABLE: &str = "raft_log";
pub(crate) const META_TABLE: &str = "raft_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

/// The last entries of the log, contiguous by index, with their encoded sizes.
#[derive(Default)]
struct TailCache {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl TailCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// Adds entries just written. One that does not follow the cached ones (a gap, or an
    /// overwrite without a truncate first) starts the cache over from it.
    fn push(&mut self, entry: Entry, size: usize) {
        if self.next_index() != Some(entry.log_id.index) {
            self.clear();
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > LOG_TAIL_CACHE_ENTRIES || self.bytes > LOG_TAIL_CACHE_BYTES {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Drops entries at `index` and after.
    fn truncate(&mut self, index: u64) {
        while self.next_index().is_some_and(|next| next > index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries in `[start, end)` (`end = None`: to the last), if the cache holds all of them.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let (first, next) = (self.first_index()?, self.next_index()?);
        let end = end.unwrap_or(next);
        if start < first || end > next {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

/// The RocksDB log store. Cheap to clone: clones share the database and the tail cache.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<rocksdb::DB>,
    tail: Arc<Mutex<TailCache>>,
}

impl LogStore {
    /// Opens the log store over `db`, which must have the [`LOG_TABLE`] and [`META_TABLE`]
    /// column families.
    pub fn new(db: Arc<rocksdb::DB>) -> Self {
        Self { db, tail: Arc::default() }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, TailCache> {
        // A panic while holding the lock leaves the cache consistent (each step keeps it a
        // contiguous suffix), so a poisoned lock is still usable.
        self.tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| read_err(std::io::Error::other(format!("missing column family {name}"))))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let cf = self.cf(META_TABLE)?;
        match self.db.get_cf(cf, key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_err)?)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageError> {
        let cf = self.cf(META_TABLE)?;
        let bytes = encode(value).map_err(write_err)?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.db.put_cf_opt(cf, key, bytes, &opts).map_err(write_err)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = self.cf(LOG_TABLE)?;
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_last();
        match it.value() {
            Some(v) => {
                let entry: Entry = decode(v).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
            None => {
                it.status().map_err(read_err)?;
                Ok(None)
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.tail().get(start, end) {
            return Ok(entries);
        }
        let cf = self.cf(LOG_TABLE)?;
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(index_key(end).to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek(index_key(start));
        let mut entries = Vec::new();
        while let Some(v) = it.value() {
            entries.push(decode::<Entry>(v).map_err(read_err)?);
            it.next();
        }
        it.status().map_err(read_err)?;
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.get_meta::<Option<LogId>>(KEY_LAST_PURGED)?.flatten();
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Synced: a vote granted and then forgotten in a crash could elect two leaders.
        self.put_meta(KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    // The commit index is not stored (openraft's default `save_committed` does nothing): writing
    // it cost a RocksDB write on every commit, on the leader between the quorum's answer and the
    // apply. Without it a restarted node applies the entries committed but not yet applied when
    // it stopped once a leader tells it the commit index, as a new node would.

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.cf(LOG_TABLE)?;
        let mut batch = rocksdb::WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(write_err)?;
            batch.put_cf(cf, index_key(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        let result = self.db.write_opt(batch, &opts);
        if result.is_ok() {
            let mut tail = self.tail();
            for (entry, size) in written {
                tail.push(entry, size);
            }
        }
        let io_result = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io_result);
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.cf(LOG_TABLE)?;
        // Out of the cache first: it must never hold an entry the disk no longer has.
        self.tail().truncate(log_id.index);
        self.db.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX)).map_err(write_err)?;
        // delete_range's end is exclusive; u64::MAX is never a real index.
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two writes leaves extra entries,
        // never a gap that get_log_state would misreport.
        self.put_meta(KEY_LAST_PURGED, &Some(log_id), false)?;
        self.tail().purge(log_id.index);
        let cf = self.cf(LOG_TABLE)?;
        self.db.delete_range_cf(cf, index_key(0), index_key(log_id.index.saturating_add(1))).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    fn cache(range: std::ops::Range<u64>, size: usize) -> TailCache {
        let mut c = TailCache::default();
        for i in range {
            c.push(entry(i), size);
        }
        c
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let c = cache(5..9, 10);
        assert_eq!(indexes(c.get(5, Some(9))), Some(vec![5, 6, 7, 8]));
        assert_eq!(indexes(c.get(6, None)), Some(vec![6, 7, 8]));
        assert_eq!(indexes(c.get(7, Some(8))), Some(vec![7]));
        assert_eq!(indexes(c.get(9, None)), Some(vec![]), "past the last entry: nothing, as on disk");
        assert_eq!(indexes(c.get(12, None)), Some(vec![]), "further past it too");
        assert_eq!(indexes(c.get(4, Some(6))), None, "starts before the cache");
        assert_eq!(indexes(c.get(8, Some(10))), None, "ends after the cache");
        assert_eq!(indexes(TailCache::default().get(0, None)), None, "empty: read the disk");
    }

    #[test]
    fn stays_a_contiguous_suffix() {
        let mut c = cache(1..6, 10);
        c.truncate(4);
        assert_eq!(indexes(c.get(1, None)), Some(vec![1, 2, 3]));
        c.push(entry(4), 10);
        assert_eq!(indexes(c.get(1, None)), Some(vec![1, 2, 3, 4]));
        c.purge(2);
        assert_eq!(indexes(c.get(3, None)), Some(vec![3, 4]));
        assert_eq!(c.get(2, None).map(|v| v.len()), None);
        // A gap starts over: the cache never claims entries it did not see written.
        c.push(entry(9), 10);
        assert_eq!(indexes(c.get(9, None)), Some(vec![9]));
        assert_eq!(c.get(4, None).map(|v| v.len()), None);
        c.truncate(0);
        assert_eq!((c.entries.len(), c.bytes), (0, 0));
    }

    #[test]
    fn keeps_within_its_bounds() {
        let c = cache(0..(LOG_TAIL_CACHE_ENTRIES as u64 + 10), 1);
        assert_eq!(c.entries.len(), LOG_TAIL_CACHE_ENTRIES);
        assert_eq!(c.first_index(), Some(10));
        let big = LOG_TAIL_CACHE_BYTES / 3;
        let c = cache(0..5, big);
        assert_eq!((c.first_index(), c.bytes), (Some(2), 3 * big));
    }
}
