//! Watches that survive broken streams and dead endpoints.
//!
//! Each [`WatchStream`] owns one task and one gRPC `Watch` stream with a single watcher on it.
//! The task remembers the next revision it owes the consumer ([`Resume`]); when the stream
//! breaks it re-creates the watcher on the next endpoint from that revision, and drops any event
//! it already delivered, so the consumer sees each revision's events once, in order, with no
//! gap (given the server keeps revisions whole within a response; see [`super`]).
//!
//! A watcher that asked for a revision the server has compacted is canceled by the server with
//! the compaction point. Usually that ends the stream with [`ClientError::Compacted`]. The
//! exception: if the server's own progress notifications (which this client asks for) already
//! vouched that nothing of interest happened up to the compaction point, nothing was lost and
//! the watch resumes there.

use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_proto::mvccpb::{event::EventType, Event};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ClientError;
use super::retry::{classify, Backoff, Fate};
use super::types::{prefix_range_end, KeyValue, Revision};
use super::{describe, watch_client, CoordinatorClient};
use crate::limits;

/// What to watch: a key, a prefix or a range, from a revision or from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    key: Vec<u8>,
    range_end: Vec<u8>,
    start_revision: Option<Revision>,
    prev_kv: bool,
}

impl WatchSpec {
    /// Changes of exactly `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        WatchSpec { key: key.into(), range_end: Vec::new(), start_revision: None, prev_kv: false }
    }

    /// Changes of every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        WatchSpec { key, range_end, start_revision: None, prev_kv: false }
    }

    /// Changes of every key in `[start, end)`.
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        WatchSpec { key: start.into(), range_end: end.into(), start_revision: None, prev_kv: false }
    }

    /// Starts with the changes made at `revision` (typically a read's revision + 1), instead of
    /// with the first change after the watch is created.
    pub fn from_revision(mut self, revision: Revision) -> Self {
        self.start_revision = Some(revision);
        self
    }

    /// Delivers each event with the key's previous value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

/// Whether an event set or deleted its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// The key after the change. For a delete only `key` and `mod_revision` (the deletion's
    /// revision) are meaningful.
    pub kv: KeyValue,
    /// The key before the change, if the watch asked for it and the key existed.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }

    pub fn key(&self) -> &[u8] {
        &self.kv.key
    }

    pub fn value(&self) -> &[u8] {
        &self.kv.value
    }

    fn from_proto(event: Event) -> Result<Self, &'static str> {
        let kind = match EventType::try_from(event.r#type) {
            Ok(EventType::Put) => EventKind::Put,
            Ok(EventType::Delete) => EventKind::Delete,
            Err(_) => return Err("event of an unknown type"),
        };
        let kv = event.kv.ok_or("event without a key-value")?;
        Ok(WatchEvent { kind, kv: KeyValue::from_proto(kv), prev: event.prev_kv.map(KeyValue::from_proto) })
    }
}

/// Events the server sent in one response: one or more whole revisions, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The server's revision when it sent them (at least the last event's).
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// The consumer's end of a watch: event batches in revision order, then, if the watch ends,
/// one error. Dropping it cancels the watch.
///
/// It ends with [`ClientError::Compacted`] when events were compacted away before they could
/// be delivered, [`ClientError::Unavailable`] when no endpoint would take the watch back for
/// [`super::ClientOptions::watch_resume_timeout`], and [`ClientError::Server`] /
/// [`ClientError::WatchCanceled`] / [`ClientError::Malformed`] when a server refuses it or
/// sends nonsense.
#[derive(Debug)]
pub struct WatchStream {
    batches: mpsc::Receiver<Result<WatchBatch, ClientError>>,
    task: JoinHandle<()>,
}

impl WatchStream {
    /// The next batch; `None` after the final error has been taken (or if the task died).
    pub async fn recv(&mut self) -> Option<Result<WatchBatch, ClientError>> {
        self.batches.recv().await
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchBatch, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.batches.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        // Dropping the task drops its gRPC stream, which cancels the watcher on the server.
        self.task.abort();
    }
}

