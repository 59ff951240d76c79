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
//! Layout (column families of the node's single RocksDB instance):
//! - `raft_log`: big-endian log index -> bincode(Entry)
//! - `raft_meta`: `vote`, `last_purged` -> bincode values (older stores also hold an unused
//!   `committed`)

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};

use super::types::{decode, encode, Entry, LogId, StorageError, TypeConfig, Vote};

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

/// The RocksDB log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<rocksdb::DB>,
}

impl LogStore {
    /// Opens the log store over `db`, which must have the [`LOG_TABLE`] and [`META_TABLE`]
    /// column families.
    pub fn new(db: Arc<rocksdb::DB>) -> Self {
        Self { db }
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
        let cf = self.cf(LOG_TABLE)?;
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            if end <= start {
                return Ok(Vec::new());
            }
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
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry).map_err(write_err)?);
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        let result = self.db.write_opt(batch, &opts);
        let io_result = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io_result);
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.cf(LOG_TABLE)?;
        self.db.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX)).map_err(write_err)?;
        // delete_range's end is exclusive; u64::MAX is never a real index.
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash between the two writes leaves extra entries,
        // never a gap that get_log_state would misreport.
        self.put_meta(KEY_LAST_PURGED, &Some(log_id), false)?;
        let cf = self.cf(LOG_TABLE)?;
        self.db.delete_range_cf(cf, index_key(0), index_key(log_id.index.saturating_add(1))).map_err(write_err)
    }
}
