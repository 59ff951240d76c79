//! What only the leader does with chunks, because it talks to chunkservers and then proposes
//! what it did: failure reports (version bumps), pending truncations, the deletion queue, the
//! orphan scan, healing, and fsck.
//!
//! # Contract
//! - Every change of a chunk's version or replicas is done under that chunk's lock on the
//!   leader: call the chunkservers first (UpdateVersion, TruncateChunk, CopyChunkFromPeer), then
//!   propose the outcome with `propose_local`, which a deposed leader cannot commit. The command
//!   carries the version it expects, so `apply` refuses (ESTALE) an outcome overtaken by
//!   another change.
//! - A replica left out of the map (failed, lost with its server, stale) is never trusted
//!   again: the map's version moves past it, and the orphan scan deletes it when its server
//!   shows up.
//! - Healing works on chunks of files open for writing too: the version bump comes first, so
//!   from then on every replica refuses the writer's chain writes (StaleVersion) and the copy
//!   reads a replica no writer can change; the writer fetches the entry again and, while the
//!   map still shows the old version, waits for the heal to commit (fs-client `write_chunk`).
//!   A write that reached some replicas before the bump failed, so its writer rewrites it on
//!   the new set. Fresh chunks of such files are left alone: their data may be on the
//!   chunkservers before the commit that marks them written, and a replacement added without
//!   a copy would lack it.
//! - A crash anywhere leaves either the old map (chunkservers maybe already at a newer version,
//!   which the next bump treats as done — UpdateVersion is idempotent) or the new one. When no
//!   bump comes (nobody reports a failure, the chunk is not under-replicated), the orphan scan
//!   — which runs as soon as a node takes over the lead — sees a replica of the set ahead of
//!   the map and catches the map up to it (`catch_up`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_coordinator::rsm::store::{StateRead, StateStore};
use cairn_coordinator::rsm::RsmError;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::calls::{not_found, unreachable, ChunkCalls};
use super::placement::place;
use super::registry::RegistryView;
use crate::limits::{
    CHUNK_CALLS_CONCURRENCY, CHUNK_MAP_PAGE_ROWS, CHUNK_WORK_BATCH_MAX, CHUNK_WORK_INTERVAL, FSCK_LIST_DEFAULT,
    FSCK_LIST_MAX, HEAL_CHUNKS_PER_ROUND, HEAL_CONCURRENCY, HEAL_IDLE_WALK_INTERVAL, LIST_CHUNKS_PAGE,
    ORPHANS_REMEMBERED_MAX, QUEUE_COMPACT_AFTER_DELETIONS,
};
use crate::namespace::chunks::{self as map, MapEntry};
use crate::namespace::types::PendingTruncate;
use crate::namespace::{
    keys, read, Caller, Chunk, ChunkId, ChunkserverId, Errno, Fail, InodeId, Op, Outcome, Replica, Reply, SessionId,
    Timespec,
};
use crate::node::namespace::NamespaceNode;

/// Leader call: a chunk failure report (body and answer: bincode of [`FailureReport`] and
/// [`Outcome`]).
pub const RPC_REPORT_FAILURE: &str = "chunk.report_failure";
/// Leader call: carry out the pending truncations of an inode now (body: inode id, u64 BE).
pub const RPC_FLUSH_TRUNCATES: &str = "chunk.flush_truncates";
/// Leader call: fsck (body: the list limit, u32 BE; answer: bincode of [`FsckReport`]).
pub const RPC_FSCK: &str = "chunk.fsck";

/// A ReportChunkFailure request as the leader gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    pub caller: Caller,
    pub now: Timespec,
    pub ino: InodeId,
    pub session: SessionId,
    pub index: u64,
    pub chunk: ChunkId,
    pub version: u64,
    pub failed_addresses: Vec<String>,
    pub corrupt: bool,
}

/// One chunk in an fsck answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckChunk {
    pub chunk: ChunkId,
    pub ino: InodeId,
    pub index: u64,
    pub version: u64,
    /// Recorded replicas that are live (for orphans: the server holding it).
    pub replicas: Vec<Replica>,
}

/// What Fsck answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub chunks: u64,
    pub under_replicated_count: u64,
    pub unavailable_count: u64,
    pub orphan_count: u64,
    pub under_replicated: Vec<FsckChunk>,
    pub unavailable: Vec<FsckChunk>,
    pub orphans: Vec<FsckChunk>,
    pub chunkservers: Vec<Replica>,
    /// `(id, capacity_bytes, free_bytes)` of each of `chunkservers`, from the registry.
    pub space: Vec<(u64, u64, u64)>,
    pub chunk_size_bytes: u64,
}

/// What became of one chunk's healing.
enum Heal {
    Done,
    /// Copies or the proposal failed; tried again next round.
    Failed,
    /// Not attempted (busy, changed, written to, or no server to copy to).
    Skipped,
}

/// Per-chunk locks of the leader's work.
#[derive(Default)]
struct ChunkLocks {
    held: Mutex<HashMap<ChunkId, Arc<tokio::sync::Mutex<()>>>>,
}