impl CoordinatorClient {
    /// Starts watching. Returns once the server has created the watcher (so every change
    /// committed after this returns will be delivered), or fails after the client's attempts.
    pub async fn watch(&self, spec: WatchSpec) -> Result<WatchStream, ClientError> {
        let (tx, batches) = mpsc::channel(limits::CLIENT_WATCH_BUFFER_BATCHES);
        let (ready_tx, ready) = oneshot::channel();
        let watcher =
            Watcher { client: self.clone(), resume: Resume::new(spec.start_revision), spec, tx, ready: Some(ready_tx) };
        let task = tokio::spawn(watcher.run());
        let stream = WatchStream { batches, task };
        match ready.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Unavailable {
                operation: "watch",
                attempts: 0,
                last: "the watch task ended before the watch was created".to_owned(),
            }),
        }
    }
}

/// Where a watch stands in the revision sequence. Pure bookkeeping, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resume {
    /// The first revision not yet delivered; `None` until a watch "from now" is created.
    next: Option<i64>,
    /// The server has vouched (in a progress notification) that every event of interest up to
    /// this revision has been sent.
    progress: i64,
}

impl Resume {
    fn new(start: Option<Revision>) -> Self {
        Resume { next: start.map(|r| r.0.max(1)), progress: 0 }
    }

    /// The `start_revision` to create the watcher with (0: from now).
    fn start_revision(&self) -> i64 {
        self.next.unwrap_or(0)
    }

    /// The watcher was created when the server's revision was `header_revision`.
    fn on_created(&mut self, header_revision: i64) {
        if self.next.is_none() {
            self.next = Some(header_revision.saturating_add(1));
        }
    }

    /// The events of one response that were not delivered before, and the revision to resume
    /// from after them. Events older than what was delivered are dropped, and so are any that
    /// would go backwards within the response.
    fn on_events(&mut self, events: Vec<Event>) -> Result<Vec<WatchEvent>, &'static str> {
        let mut floor = self.next.unwrap_or(0);
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            let event = WatchEvent::from_proto(event)?;
            let revision = event.revision().0;
            if revision < floor {
                continue;
            }
            floor = revision;
            fresh.push(event);
        }
        if let Some(last) = fresh.last() {
            self.next = Some(last.revision().0.saturating_add(1));
        }
        Ok(fresh)
    }

    /// A progress notification: nothing of interest happened up to `header_revision` beyond
    /// what was sent.
    fn on_progress(&mut self, header_revision: i64) {
        self.progress = self.progress.max(header_revision);
    }

    /// The server canceled the watcher because history before `compact_revision` is gone.
    /// `Ok` if nothing undelivered can have been lost (the watch resumes from there), else the
    /// error to end the stream with.
    fn on_compacted(&mut self, compact_revision: i64) -> Result<(), ClientError> {
        let next = self.next.unwrap_or(0);
        if compact_revision > next && compact_revision <= self.progress.saturating_add(1) {
            self.next = Some(compact_revision);
            return Ok(());
        }
        Err(ClientError::Compacted { compact_revision: Revision(compact_revision) })
    }
}

/// How one gRPC watch stream ended.
enum SessionEnd {
    /// The consumer dropped its end.
    ConsumerGone,
    /// The watch cannot go on; the error is the stream's last item.
    Fatal(ClientError),
    /// The stream broke; resume elsewhere. `created`: the server had created the watcher.
    Broken { reason: String, created: bool },
    /// Re-create the watcher at once (after a compaction that lost nothing).
    Restart,
}

struct Watcher {
    client: CoordinatorClient,
    spec: WatchSpec,
    resume: Resume,
    tx: mpsc::Sender<Result<WatchBatch, ClientError>>,
    /// Answers `watch()` once the first watcher is created, or fails.
    ready: Option<oneshot::Sender<Result<(), ClientError>>>,
}

