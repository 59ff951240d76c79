//! The openraft state machine: applies committed batches to an [`App`], and builds and installs
//! snapshots of the app's tables.
//!
//! Promises:
//! - Every command is applied at most once per replica, even across crashes: each command's
//!   writes carry an "applied up to (index, position)" marker in the same atomic write, and a
//!   re-delivered entry skips the commands already applied.
//! - A snapshot is built from one consistent view after the store is synced, so the Raft log
//!   may be purged up to it without losing anything.
//! - Installing a snapshot replaces the app's tables and the runtime's markers in one write.
//!
//! Snapshots are held in memory while they are built, sent and installed; that suits the
//! coordinator's and the metaserver's state sizes today (see `limits`).

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::app::App;
use super::store::{RocksStore, StateRead, StateStore, WriteSet};
use super::types::{
    decode, encode, BatchResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

pub(crate) const SM_TABLE: &str = "sm_meta";

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_APPLIED_COMMAND: &[u8] = b"applied_command";

/// A key greater than any key the applications use, as the end of "the whole table".
const TABLE_END: [u8; 16] = [0xff; 16];

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// What a snapshot file holds: its metadata and the serialized tables.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The serialized content of a snapshot: every row of every app table.
#[derive(Serialize, Deserialize)]
struct SnapshotTables {
    tables: Vec<(String, Vec<Row>)>,
}

/// One (key, value) row of a table.
type Row = (Vec<u8>, Vec<u8>);

/// State-machine side of the runtime, generic over the application.
pub struct StateMachine<A: App> {
    store: Arc<RocksStore>,
    app: Arc<A>,
    snapshot_path: PathBuf,
    /// (log index, next command position) of the last command applied; loaded at start.
    applied_command: (u64, u64),
}

impl<A: App> StateMachine<A> {
    pub fn new(store: Arc<RocksStore>, app: Arc<A>, snapshot_dir: PathBuf) -> Result<Self, StorageError> {
        let applied_command = read_meta::<(u64, u64)>(&*store, KEY_APPLIED_COMMAND)?.unwrap_or((0, 0));
        Ok(Self { store, app, snapshot_path: snapshot_dir.join("current.snapshot"), applied_command })
    }

    fn builder(&self) -> SnapshotBuilder<A> {
        SnapshotBuilder { store: self.store.clone(), app: self.app.clone(), snapshot_path: self.snapshot_path.clone() }
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(state: &dyn StateRead, key: &[u8]) -> Result<Option<T>, StorageError> {
    match state.get(SM_TABLE, key).map_err(sm_read_err)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(decode(&bytes).map_err(sm_read_err)?)),
    }
}

fn put_meta<T: Serialize>(writes: &mut WriteSet, key: &[u8], value: &T) -> Result<(), StorageError> {
    writes.put(SM_TABLE, key.to_vec(), encode(value).map_err(sm_write_err)?);
    Ok(())
}

impl<A: App> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = SnapshotBuilder<A>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = read_meta::<Option<LogId>>(&*self.store, KEY_LAST_APPLIED)?.flatten();
        let membership = read_meta::<StoredMembership>(&*self.store, KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let index = log_id.index;
            match entry.payload {
                EntryPayload::Blank => {
                    let mut writes = WriteSet::new();
                    put_meta(&mut writes, KEY_LAST_APPLIED, &Some(log_id))?;
                    self.store.write(writes).map_err(sm_write_err)?;
                    responses.push(BatchResponse::default());
                }
                EntryPayload::Membership(m) => {
                    let mut writes = WriteSet::new();
                    put_meta(&mut writes, KEY_MEMBERSHIP, &StoredMembership::new(Some(log_id), m))?;
                    put_meta(&mut writes, KEY_LAST_APPLIED, &Some(log_id))?;
                    self.store.write(writes).map_err(sm_write_err)?;
                    responses.push(BatchResponse::default());
                }
                EntryPayload::Normal(batch) => {
                    let count = batch.0.len();
                    let mut results = Vec::with_capacity(count);
                    if count == 0 {
                        let mut writes = WriteSet::new();
                        put_meta(&mut writes, KEY_LAST_APPLIED, &Some(log_id))?;
                        self.store.write(writes).map_err(sm_write_err)?;
                    }
                    for (pos, command) in batch.0.iter().enumerate() {
                        let pos = pos as u64;
                        if (index, pos) < self.applied_command {
                            // Applied before a crash; the proposer of that command is gone.
                            results.push(Vec::new());
                            continue;
                        }
                        let mut writes = WriteSet::new();
                        let result = self
                            .app
                            .apply(&*self.store, &mut writes, index, command)
                            .map_err(|e| StorageError::from(StorageIOError::apply(log_id, &e)))?;
                        let next = (index, pos + 1);
                        put_meta(&mut writes, KEY_APPLIED_COMMAND, &next)?;
                        if pos as usize + 1 == count {
                            put_meta(&mut writes, KEY_LAST_APPLIED, &Some(log_id))?;
                        }
                        self.store.write(writes).map_err(sm_write_err)?;
                        self.applied_command = next;
                        self.app.applied();
                        results.push(result);
                    }
                    responses.push(BatchResponse(results));
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let content: SnapshotTables = decode(&data).map_err(snap_err)?;
        let store = self.store.clone();
        let app_tables = self.app.tables();
        let mut writes = WriteSet::new();
        for table in app_tables {
            clear_table(&*store, table, &mut writes)?;
        }
        for (name, rows) in content.tables {
            let Some(table) = app_tables.iter().find(|t| **t == name) else {
                return Err(snap_err(std::io::Error::other(format!("snapshot has unknown table {name:?}"))));
            };
            for (k, v) in rows {
                writes.put(table, k, v);
            }
        }
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let next = (index, u64::MAX);
        put_meta(&mut writes, KEY_LAST_APPLIED, &meta.last_log_id)?;
        put_meta(&mut writes, KEY_MEMBERSHIP, &meta.last_membership)?;
        put_meta(&mut writes, KEY_APPLIED_COMMAND, &next)?;
        store.write(writes).map_err(sm_write_err)?;
        store.sync().map_err(sm_write_err)?;
        self.applied_command = next;
        save_snapshot_file(&self.snapshot_path, &StoredSnapshot { meta: meta.clone(), data })?;
        self.app.snapshot_installed(&*store);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_path.clone();
        let stored = tokio::task::spawn_blocking(move || load_snapshot_file(&path))
            .await
            .map_err(|e| snap_err(std::io::Error::other(e.to_string())))??;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

/// Stages the deletion of every row of `table`.
fn clear_table(store: &dyn StateRead, table: &'static str, writes: &mut WriteSet) -> Result<(), StorageError> {
    writes.delete_range(table, Vec::new(), TABLE_END.to_vec());
    // Keys at or beyond TABLE_END are not covered by the range; delete them one by one.
    let mut tail = Vec::new();
    store
        .scan(table, &TABLE_END, None, false, &mut |k, _| {
            tail.push(k.to_vec());
            true
        })
        .map_err(sm_read_err)?;
    for k in tail {
        writes.delete(table, k);
    }
    Ok(())
}

fn save_snapshot_file(path: &std::path::Path, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
    use std::io::Write;
    let bytes = encode(snapshot).map_err(snap_err)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(snap_err)?;
    f.write_all(&bytes).map_err(snap_err)?;
    f.sync_all().map_err(snap_err)?;
    std::fs::rename(&tmp, path).map_err(snap_err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(snap_err)?;
    }
    Ok(())
}

fn load_snapshot_file(path: &std::path::Path) -> Result<Option<StoredSnapshot>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(decode(&bytes).map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageIOError::read_snapshot(None, &e).into()),
    }
}

/// Captures the app's tables and the runtime's markers from one consistent view, after making
/// the applied state durable (openraft purges the log up to a snapshot).
pub(crate) fn capture(store: &RocksStore, tables: &[&str]) -> Result<StoredSnapshot, StorageError> {
    store.sync().map_err(snap_err)?;
    let view = store.read_view();
    let last_log_id = read_meta::<Option<LogId>>(&*view, KEY_LAST_APPLIED)?.flatten();
    let last_membership = read_meta::<StoredMembership>(&*view, KEY_MEMBERSHIP)?.unwrap_or_default();
    let mut content = SnapshotTables { tables: Vec::new() };
    for table in tables {
        let mut rows = Vec::new();
        view.scan(table, &[], None, false, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })
        .map_err(sm_read_err)?;
        content.tables.push((table.to_string(), rows));
    }
    let data = encode(&content).map_err(snap_err)?;
    let snapshot_id = match last_log_id {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
        None => format!("0-0-{}", rand::random::<u32>()),
    };
    Ok(StoredSnapshot { meta: SnapshotMeta { last_log_id, last_membership, snapshot_id }, data })
}

/// A self-contained copy of the replicated state (the snapshot file format), for backups.
pub(crate) fn export(store: &RocksStore, tables: &[&str]) -> Result<Vec<u8>, StorageError> {
    encode(&capture(store, tables)?).map_err(snap_err)
}

/// Builds snapshots from a consistent view of the store.
pub struct SnapshotBuilder<A: App> {
    store: Arc<RocksStore>,
    app: Arc<A>,
    snapshot_path: PathBuf,
}

impl<A: App> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.store.clone();
        let tables = self.app.tables();
        let path = self.snapshot_path.clone();
        let stored = tokio::task::spawn_blocking(move || -> Result<StoredSnapshot, StorageError> {
            let stored = capture(&store, tables)?;
            save_snapshot_file(&path, &stored)?;
            Ok(stored)
        })
        .await
        .map_err(|e| snap_err(std::io::Error::other(e.to_string())))??;
        tracing::info!(snapshot = %stored.meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}
