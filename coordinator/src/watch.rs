//! Watch streams: etcd's watch semantics over the MVCC store's history and live events.
//!
//! Promises, per watcher: events arrive in revision order, with no gaps and no duplicates, from
//! its start revision on; a start revision older than the compaction point cancels the watcher
//! with `compact_revision` set (etcd's behaviour). Each watcher first subscribes to live events,
//! then replays stored history up to the revision it read, then continues live, skipping what
//! the replay already sent. A watcher that falls behind the live buffer replays from history
//! again rather than dropping events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_proto::mvccpb::{event::EventType, Event};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::backend::Backend;
use crate::limits;
use crate::mvcc::{self, EventBatch, KvError};
use crate::rsm::store::StateStore;

/// etcd's watch id for responses that belong to no single watcher (progress requests).
const INVALID_WATCH_ID: i64 = -1;
/// etcd's filter values.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

type Outbox = mpsc::Sender<Result<WatchResponse, Status>>;

/// One client's watch stream: its watchers and their tasks.
pub struct WatchSession {
    backend: Arc<Backend>,
    out: Outbox,
    watchers: HashMap<i64, JoinHandle<()>>,
    next_id: i64,
    progress_interval: Duration,
}

impl Drop for WatchSession {
    fn drop(&mut self) {
        for (_, task) in self.watchers.drain() {
            task.abort();
        }
    }
}

impl WatchSession {
    pub fn new(backend: Arc<Backend>, out: Outbox, progress_interval: Duration) -> Self {
        Self { backend, out, watchers: HashMap::new(), next_id: 0, progress_interval }
    }

    /// Handles one request from the client. Returns false when the client has gone.
    pub async fn handle(&mut self, request: WatchRequest) -> bool {
        self.watchers.retain(|_, t| !t.is_finished());
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                let id = cancel.watch_id;
                if let Some(task) = self.watchers.remove(&id) {
                    task.abort();
                }
                let header = self.header();
                self.send(WatchResponse { header, watch_id: id, canceled: true, ..Default::default() }).await
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let header = self.header();
                self.send(WatchResponse { header, watch_id: INVALID_WATCH_ID, ..Default::default() }).await
            }
            None => true,
        }
    }

    fn header(&self) -> Option<cairn_proto::etcdserverpb::ResponseHeader> {
        Some(self.backend.header(self.backend.current_revision().unwrap_or(0)))
    }

    async fn send(&self, response: WatchResponse) -> bool {
        self.out.send(Ok(response)).await.is_ok()
    }

    async fn create(&mut self, create: WatchCreateRequest) -> bool {
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let header = self.header();
        if self.watchers.contains_key(&id) || self.watchers.len() >= limits::WATCHES_PER_STREAM_MAX {
            let reason = if self.watchers.contains_key(&id) {
                "watch id already in use"
            } else {
                "too many watches on this stream"
            };
            return self
                .send(WatchResponse {
                    header,
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.into(),
                    ..Default::default()
                })
                .await;
        }
        // Subscribe before announcing: nothing committed after the announcement can be missed.
        let live = self.backend.rsm().app().subscribe();
        // The created response goes out before any event, in request order (clients rely on it).
        if !self.send(WatchResponse { header, watch_id: id, created: true, ..Default::default() }).await {
            return false;
        }
        let watcher = Watcher {
            backend: self.backend.clone(),
            out: self.out.clone(),
            id,
            filter: KeyFilter::new(&create),
            start_revision: create.start_revision,
            progress_notify: create.progress_notify,
            progress_interval: self.progress_interval,
        };
        self.watchers.insert(id, tokio::spawn(watcher.run(live)));
        true
    }
}

/// Which events a watcher wants.
struct KeyFilter {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl KeyFilter {
    fn new(c: &WatchCreateRequest) -> Self {
        Self {
            key: c.key.clone(),
            range_end: c.range_end.clone(),
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&FILTER_NOPUT),
            no_delete: c.filters.contains(&FILTER_NODELETE),
        }
    }

    fn key_matches(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }

    /// The event as this watcher should see it, or None if filtered out.
    fn apply(&self, event: &Event) -> Option<Event> {
        let key = event.kv.as_ref().map(|kv| kv.key.as_slice()).unwrap_or_default();
        if !self.key_matches(key) {
            return None;
        }
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let mut e = event.clone();
        if !self.prev_kv {
            e.prev_kv = None;
        }
        Some(e)
    }
}

