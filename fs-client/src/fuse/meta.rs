//! Calling the metaserver group: one channel per endpoint, failover to the next endpoint on
//! transport and cluster errors (a leader change answers UNAVAILABLE), and a bound on how long
//! one operation keeps trying before it fails with EIO instead of hanging the application.
//!
//! POSIX failures come back in each response's `errno` (Linux numbering) and are returned to
//! the kernel unchanged.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cairn_proto::meta::meta_service_client::MetaServiceClient;
use cairn_proto::meta::*;
use cairn_proto::{META_LEADER_HEADER, META_REQUEST_HEADER};
use fuser::Errno;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::limits::{META_INTERNAL_RETRIES, META_RETRY_BACKOFF, META_RPC_TIMEOUT, MOUNT_CONNECT_TIMEOUT};

/// A response that carries a POSIX outcome.
pub trait HasErrno {
    fn errno(&self) -> u32;
}

macro_rules! has_errno {
    ($($t:ty),* $(,)?) => { $(impl HasErrno for $t { fn errno(&self) -> u32 { self.errno } })* };
}

has_errno!(
    AttrResponse,
    EntryResponse,
    ErrnoResponse,
    RemoveResponse,
    RenameResponse,
    CreateResponse,
    ReadlinkResponse,
    GetXattrResponse,
    ListXattrResponse,
    ReadDirResponse,
    StatFsResponse,
    OpenSessionResponse,
    HeartbeatResponse,
    GetLockResponse,
    LockResponse,
    GetChunksResponse,
    ChunkResponse,
    FormatResponse,
);

pub type Client = MetaServiceClient<Channel>;

impl RequestTicket<'_> {
    /// `message` as a gRPC request carrying this ticket's request id.
    fn request<R>(&self, message: R) -> tonic::Request<R> {
        let mut request = tonic::Request::new(message);
        if let Some((_, value)) = &self.header {
            request.metadata_mut().insert(META_REQUEST_HEADER, value.clone());
        }
        request
    }
}

/// The position in `endpoints` of the leader that a metaserver follower named in an answer's
/// metadata ([`META_LEADER_HEADER`]); `None` without a hint or for an address not in the list.
/// Endpoints may be written with or without `http://`.
pub fn leader_hint(endpoints: &[String], metadata: &MetadataMap) -> Option<usize> {
    let leader = metadata.get(META_LEADER_HEADER)?.to_str().ok()?;
    let bare =
        |e: &str| e.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_owned();
    let leader = bare(leader);
    endpoints.iter().position(|e| bare(e) == leader)
}

#[derive(Debug)]
pub struct MetaClient {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    current: AtomicUsize,
    /// How long one operation retries an unreachable cluster.
    timeout: Duration,
    /// The mount's session (0 before it is open): calls carry a request id within it.
    session: AtomicU64,
    requests: Mutex<Requests>,
}

/// Request numbering within the session ([`META_REQUEST_HEADER`]).
#[derive(Debug, Default)]
struct Requests {
    next_seq: u64,
    /// Requests sent and not yet answered.
    waiting: BTreeSet<u64>,
}

/// A numbered request; its number stops being "waiting" when this is dropped.
struct RequestTicket<'a> {
    client: &'a MetaClient,
    header: Option<(u64, MetadataValue<Ascii>)>,
}

impl Drop for RequestTicket<'_> {
    fn drop(&mut self) {
        if let Some((seq, _)) = &self.header {
            self.client.requests().waiting.remove(seq);
        }
    }
}