impl Watcher {
    async fn run(mut self) {
        let options = self.client.options().clone();
        let mut backoff = self.client.backoff();
        let mut attempts = 0u32;
        // When the watch last stopped working (None while it works).
        let mut broken_since: Option<Instant> = None;
        loop {
            let (endpoint, _) = self.client.current();
            match self.session(endpoint, &mut backoff).await {
                SessionEnd::ConsumerGone => return,
                SessionEnd::Fatal(error) => return self.fail(error).await,
                SessionEnd::Restart => continue,
                SessionEnd::Broken { reason, created } => {
                    let addr = self.client.addr(endpoint).to_owned();
                    tracing::debug!(endpoint = %addr, %reason, "watch stream broke; resuming on the next endpoint");
                    self.client.fail_over(endpoint);
                    if created {
                        broken_since = None;
                    }
                    let since = *broken_since.get_or_insert_with(Instant::now);
                    attempts += 1;
                    let gave_up = if self.ready.is_some() {
                        attempts >= options.attempts
                    } else {
                        since.elapsed() >= options.watch_resume_timeout
                    };
                    if gave_up {
                        let last = format!("{addr}: {reason}");
                        return self.fail(ClientError::Unavailable { operation: "watch", attempts, last }).await;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Ends the watch with `error`: as `watch()`'s answer if it is still waiting, else as the
    /// stream's last item.
    async fn fail(mut self, error: ClientError) {
        match self.ready.take() {
            Some(ready) => {
                let _ = ready.send(Err(error));
            }
            None => {
                let _ = self.tx.send(Err(error)).await;
            }
        }
    }

    /// One gRPC stream: create the watcher, then forward its events until the stream ends.
    async fn session(&mut self, endpoint: usize, backoff: &mut Backoff) -> SessionEnd {
        let timeout = self.client.options().request_timeout;
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.spec.key.clone(),
                range_end: self.spec.range_end.clone(),
                start_revision: self.resume.start_revision(),
                progress_notify: true,
                filters: Vec::new(),
                prev_kv: self.spec.prev_kv,
                watch_id: 0,
                fragment: false,
            })),
        };
        // The request side stays open for as long as the watch runs: servers end a watch stream
        // whose client half is closed. The create request is queued before the call, as a
        // server may hold back the response headers until it answers something.
        let (requests, rx) = mpsc::channel(1);
        if requests.send(create).await.is_err() {
            return SessionEnd::Broken { reason: "watch request queue closed".to_owned(), created: false };
        }
        let channel = self.client.inner.endpoints[endpoint].channel.clone();
        let mut responses = match tokio::time::timeout(timeout, watch_client(channel).watch(ReceiverStream::new(rx)))
            .await
        {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return failed(&status, false, self.client.addr(endpoint)),
            Err(_) => return SessionEnd::Broken { reason: format!("no answer within {timeout:?}"), created: false },
        };
        let created = match tokio::time::timeout(timeout, responses.message()).await {
            Ok(Ok(Some(response))) if response.created => response,
            Ok(Ok(Some(_))) => {
                return SessionEnd::Broken {
                    reason: "watch answered before it was created".to_owned(),
                    created: false,
                };
            }
            Ok(Ok(None)) => return SessionEnd::Broken { reason: "watch stream ended".to_owned(), created: false },
            Ok(Err(status)) => return failed(&status, false, self.client.addr(endpoint)),
            Err(_) => {
                return SessionEnd::Broken { reason: format!("watch not created within {timeout:?}"), created: false }
            }
        };
        let watch_id = created.watch_id;
        if created.canceled {
            return self.canceled(&created, false);
        }
        self.resume.on_created(created.header.as_ref().map_or(0, |h| h.revision));
        if let Some(ready) = self.ready.take() {
            if ready.send(Ok(())).is_err() {
                return SessionEnd::ConsumerGone;
            }
        }
        loop {
            // No deadline: a quiet watch is legal. A dead server breaks the stream (connection
            // reset, or unanswered HTTP/2 pings).
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return SessionEnd::Broken { reason: "watch stream ended".to_owned(), created: true },
                Err(status) => return failed(&status, true, self.client.addr(endpoint)),
            };
            if response.watch_id != watch_id {
                continue;
            }
            if response.canceled {
                return self.canceled(&response, true);
            }
            let header_revision = response.header.as_ref().map(|h| h.revision);
            if response.events.is_empty() {
                if let Some(revision) = header_revision {
                    self.resume.on_progress(revision);
                }
                backoff.reset();
                continue;
            }
            let events = match self.resume.on_events(response.events) {
                Ok(events) => events,
                Err(what) => {
                    let endpoint = self.client.addr(endpoint).to_owned();
                    return SessionEnd::Fatal(ClientError::Malformed { operation: "watch", endpoint, what });
                }
            };
            let Some(last) = events.last().map(WatchEvent::revision) else { continue };
            backoff.reset();
            let batch = WatchBatch { revision: Revision(header_revision.unwrap_or(0)).max(last), events };
            if self.tx.send(Ok(batch)).await.is_err() {
                return SessionEnd::ConsumerGone;
            }
        }
    }