struct Watcher {
    backend: Arc<Backend>,
    out: Outbox,
    id: i64,
    filter: KeyFilter,
    start_revision: i64,
    progress_notify: bool,
    progress_interval: Duration,
}

enum Stop {
    ClientGone,
    Compacted(i64),
    Failed(String),
}

impl Watcher {
    async fn run(self, mut live: broadcast::Receiver<Arc<EventBatch>>) {
        let Err(outcome) = self.serve(&mut live).await else { return };
        match outcome {
            Stop::ClientGone => {}
            Stop::Compacted(compact_revision) => {
                let header = Some(self.backend.header(self.backend.current_revision().unwrap_or(0)));
                let _ = self
                    .out
                    .send(Ok(WatchResponse {
                        header,
                        watch_id: self.id,
                        compact_revision,
                        canceled: true,
                        ..Default::default()
                    }))
                    .await;
            }
            Stop::Failed(reason) => {
                tracing::warn!(watch_id = self.id, %reason, "watch failed");
                let header = Some(self.backend.header(self.backend.current_revision().unwrap_or(0)));
                let _ = self
                    .out
                    .send(Ok(WatchResponse {
                        header,
                        watch_id: self.id,
                        canceled: true,
                        cancel_reason: reason,
                        ..Default::default()
                    }))
                    .await;
            }
        }
    }

    async fn emit(&self, revision: i64, events: Vec<Event>) -> Result<(), Stop> {
        let header = Some(self.backend.header(revision));
        self.out
            .send(Ok(WatchResponse { header, watch_id: self.id, events, ..Default::default() }))
            .await
            .map_err(|_| Stop::ClientGone)
    }

    /// Replays stored events from `next` through the current revision; returns the next
    /// revision to deliver.
    async fn replay(&self, mut next: i64) -> Result<i64, Stop> {
        loop {
            let (current, events) = {
                let view = self.backend.rsm().store().read_view();
                let current = mvcc::current_revision(&*view).map_err(|e| Stop::Failed(e.to_string()))?;
                if next > current {
                    return Ok(next);
                }
                let events = mvcc::history(
                    &*view,
                    next,
                    &self.filter.key,
                    &self.filter.range_end,
                    limits::WATCH_HISTORY_EVENTS_PER_RESPONSE,
                )
                .map_err(|e| match e {
                    KvError::Compacted { compact_revision } => Stop::Compacted(compact_revision),
                    other => Stop::Failed(other.to_string()),
                })?;
                (current, events)
            };
            let Some(last) = events.last().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision) else {
                return Ok(current + 1);
            };
            let wanted: Vec<Event> = events.iter().filter_map(|e| self.filter.apply(e)).collect();
            if !wanted.is_empty() {
                self.emit(current, wanted).await?;
            }
            if events.len() < limits::WATCH_HISTORY_EVENTS_PER_RESPONSE {
                return Ok(current.max(last) + 1);
            }
            next = last + 1;
        }
    }

    async fn serve(&self, live: &mut broadcast::Receiver<Arc<EventBatch>>) -> Result<(), Stop> {
        let mut next = if self.start_revision > 0 {
            self.start_revision
        } else {
            self.backend.current_revision().map_err(|e| Stop::Failed(e.to_string()))? + 1
        };
        next = self.replay(next).await?;
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.tick().await;
        let mut sent_since_tick = false;
        loop {
            tokio::select! {
                batch = live.recv() => match batch {
                    Ok(batch) => {
                        if batch.revision < next {
                            continue;
                        }
                        if batch.revision > next {
                            // A gap (e.g. a snapshot was installed): the store has what we missed.
                            next = self.replay(next).await?;
                            continue;
                        }
                        next = batch.revision + 1;
                        let wanted: Vec<Event> = batch.events.iter().filter_map(|e| self.filter.apply(e)).collect();
                        if !wanted.is_empty() {
                            self.emit(batch.revision, wanted).await?;
                            sent_since_tick = true;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::debug!(watch_id = self.id, skipped, "watcher fell behind; replaying history");
                        next = self.replay(next).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Failed("server stopping".into())),
                },
                _ = progress.tick(), if self.progress_notify => {
                    if !sent_since_tick {
                        // Report what this watcher has processed, not the store's revision:
                        // events of later revisions may still be queued for it, and a progress
                        // notification promises there are none up to its revision.
                        self.emit(next - 1, Vec::new()).await?;
                    }
                    sent_since_tick = false;
                }
            }
        }
    }
}