impl MetaClient {
    pub fn new(endpoints: &[String], timeout: Duration) -> anyhow::Result<MetaClient> {
        anyhow::ensure!(!endpoints.is_empty(), "no metaserver endpoint given");
        let mut clients = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let uri = if e.contains("://") { e.clone() } else { format!("http://{e}") };
            let channel = Endpoint::from_shared(uri)
                .map_err(|err| anyhow::anyhow!("invalid metaserver endpoint {e:?}: {err}"))?
                .connect_timeout(MOUNT_CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy();
            clients.push(MetaServiceClient::new(channel));
        }
        Ok(MetaClient {
            endpoints: endpoints.to_vec(),
            clients,
            current: AtomicUsize::new(0),
            timeout,
            session: AtomicU64::new(0),
            requests: Mutex::new(Requests::default()),
        })
    }

    /// Numbers the calls made from now on within `session`, so the metaserver applies each
    /// change once however often a failover makes the client send it.
    pub fn set_session(&self, session: u64) {
        self.session.store(session, Ordering::Relaxed);
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A number for the next request (none before the session is open).
    fn ticket(&self) -> RequestTicket<'_> {
        let session = self.session.load(Ordering::Relaxed);
        if session == 0 {
            return RequestTicket { client: self, header: None };
        }
        let mut requests = self.requests();
        requests.next_seq += 1;
        let seq = requests.next_seq;
        let done_below = requests.waiting.first().copied().unwrap_or(seq).min(seq);
        requests.waiting.insert(seq);
        let header = format!("{session}:{seq}:{done_below}").parse().ok().map(|value| (seq, value));
        RequestTicket { client: self, header }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls `f` on the current endpoint, moving to the next one on transport or cluster
    /// errors until the operation timeout; answers the response's errno as an error.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Errno>
    where
        T: HasErrno,
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_inner(op, f, Some(META_RPC_TIMEOUT)).await
    }