impl ChunkLocks {
    fn entry(&self, id: ChunkId) -> Arc<tokio::sync::Mutex<()>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_default().clone()
    }

    async fn lock(&self, id: ChunkId) -> OwnedMutexGuard<()> {
        self.entry(id).lock_owned().await
    }

    fn try_lock(&self, id: ChunkId) -> Option<OwnedMutexGuard<()>> {
        self.entry(id).try_lock_owned().ok()
    }

    /// Forgets locks nobody holds or waits for.
    fn prune(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, m| Arc::strong_count(m) > 1);
    }
}

/// What the leader remembers between rounds (reset when leadership changes).
#[derive(Default)]
struct Memory {
    /// The chunk-id counter as of the previous orphan scan: only chunks below it may be
    /// deleted as unknown (newer ones may be being allocated right now).
    scan_grace_below: Option<ChunkId>,
    last_scan: Option<Instant>,
    orphans: Vec<FsckChunk>,
    /// Rows this leader removed from its work queues (`ns_reclaim`, `ns_gc`, `ns_truncates`)
    /// since it last compacted them.
    queue_deletions: usize,
    heal_walks: HealWalks,
}

/// When healing walks the chunk map. A walk reads every chunk, so an idle leader of a big
/// filesystem must not repeat it every round: it walks when the live chunkservers changed,
/// when asked to (the previous walk healed or skipped chunks, or the leader changed a replica
/// set), and otherwise every `HEAL_IDLE_WALK_INTERVAL`, which bounds how late a change made
/// any other way is noticed and how stale the chunk gauges get.
#[derive(Debug, Default)]
struct HealWalks {
    /// When the map was last walked, and the live chunkservers then.
    last: Option<(Instant, Vec<ChunkserverId>)>,
    /// Walk at the next round, whatever else holds.
    again: bool,
}

impl HealWalks {
    /// Whether to walk now, with these live servers; a yes counts as the walk starting.
    fn due(&mut self, live: Vec<ChunkserverId>, now: Instant) -> bool {
        let due = self.again
            || match &self.last {
                None => true,
                Some((at, seen)) => *seen != live || now.saturating_duration_since(*at) >= HEAL_IDLE_WALK_INTERVAL,
            };
        if due {
            self.again = false;
            self.last = Some((now, live));
        }
        due
    }
}

/// The leader's chunk work. One per node; it works only while the node leads.
pub struct ChunkManager {
    node: NamespaceNode,
    registry: Arc<RegistryView>,
    calls: ChunkCalls,
    locks: ChunkLocks,
    memory: Mutex<Memory>,
    orphan_scan_interval: std::time::Duration,
}

fn internal(e: impl std::fmt::Display) -> RsmError {
    RsmError::Internal(e.to_string())
}

impl ChunkManager {
    pub fn new(node: NamespaceNode, registry: Arc<RegistryView>, orphan_scan_interval: std::time::Duration) -> Self {
        ChunkManager {
            node,
            registry,
            calls: ChunkCalls::new(),
            locks: ChunkLocks::default(),
            memory: Mutex::new(Memory::default()),
            orphan_scan_interval,
        }
    }

    pub fn registry(&self) -> &Arc<RegistryView> {
        &self.registry
    }

    fn memory<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.memory.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A read of this replica's state as applied so far (no barrier).
    fn local<T>(&self, f: impl FnOnce(&dyn StateRead) -> Result<T, Fail>) -> Result<T, RsmError> {
        let view = self.node.rsm().store().read_view();
        f(&*view).map_err(internal)
    }

    fn replication_factor(&self) -> Result<usize, RsmError> {
        let params = self.local(read::fs_params)?.ok_or_else(|| internal("not formatted"))?;
        Ok(params.replication_factor as usize)
    }

    fn chunk_size_bytes(&self) -> Result<u64, RsmError> {
        let params = self.local(read::fs_params)?.ok_or_else(|| internal("not formatted"))?;
        Ok(params.chunk_size_bytes)
    }

    async fn propose(&self, op: Op) -> Result<Outcome, RsmError> {
        let replicas_change = matches!(op, Op::SetChunkReplicas { .. } | Op::ChunkTruncated { .. });
        let outcome = self.node.change_local(Caller::root(), op).await;
        if replicas_change {
            // A replica set may have shrunk: healing looks at the map at its next round.
            self.memory(|m| m.heal_walks.again = true);
        }
        outcome
    }

    // ---- failure reports ----