    /// The server canceled the watcher.
    fn canceled(&mut self, response: &WatchResponse, created: bool) -> SessionEnd {
        if response.compact_revision > 0 {
            return match self.resume.on_compacted(response.compact_revision) {
                Ok(()) => SessionEnd::Restart,
                Err(e) => SessionEnd::Fatal(e),
            };
        }
        // etcd cancels for lost leadership (with WithRequireLeader), a stopping server, or
        // denied permission; only the last is for good.
        if response.cancel_reason.contains("permission denied") {
            return SessionEnd::Fatal(ClientError::WatchCanceled { reason: response.cancel_reason.clone() });
        }
        SessionEnd::Broken { reason: format!("watch canceled: {}", response.cancel_reason), created }
    }
}

/// A watch stream failed with `status`: a definite refusal ends the watch, anything else is
/// resumed elsewhere (watching only reads).
fn failed(status: &tonic::Status, created: bool, endpoint: &str) -> SessionEnd {
    match classify(status) {
        Fate::Refused => SessionEnd::Fatal(ClientError::Server {
            operation: "watch",
            endpoint: endpoint.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }),
        Fate::NotApplied | Fate::Unknown => SessionEnd::Broken { reason: describe(status), created },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb;

    fn put(key: &str, revision: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(mvccpb::KeyValue { key: key.into(), mod_revision: revision, ..Default::default() }),
            prev_kv: None,
        }
    }

    fn revisions(events: &[WatchEvent]) -> Vec<i64> {
        events.iter().map(|e| e.revision().0).collect()
    }

    #[test]
    fn a_watch_from_now_starts_after_the_creation_revision() {
        let mut r = Resume::new(None);
        assert_eq!(r.start_revision(), 0);
        r.on_created(41);
        assert_eq!(r.start_revision(), 42);
        // A re-created watcher keeps its place.
        r.on_created(50);
        assert_eq!(r.start_revision(), 42);
    }

    #[test]
    fn delivered_events_are_never_delivered_again() {
        let mut r = Resume::new(Some(Revision(10)));
        let first = r.on_events(vec![put("a", 10), put("b", 11), put("c", 11)]).expect("events");
        assert_eq!(revisions(&first), vec![10, 11, 11]);
        assert_eq!(r.start_revision(), 12);
        // After a reconnect a server replays from 12, but a confused one might send older ones.
        let again = r.on_events(vec![put("b", 11), put("d", 12), put("e", 13)]).expect("events");
        assert_eq!(revisions(&again), vec![12, 13]);
        assert_eq!(r.start_revision(), 14);
        // Nothing new: nothing delivered, position unchanged.
        assert!(r.on_events(vec![put("e", 13)]).expect("events").is_empty());
        assert_eq!(r.start_revision(), 14);
    }

    #[test]
    fn events_never_go_backwards_within_a_response() {
        let mut r = Resume::new(Some(Revision(1)));
        let events = r.on_events(vec![put("a", 5), put("b", 3), put("c", 5), put("d", 6)]).expect("events");
        assert_eq!(revisions(&events), vec![5, 5, 6]);
    }

    #[test]
    fn malformed_events_are_errors() {
        let mut r = Resume::new(Some(Revision(1)));
        assert!(r.on_events(vec![Event { r#type: 7, kv: None, prev_kv: None }]).is_err());
        assert!(r.on_events(vec![Event { r#type: 0, kv: None, prev_kv: None }]).is_err());
        // Nothing was delivered, so the position stays.
        assert_eq!(r.start_revision(), 1);
    }

    #[test]
    fn compaction_ends_the_watch_unless_progress_covers_it() {
        let mut r = Resume::new(Some(Revision(5)));
        assert!(matches!(r.on_compacted(20), Err(ClientError::Compacted { compact_revision: Revision(20) })));
        // The server vouched for everything up to 30: compaction at 20 lost nothing undelivered.
        r.on_progress(30);
        assert!(r.on_compacted(20).is_ok());
        assert_eq!(r.start_revision(), 20);
        // But not beyond what it vouched for.
        let mut r = Resume::new(Some(Revision(5)));
        r.on_progress(30);
        assert!(r.on_compacted(32).is_err());
        assert!(r.on_compacted(31).is_ok());
    }

    #[test]
    fn a_start_revision_below_one_means_the_oldest() {
        assert_eq!(Resume::new(Some(Revision(0))).start_revision(), 1);
        assert_eq!(Resume::new(Some(Revision(-3))).start_revision(), 1);
    }
}