    /// Like [`MetaClient::call`], but a single attempt may last forever (a blocking lock wait);
    /// only failing to reach the cluster is bounded by the timeout.
    pub async fn call_unbounded<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Errno>
    where
        T: HasErrno,
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_inner(op, f, None).await
    }

    /// [`MetaClient::call`] with the request built once and cloned for each attempt: `f` is
    /// the RPC, e.g. `|mut c, r| async move { c.open(r).await }`.
    ///
    /// Every attempt carries the same request id, so a change whose answer was lost (the
    /// leader died after committing it, the attempt timed out) is not applied twice.
    pub async fn rpc<R, T, F, Fut>(&self, op: &'static str, request: R, mut f: F) -> Result<T, Errno>
    where
        R: Clone,
        T: HasErrno,
        F: FnMut(Client, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let ticket = self.ticket();
        self.call(op, |c| f(c, ticket.request(request.clone()))).await
    }

    /// [`MetaClient::rpc`] without a bound on one attempt, as [`MetaClient::call_unbounded`].
    pub async fn rpc_unbounded<R, T, F, Fut>(&self, op: &'static str, request: R, mut f: F) -> Result<T, Errno>
    where
        R: Clone,
        T: HasErrno,
        F: FnMut(Client, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // Not numbered: a wait may last hours, and the metaserver keeps every reply of the
        // session from the oldest unanswered request on (lock calls are not replayed anyway:
        // a retried grant or release is a no-op for its owner).
        self.call_unbounded(op, |c| f(c, tonic::Request::new(request.clone()))).await
    }

    /// Moves later calls to the leader that the follower at `i` named in its answer.
    fn follow_leader(&self, i: usize, metadata: &MetadataMap) {
        if let Some(leader) = leader_hint(&self.endpoints, metadata).filter(|l| *l != i) {
            if self.current.compare_exchange(i, leader, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                tracing::debug!(from = %self.endpoints[i], to = %self.endpoints[leader], "following the metaserver leader");
            }
        }
    }

    async fn call_inner<T, F, Fut>(&self, op: &'static str, mut f: F, attempt: Option<Duration>) -> Result<T, Errno>
    where
        T: HasErrno,
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let n = self.clients.len();
        let mut failures = 0usize;
        let mut internal_failures = 0usize;
        loop {
            let i = self.current.load(Ordering::Relaxed) % n;
            let client = self.clients[i].clone();
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = match attempt {
                Some(t) => tokio::time::timeout(t.min(remaining.max(Duration::from_millis(1))), f(client)).await,
                None => Ok(f(client).await),
            };
            // A follower's answer, success or error, names the leader to call next.
            match &outcome {
                Ok(Ok(response)) => self.follow_leader(i, response.metadata()),
                Ok(Err(status)) => self.follow_leader(i, status.metadata()),
                Err(_) => {}
            }
            let error = match outcome {
                Ok(Ok(response)) => {
                    let response = response.into_inner();
                    return match response.errno() {
                        0 => Ok(response),
                        e => Err(Errno::from_i32(e as i32)),
                    };
                }
                Ok(Err(status)) => match status.code() {
                    Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted => status.to_string(),
                    // A transient cluster condition (a read barrier without a quorum) surfaces
                    // as INTERNAL too: retry a few times, but a persistent one is a real error.
                    Code::Internal if internal_failures < META_INTERNAL_RETRIES => {
                        internal_failures += 1;
                        status.to_string()
                    }
                    Code::InvalidArgument => {
                        tracing::warn!(op, endpoint = %self.endpoints[i], %status, "metaserver rejected a request");
                        return Err(Errno::EINVAL);
                    }
                    Code::Unimplemented => {
                        tracing::warn!(op, endpoint = %self.endpoints[i], %status, "metaserver lacks an RPC");
                        return Err(Errno::ENOSYS);
                    }
                    _ => {
                        tracing::warn!(op, endpoint = %self.endpoints[i], %status, "metaserver call failed");
                        return Err(Errno::EIO);
                    }
                },
                Err(_) => "attempt timed out".to_owned(),
            };
            failures += 1;
            tracing::debug!(op, endpoint = %self.endpoints[i], error, "metaserver call failed; trying the next endpoint");
            // No-op when the answer already moved the client to the leader.
            let _ = self.current.compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
            if Instant::now() >= deadline {
                tracing::warn!(op, error, "metaserver unreachable; failing with EIO");
                return Err(Errno::EIO);
            }
            if failures.is_multiple_of(n) {
                tokio::time::sleep(META_RETRY_BACKOFF.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hinted(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(META_LEADER_HEADER, value.parse().expect("ascii"));
        metadata
    }

    fn header(ticket: &RequestTicket<'_>) -> Option<String> {
        ticket.request(()).metadata().get(META_REQUEST_HEADER).map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[tokio::test]
    async fn requests_are_numbered_within_the_session() {
        let client = MetaClient::new(&["127.0.0.1:1".to_owned()], Duration::from_secs(1)).expect("client");
        assert_eq!(header(&client.ticket()), None, "no session, no number");
        client.set_session(7);
        let first = client.ticket();
        let second = client.ticket();
        assert_eq!(header(&first).as_deref(), Some("7:1:1"));
        assert_eq!(header(&second).as_deref(), Some("7:2:1"), "1 is still waiting");
        drop(first);
        assert_eq!(header(&client.ticket()).as_deref(), Some("7:3:2"), "2 is the oldest waiting");
        drop(second);
        assert_eq!(header(&client.ticket()).as_deref(), Some("7:4:4"));
    }

    #[test]
    fn leader_hint_places_the_named_endpoint() {
        let endpoints = vec!["127.0.0.1:7001".to_owned(), "http://127.0.0.1:7002/".to_owned(), "h:3".to_owned()];
        assert_eq!(leader_hint(&endpoints, &hinted("127.0.0.1:7002")), Some(1));
        assert_eq!(leader_hint(&endpoints, &hinted("http://127.0.0.1:7001")), Some(0));
        // An address the client was not given, and no hint at all, change nothing.
        assert_eq!(leader_hint(&endpoints, &hinted("10.0.0.9:7001")), None);
        assert_eq!(leader_hint(&endpoints, &MetadataMap::new()), None);
    }
}