    /// Handles a failure report on the leader (see `ReportChunkFailureRequest` in meta.proto).
    pub async fn report_failure(&self, r: FailureReport) -> Result<Outcome, RsmError> {
        let _guard = self.locks.lock(r.chunk).await;
        self.node.rsm().read_barrier().await?;
        let pending = self.local(|s| map::pending_truncate(s, r.ino, r.index))?;
        if let Some(p) = pending {
            if !self.truncate_locked(r.ino, r.index, p).await? {
                return Ok(Err(Errno::Io));
            }
        }
        let Some(c) = self.local(|s| map::chunk(s, r.ino, r.index))? else { return Ok(Err(Errno::NoEnt)) };
        if c.id != r.chunk || c.version != r.version {
            return Ok(Err(Errno::Stale));
        }
        if pending.is_some() {
            // The replicas were behind the map's version only because a truncation had not been
            // carried out yet: that was the failure. Answer the chunk as it now is; a replica
            // that really failed will be reported again.
            return Ok(Ok(Reply::Chunk { index: r.index, chunk: c }));
        }
        if r.failed_addresses.is_empty() && !r.corrupt {
            // No replica named: a reader found replicas ahead of the map ("stale version" with
            // a newer version there). Catch the map up if so; otherwise nothing to do.
            return self.catch_up_reported(r.ino, r.index, c).await;
        }
        tracing::info!(
            inode = %r.ino, index = r.index, chunk = %c.id, version = c.version, session = %r.session,
            failed = ?r.failed_addresses,
            corrupt = r.corrupt, "chunk failure reported"
        );
        let (mut survivors, _failed): (Vec<Replica>, Vec<Replica>) = c
            .replicas
            .iter()
            .cloned()
            .partition(|rep| !r.failed_addresses.contains(&rep.addr) && self.registry.is_live(rep.server));
        let new_version = c.version + 1;
        survivors = self.bump(&c, &survivors, new_version).await;
        if c.fresh {
            // Nothing committed yet: replacements need no copy, the writer creates the chunk.
            let want = self.replication_factor()?.saturating_sub(survivors.len());
            if want > 0 {
                let servers = self.registry.live().unwrap_or_default();
                let holding: Vec<ChunkserverId> = survivors.iter().map(|s| s.server).collect();
                let exclude: Vec<ChunkserverId> = c.replicas.iter().map(|s| s.server).collect();
                survivors.extend(place(&servers, &holding, &exclude, want, self.chunk_size_bytes()?));
            }
        }
        if survivors.is_empty() {
            tracing::warn!(chunk = %c.id, "no replica of the chunk remains");
            return Ok(Err(Errno::Io));
        }
        self.node.metrics().chunk_event("version_bump");
        self.propose(Op::SetChunkReplicas {
            ino: r.ino,
            index: r.index,
            chunk: c.id,
            expect_version: c.version,
            version: new_version,
            replicas: survivors,
        })
        .await
    }

    /// A report naming no replica: catches the map up to the highest version a live replica
    /// of the set holds, if above the map's; answers the chunk as it then is.
    async fn catch_up_reported(&self, ino: InodeId, index: u64, c: Chunk) -> Result<Outcome, RsmError> {
        let live: Vec<Replica> = c.replicas.iter().filter(|r| self.registry.is_live(r.server)).cloned().collect();
        let versions = stream::iter(live)
            .map(|rep| async move { self.calls.stat(&rep.addr, c.id).await.ok().map(|s| s.version) })
            .buffered(CHUNK_CALLS_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let ahead = versions.into_iter().flatten().max().filter(|v| *v > c.version);
        if let Some(version) = ahead {
            self.catch_up(ino, index, &c, version).await?;
        }
        Ok(match self.local(|s| map::chunk(s, ino, index))? {
            Some(now) => Ok(Reply::Chunk { index, chunk: now }),
            None => Err(Errno::NoEnt),
        })
    }

    /// Raises `c`'s version to `new_version` on `replicas`; answers those that now hold it (a
    /// fresh chunk's replica without the chunk counts: the writer will create it).
    async fn bump(&self, c: &Chunk, replicas: &[Replica], new_version: u64) -> Vec<Replica> {
        let results = stream::iter(replicas.iter().cloned())
            .map(|rep| async move {
                let r = self.calls.update_version(&rep.addr, c.id, c.version, new_version).await;
                (rep, r)
            })
            .buffered(CHUNK_CALLS_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut kept = Vec::new();
        for (rep, result) in results {
            match result {
                Ok(()) => kept.push(rep),
                Err(status) if c.fresh && not_found(&status) => kept.push(rep),
                Err(status) => {
                    tracing::warn!(chunk = %c.id, replica = %rep.addr, error = %status.message(), "version update failed; replica dropped")
                }
            }
        }
        kept
    }

    // ---- truncations ----

    /// Carries out pending truncations (of `only`, or all, up to a batch). Answers how many
    /// remain undone.
    pub async fn flush_truncates(&self, only: Option<InodeId>) -> Result<usize, RsmError> {
        let pending = self.local(|s| map::pending_truncates(s, only, CHUNK_WORK_BATCH_MAX))?;
        let mut undone = 0;
        for (ino, index, p) in pending {
            let _guard = self.locks.lock(p.chunk).await;
            // Re-read under the lock: another task may have done it, or a later truncate changed it.
            let Some(p) = self.local(|s| map::pending_truncate(s, ino, index))? else { continue };
            if !self.truncate_locked(ino, index, p).await? {
                undone += 1;
            }
        }
        Ok(undone)
    }

    /// Cuts the replicas of a chunk with a pending truncation and proposes that it is done.
    /// Answers false when no replica could be cut (tried again later).
    async fn truncate_locked(&self, ino: InodeId, index: u64, p: PendingTruncate) -> Result<bool, RsmError> {
        let Some(c) = self.local(|s| map::chunk(s, ino, index))? else { return Ok(true) };
        let (chunk, pending) = (&c, &p);
        let results = stream::iter(c.replicas.iter().cloned())
            .map(|rep| async move {
                let ok = self.registry.is_live(rep.server) && self.truncate_replica(&rep, chunk, pending).await;
                (rep, ok)
            })
            .buffered(CHUNK_CALLS_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let lost: Vec<ChunkserverId> = results.iter().filter(|(_, ok)| !ok).map(|(rep, _)| rep.server).collect();
        if !c.replicas.is_empty() && lost.len() == c.replicas.len() {
            tracing::warn!(chunk = %c.id, "no replica could be truncated; will retry");
            return Ok(false);
        }
        let op = Op::ChunkTruncated { ino, index, chunk: p.chunk, to_version: p.to_version, lost };
        match self.propose(op).await? {
            Ok(_) => {
                self.node.metrics().chunk_event("truncate");
                self.note_queue_deletions(1).await;
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(chunk = %c.id, errno = %e, "truncation overtaken");
                Ok(true)
            }
        }
    }

    /// Cuts one replica: at a version in `[from, to)` truncate then raise to `to`; already at
    /// `to`: done; without the chunk: fine only if nothing was ever committed to it.
    async fn truncate_replica(&self, rep: &Replica, c: &Chunk, p: &PendingTruncate) -> bool {
        let stat = match self.calls.stat(&rep.addr, p.chunk).await {
            Ok(s) => s,
            Err(status) if not_found(&status) => return c.fresh,
            Err(status) => {
                tracing::warn!(chunk = %p.chunk, replica = %rep.addr, error = %status.message(), "stat for truncation failed");
                return false;
            }
        };
        if stat.version == p.to_version {
            return true;
        }
        if stat.version < p.from_version || stat.version > p.to_version {
            tracing::warn!(chunk = %p.chunk, replica = %rep.addr, version = stat.version, "replica at an unexpected version");
            return false;
        }
        if stat.length_bytes > p.length_bytes {
            if let Err(status) = self.calls.truncate(&rep.addr, p.chunk, stat.version, p.length_bytes).await {
                tracing::warn!(chunk = %p.chunk, replica = %rep.addr, error = %status.message(), "truncate failed");
                return false;
            }
        }
        match self.calls.update_version(&rep.addr, p.chunk, stat.version, p.to_version).await {
            Ok(()) => true,
            Err(status) => {
                tracing::warn!(chunk = %p.chunk, replica = %rep.addr, error = %status.message(), "version update after truncate failed");
                false
            }
        }
    }

    // ---- deletion queue ----

    /// Moves reclaimed inodes' chunks to the queue and deletes queued chunks on their servers.
    /// Answers how many chunks were deleted.
    pub async fn collect_garbage(&self) -> Result<usize, RsmError> {
        let reclaim = self.local(|s| read::reclaim_queue(s, CHUNK_WORK_BATCH_MAX))?;
        if !reclaim.is_empty() {
            let n = reclaim.len();
            if let Err(e) = self.propose(Op::ReclaimInodes { inos: reclaim }).await? {
                tracing::warn!(errno = %e, "reclaim refused");
            }
            self.note_queue_deletions(n).await;
        }
        let queue = self.local(|s| map::gc_queue(s, CHUNK_WORK_BATCH_MAX))?;
        if queue.is_empty() {
            return Ok(0);
        }
        let done: Vec<ChunkId> = stream::iter(queue)
            .map(|(id, g)| async move {
                let mut all = true;
                for rep in &g.replicas {
                    // A server that is gone is left to the orphan scan when it comes back.
                    if !self.registry.is_live(rep.server) {
                        continue;
                    }
                    if let Err(status) = self.calls.delete(&rep.addr, id, 0).await {
                        if !not_found(&status) {
                            tracing::debug!(chunk = %id, replica = %rep.addr, error = %status.message(), "delete failed; will retry");
                            all = false;
                        }
                    }
                }
                all.then_some(id)
            })
            .buffered(CHUNK_CALLS_CONCURRENCY)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        let n = done.len();
        if n > 0 {
            if let Err(e) = self.propose(Op::ChunksDeleted { chunks: done }).await? {
                tracing::warn!(errno = %e, "chunks-deleted refused");
            }
            self.node.metrics().chunk_events("gc_deleted", n as u64);
            self.note_queue_deletions(n).await;
        }
        Ok(n)
    }

    /// Counts rows removed from the work queues and compacts the queue tables every
    /// [`QUEUE_COMPACT_AFTER_DELETIONS`]. Each round scans the queues from their start (and
    /// every truncating setattr its file's pending truncations), and a scan steps over every
    /// deletion tombstone still in the memtable or an SST file: after about 300 000 files were
    /// removed, an idle leader spent a seventh of a core stepping over them twice a second,
    /// until a memtable flush that a quiet cluster may not reach for hours. Compacting these
    /// small tables drops the tombstones. Local upkeep, not replicated: only the leader scans
    /// the queues.
    async fn note_queue_deletions(&self, n: usize) {
        let due = self.memory(|m| {
            m.queue_deletions += n;
            let due = m.queue_deletions >= QUEUE_COMPACT_AFTER_DELETIONS;
            if due {
                m.queue_deletions = 0;
            }
            due
        });
        if due {
            self.compact_queues().await;
        }
    }

    async fn compact_queues(&self) {
        let store = self.node.rsm().store().clone();
        let compacted =
            tokio::task::spawn_blocking(move || store.compact_all(&[keys::RECLAIM, keys::GC, keys::TRUNCATES])).await;
        match compacted {
            Ok(Ok(())) => tracing::debug!("work queues compacted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "compacting the work queues"),
            Err(e) => tracing::warn!(error = %e, "compacting the work queues"),
        }
    }

    // ---- orphan scan ----

    /// Lists every live chunkserver's chunks and deletes those the map does not know (below
    /// the previous scan's id counter), replicas outside their chunk's set, and stale replicas
    /// (older version) inside it when other replicas remain; a replica of the set ahead of the
    /// map catches the map up (see `catch_up`).
    pub async fn scan_orphans(&self) -> Result<usize, RsmError> {
        self.node.rsm().read_barrier().await?;
        let counter = self.local(map::next_chunk_id)?;
        let grace_below = self.memory(|m| m.scan_grace_below.replace(counter));
        let Some(servers) = self.registry.live() else { return Ok(0) };
        let mut orphans = Vec::new();
        for server in servers {
            let mut after = ChunkId(0);
            loop {
                let page = match self.calls.list(&server.addr, after, LIST_CHUNKS_PAGE).await {
                    Ok(p) => p,
                    Err(status) => {
                        tracing::warn!(chunkserver = server.id, error = %status.message(), "list chunks failed");
                        break;
                    }
                };
                for info in &page.chunks {
                    let id = ChunkId(info.chunk_id);
                    let rep = Replica { server: server.server(), addr: server.addr.clone() };
                    if let Some(orphan) = self.check_replica(&rep, id, info.version, info.corrupt, grace_below).await? {
                        orphans.push(orphan);
                    }
                }
                match page.chunks.last() {
                    Some(last) if page.more => after = ChunkId(last.chunk_id),
                    _ => break,
                }
            }
        }
        let n = orphans.len();
        orphans.truncate(ORPHANS_REMEMBERED_MAX);
        self.memory(|m| {
            m.orphans = orphans;
            m.last_scan = Some(Instant::now());
        });
        Ok(n)
    }

    /// Checks one replica a chunkserver listed; deletes it if it is garbage, answering it.
    /// `corrupt`: the chunkserver found a block of it failing its checksum (scrubber or read).
    async fn check_replica(
        &self,
        rep: &Replica,
        id: ChunkId,
        version: u64,
        corrupt: bool,
        grace_below: Option<ChunkId>,
    ) -> Result<Option<FsckChunk>, RsmError> {
        let Some(_guard) = self.locks.try_lock(id) else { return Ok(None) };
        let place = self.local(|s| map::place(s, id))?;
        let orphan = |ino, index| FsckChunk { chunk: id, ino, index, version, replicas: vec![rep.clone()] };
        let Some(place) = place else {
            if self.local(|s| map::in_gc_queue(s, id))? || grace_below.is_none_or(|g| id >= g) {
                return Ok(None);
            }
            self.delete_orphan(rep, id, version, "unknown chunk").await;
            return Ok(Some(orphan(InodeId(0), 0)));
        };
        let Some(c) = self.local(|s| map::chunk(s, place.ino, place.index))? else { return Ok(None) };
        if c.id != id {
            return Ok(None);
        }
        let in_set = c.replicas.iter().any(|r| r.server == rep.server);
        if !in_set {
            self.delete_orphan(rep, id, version, "replica outside the chunk's set").await;
            return Ok(Some(orphan(place.ino, place.index)));
        }
        let pending = self.local(|s| map::pending_truncate(s, place.ino, place.index))?;
        if version > c.version && pending.is_none() {
            self.catch_up(place.ino, place.index, &c, version).await?;
            return Ok(None);
        }
        let stale = version < c.version;
        if !(stale || corrupt) || pending.is_some() {
            return Ok(None);
        }
        if c.replicas.len() < 2 {
            if corrupt {
                tracing::error!(chunk = %id, replica = %rep.addr, "the only replica of the chunk is corrupt; kept (readers get the blocks that still verify)");
            }
            return Ok(None);
        }
        let why = if stale { "stale replica" } else { "corrupt replica" };
        // A stale replica in the set (it missed a version bump) or a corrupt one: drop it from
        // the set, then delete it; healing restores the count from the good replicas.
        let replicas: Vec<Replica> = c.replicas.iter().filter(|r| r.server != rep.server).cloned().collect();
        let op = Op::SetChunkReplicas {
            ino: place.ino,
            index: place.index,
            chunk: id,
            expect_version: c.version,
            version: c.version,
            replicas,
        };
        if self.propose(op).await?.is_ok() {
            if corrupt {
                self.node.metrics().chunk_event("corrupt_replica_dropped");
            }
            self.delete_orphan(rep, id, version, why).await;
            return Ok(Some(orphan(place.ino, place.index)));
        }
        Ok(None)
    }

    /// A replica in the chunk's set is ahead of the map (at `version`): a bump reached the
    /// chunkservers but the leader that made it died (or was deposed) before its proposal
    /// committed, and no later bump came to finish it — readers then meet "stale version" on
    /// every replica while the map keeps answering the old one. Raises the set's other live
    /// replicas to `version` (UpdateVersion is idempotent: those already there succeed) and
    /// proposes the map at `version` with the replicas that got there. Call under the chunk's
    /// lock, with no pending truncation. Safe because nobody can be writing at a version the
    /// map never announced, a bump is applied only to complete replicas, and a copy target
    /// becomes visible only once complete; a replica that cannot follow is left out, as after
    /// any bump. Answers whether the map moved.
    async fn catch_up(&self, ino: InodeId, index: u64, c: &Chunk, version: u64) -> Result<bool, RsmError> {
        let live: Vec<Replica> = c.replicas.iter().filter(|r| self.registry.is_live(r.server)).cloned().collect();
        let kept = self.bump(c, &live, version).await;
        tracing::info!(
            chunk = %c.id, inode = %ino, index, map_version = c.version, version,
            kept = ?kept.iter().map(|r| &r.addr).collect::<Vec<_>>(), "replicas ahead of the map; catching the map up"
        );
        if kept.is_empty() {
            return Ok(false);
        }
        let op = Op::SetChunkReplicas { ino, index, chunk: c.id, expect_version: c.version, version, replicas: kept };
        match self.propose(op).await? {
            Ok(_) => {
                self.node.metrics().chunk_event("version_caught_up");
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(chunk = %c.id, errno = %e, "catching up overtaken");
                Ok(false)
            }
        }
    }

    async fn delete_orphan(&self, rep: &Replica, id: ChunkId, version: u64, why: &str) {
        tracing::info!(chunk = %id, version, replica = %rep.addr, why, "deleting orphan replica");
        match self.calls.delete(&rep.addr, id, version).await {
            Ok(_) => self.node.metrics().chunk_event("orphan_deleted"),
            Err(status) => {
                tracing::warn!(chunk = %id, replica = %rep.addr, error = %status.message(), "orphan delete failed")
            }
        }
    }

    // ---- healing ----

    /// Re-replicates under-replicated chunks, most endangered first, at most a batch per round.
    /// Answers how many were healed. Also refreshes the chunk gauges. Walks the map only when
    /// due (see [`HealWalks`]).
    pub async fn heal(&self) -> Result<usize, RsmError> {
        let Some(live) = self.registry.live() else { return Ok(0) };
        let live = live.iter().map(|s| s.server()).collect();
        if !self.memory(|m| m.heal_walks.due(live, Instant::now())) {
            return Ok(0);
        }
        let rf = self.replication_factor()?;
        let mut candidates: Vec<(usize, MapEntry)> = Vec::new();
        let (mut chunks, mut under, mut unavailable) = (0u64, 0u64, 0u64);
        let mut after = None;
        loop {
            let page = self.local(|s| map::map_page(s, after, CHUNK_MAP_PAGE_ROWS))?;
            let Some(last) = page.last() else { break };
            after = Some((last.ino, last.index));
            for entry in page {
                chunks += 1;
                let live = entry.chunk.replicas.iter().filter(|r| self.registry.is_live(r.server)).count();
                if live == 0 {
                    unavailable += 1;
                } else if live < rf {
                    under += 1;
                }
                if live < rf && (live > 0 || entry.chunk.fresh) {
                    candidates.push((live, entry));
                }
            }
        }
        self.node.metrics().set_chunk_counts(chunks, under, unavailable);
        candidates.sort_by_key(|(live, e)| (*live, e.chunk.id));
        let mut chosen = Vec::new();
        let mut busy_skipped = false;
        for (_, entry) in candidates {
            if chosen.len() >= HEAL_CHUNKS_PER_ROUND {
                break;
            }
            let busy = self.local(|s| {
                Ok((entry.chunk.fresh && map::has_writers(s, entry.ino)?)
                    || map::pending_truncate(s, entry.ino, entry.index)?.is_some())
            })?;
            if busy {
                busy_skipped = true;
            } else {
                chosen.push(entry);
            }
        }
        let healed = stream::iter(chosen)
            .map(|entry| async move { self.heal_chunk(entry, rf).await })
            .buffer_unordered(HEAL_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut n = 0;
        let mut again = busy_skipped;
        for result in healed {
            match result? {
                Heal::Done => n += 1,
                Heal::Failed => self.node.metrics().chunk_event("heal_failed"),
                Heal::Skipped => again = true,
            }
        }
        if n > 0 || again {
            // More may be left than one round heals, or a skipped chunk is free next round.
            // Failed copies wait for the idle walk or a change of chunkservers instead: with
            // fewer live servers than the replication factor they would fail every round.
            self.memory(|m| m.heal_walks.again = true);
        }
        if n > 0 {
            self.node.metrics().chunk_events("healed", n as u64);
        }
        Ok(n)
    }

    /// Brings one chunk back to `rf` live replicas: new servers by placement, version bump on
    /// the good replicas, copies at the new version, then the new set.
    async fn heal_chunk(&self, entry: MapEntry, rf: usize) -> Result<Heal, RsmError> {
        let Some(_guard) = self.locks.try_lock(entry.chunk.id) else { return Ok(Heal::Skipped) };
        let c = match self.local(|s| map::chunk(s, entry.ino, entry.index))? {
            Some(c) if c == entry.chunk => c,
            _ => return Ok(Heal::Skipped),
        };
        if c.fresh && self.local(|s| map::has_writers(s, entry.ino))? {
            return Ok(Heal::Skipped);
        }
        let live: Vec<Replica> = c.replicas.iter().filter(|r| self.registry.is_live(r.server)).cloned().collect();
        let servers = self.registry.live().unwrap_or_default();
        let holding: Vec<ChunkserverId> = live.iter().map(|r| r.server).collect();
        let exclude: Vec<ChunkserverId> = c.replicas.iter().map(|r| r.server).collect();
        let targets = place(&servers, &holding, &exclude, rf.saturating_sub(live.len()), self.chunk_size_bytes()?);
        // A server that died keeps its lease for a while and can still be placed: bumping the
        // version for copies that cannot happen would move the chunk's version every round
        // (each bump makes readers holding the map meet "stale version" until it commits).
        let targets = if c.fresh { targets } else { self.reachable(c.id, targets).await };
        if targets.is_empty() {
            // No (reachable) server to copy to (yet): nothing was attempted.
            return Ok(Heal::Skipped);
        }
        tracing::info!(
            chunk = %c.id, inode = %entry.ino, index = entry.index, live = live.len(),
            targets = ?targets.iter().map(|t| &t.addr).collect::<Vec<_>>(), "healing under-replicated chunk"
        );
        if c.fresh {
            // Nothing committed: new replicas need no data.
            let mut replicas = live;
            replicas.extend(targets);
            let op = Op::SetChunkReplicas {
                ino: entry.ino,
                index: entry.index,
                chunk: c.id,
                expect_version: c.version,
                version: c.version,
                replicas,
            };
            return Ok(if self.propose(op).await?.is_ok() { Heal::Done } else { Heal::Failed });
        }
        let new_version = c.version + 1;
        let good = self.bump(&c, &live, new_version).await;
        if good.is_empty() {
            return Ok(Heal::Failed);
        }
        let mut replicas = good.clone();
        for target in targets {
            let mut copied = false;
            for source in &good {
                match self.calls.copy(&target.addr, c.id, new_version, &source.addr).await {
                    Ok(()) => {
                        copied = true;
                        break;
                    }
                    Err(status) => tracing::warn!(
                        chunk = %c.id, target = %target.addr, source = %source.addr, error = %status.message(),
                        "copy from peer failed"
                    ),
                }
            }
            if copied {
                replicas.push(target);
            }
        }
        let complete = replicas.len() >= rf;
        let op = Op::SetChunkReplicas {
            ino: entry.ino,
            index: entry.index,
            chunk: c.id,
            expect_version: c.version,
            version: new_version,
            replicas,
        };
        Ok(if self.propose(op).await?.is_ok() && complete { Heal::Done } else { Heal::Failed })
    }

    /// The copy targets that answer a call (whatever the answer: not having the chunk is the
    /// usual one).
    async fn reachable(&self, id: ChunkId, targets: Vec<Replica>) -> Vec<Replica> {
        stream::iter(targets)
            .map(|t| async move {
                match self.calls.stat(&t.addr, id).await {
                    Err(status) if unreachable(&status) => {
                        tracing::debug!(chunk = %id, target = %t.addr, error = %status.message(), "copy target unreachable");
                        None
                    }
                    _ => Some(t),
                }
            })
            .buffered(CHUNK_CALLS_CONCURRENCY)
            .filter_map(|t| async move { t })
            .collect()
            .await
    }

    // ---- fsck ----

    /// Under-replicated, unavailable and orphan chunks, and the live chunkservers.
    pub async fn fsck(&self, limit: u32) -> Result<FsckReport, RsmError> {
        self.node.rsm().read_barrier().await?;
        let limit = match limit {
            0 => FSCK_LIST_DEFAULT,
            n => n.min(FSCK_LIST_MAX),
        } as usize;
        let rf = self.replication_factor()?;
        let mut report = FsckReport::default();
        let mut after = None;
        loop {
            let page = self.local(|s| map::map_page(s, after, CHUNK_MAP_PAGE_ROWS))?;
            let Some(last) = page.last() else { break };
            after = Some((last.ino, last.index));
            for e in page {
                report.chunks += 1;
                let live: Vec<Replica> =
                    e.chunk.replicas.iter().filter(|r| self.registry.is_live(r.server)).cloned().collect();
                let item = |replicas| FsckChunk {
                    chunk: e.chunk.id,
                    ino: e.ino,
                    index: e.index,
                    version: e.chunk.version,
                    replicas,
                };
                if live.is_empty() {
                    report.unavailable_count += 1;
                    if report.unavailable.len() < limit {
                        report.unavailable.push(item(live));
                    }
                } else if live.len() < rf {
                    report.under_replicated_count += 1;
                    if report.under_replicated.len() < limit {
                        report.under_replicated.push(item(live));
                    }
                }
            }
        }
        let orphans = self.memory(|m| m.orphans.clone());
        report.orphan_count = orphans.len() as u64;
        report.orphans = orphans.into_iter().take(limit).collect();
        let live = self.registry.live().unwrap_or_default();
        report.space = live.iter().map(|s| (s.id, s.capacity_bytes, s.free_bytes)).collect();
        report.chunkservers = live.into_iter().map(|s| Replica { server: s.server(), addr: s.addr }).collect();
        report.chunk_size_bytes = self.chunk_size_bytes()?;
        Ok(report)
    }

    // ---- the leader's loop ----

    /// Works while this node leads: pending truncations and the deletion queue every round,
    /// the orphan scan every `orphan_scan_interval` — and, in a loop of its own so that long
    /// copies never hold up deletions and truncations, healing.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tokio::join!(self.clone().maintain(stop.clone()), self.heal_while_leader(stop));
    }

    /// Whether this node leads a formatted filesystem.
    fn leads(&self) -> bool {
        self.node.rsm().is_leader() && self.node.formatted_locally()
    }

    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let mut interval = tokio::time::interval(CHUNK_WORK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading_term: Option<u64> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let term = self.node.rsm().metrics().borrow().current_term;
            if !self.leads() {
                if leading_term.take().is_some() {
                    self.memory(|m| *m = Memory::default());
                }
                continue;
            }
            if leading_term != Some(term) {
                // A new term: what an earlier leadership remembered (scan grace) is void. The
                // queues this node is about to scan may hold a former leader's tombstones.
                self.memory(|m| *m = Memory::default());
                leading_term = Some(term);
                self.compact_queues().await;
            }
            self.locks.prune();
            if let Err(e) = self.flush_truncates(None).await {
                tracing::warn!(error = %e, "pending truncations");
            }
            if let Err(e) = self.collect_garbage().await {
                tracing::warn!(error = %e, "chunk deletion round");
            }
            let due = self.memory(|m| m.last_scan.is_none_or(|t| t.elapsed() >= self.orphan_scan_interval));
            if due {
                match self.scan_orphans().await {
                    Ok(n) if n > 0 => tracing::info!(orphans = n, "orphan scan deleted replicas"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "orphan scan"),
                }
            }
        }
    }

    async fn heal_while_leader(self: Arc<Self>, stop: CancellationToken) {
        let mut interval = tokio::time::interval(CHUNK_WORK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            if !self.leads() {
                continue;
            }
            if let Err(e) = self.heal().await {
                tracing::warn!(error = %e, "healing round");
                // The walk may have stopped half-way: try again next round, not in 10 s.
                self.memory(|m| m.heal_walks.again = true);
            }
        }
    }

    /// Answers a leader call forwarded by a follower (or made locally).
    pub async fn leader_call(&self, method: &str, body: &[u8]) -> Result<Vec<u8>, RsmError> {
        match method {
            RPC_REPORT_FAILURE => {
                let report: FailureReport = bincode::deserialize(body).map_err(internal)?;
                let outcome = self.report_failure(report).await?;
                Ok(crate::namespace::command::encode_outcome(&outcome))
            }
            RPC_FLUSH_TRUNCATES => {
                let bytes: [u8; 8] = body.try_into().map_err(|_| internal("malformed flush request"))?;
                let undone = self.flush_truncates(Some(InodeId(u64::from_be_bytes(bytes)))).await?;
                Ok((undone as u64).to_be_bytes().to_vec())
            }
            RPC_FSCK => {
                let bytes: [u8; 4] = body.try_into().map_err(|_| internal("malformed fsck request"))?;
                let report = self.fsck(u32::from_be_bytes(bytes)).await?;
                bincode::serialize(&report).map_err(internal)
            }
            other => Err(internal(format!("unknown leader call {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn servers(ids: &[u64]) -> Vec<ChunkserverId> {
        ids.iter().map(|&i| ChunkserverId(i)).collect()
    }

    #[test]
    fn healing_walks_on_change_or_request_else_when_idle_interval_passed() {
        let mut walks = HealWalks::default();
        let t0 = Instant::now();
        assert!(walks.due(servers(&[1, 2, 3]), t0), "a new leader walks at once");
        assert!(!walks.due(servers(&[1, 2, 3]), t0 + Duration::from_millis(500)), "nothing changed");

        assert!(walks.due(servers(&[1, 3]), t0 + Duration::from_secs(1)), "a server was lost");
        assert!(!walks.due(servers(&[1, 3]), t0 + Duration::from_millis(1500)));
        assert!(walks.due(servers(&[1, 3, 4]), t0 + Duration::from_secs(2)), "a server joined");

        walks.again = true;
        assert!(walks.due(servers(&[1, 3, 4]), t0 + Duration::from_millis(2500)), "asked to walk again");
        assert!(!walks.due(servers(&[1, 3, 4]), t0 + Duration::from_secs(3)), "the request was used up");

        let idle = t0 + Duration::from_millis(2500) + HEAL_IDLE_WALK_INTERVAL;
        assert!(!walks.due(servers(&[1, 3, 4]), idle - Duration::from_millis(1)));
        assert!(walks.due(servers(&[1, 3, 4]), idle), "the idle interval passed");
    }
}
