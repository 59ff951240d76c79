//! The coordinator's client library, for Cairn's own components: chunkservers register under
//! leases and keep them alive, the metaserver watches what they registered.
//!
//! It speaks the etcd v3 gRPC API (`KV`, `Lease`, `Watch`) and nothing else, so it works against
//! `cairn-coordinator` and against a real etcd 3.4 alike.
//!
//! # What it promises
//!
//! * **Endpoint failover.** A [`CoordinatorClient`] holds a lazily connected channel to every
//!   endpoint it was given and sends each call to the *current* one. When an attempt fails other
//!   than by a definite answer from the server (transport error, deadline, "no leader", ...),
//!   the next endpoint becomes current for every later call; if the failure allows another
//!   attempt (below), the call is tried again there after a backoff, for at most
//!   [`ClientOptions::attempts`] attempts, each bounded by [`ClientOptions::request_timeout`].
//! * **Writes are never applied twice by the library.** Reads (`get*`, read-only txns,
//!   `time_to_live`) are retried after any transport failure or timeout. Writes are retried
//!   only when the failure proves the request was not applied: the connection was refused
//!   before anything was sent, or the server answered "etcdserver: no leader", "etcdserver:
//!   server stopped", "etcdserver: not capable" or "etcdserver: too many requests". After any
//!   other failure — the deadline passed, the connection broke after sending, the server said
//!   "etcdserver: request timed out" — a write fails with [`ClientError::OutcomeUnknown`]: it
//!   may have been applied, or may still be, and only the caller can tell (read it back, or
//!   make the write conditional with a txn). Every other error means it was not applied,
//!   except [`ClientError::Malformed`] (the server did process it but answered nonsense).
//! * **Lease keep-alive.** [`CoordinatorClient::keep_alive`] returns a [`LeaseKeeper`] whose
//!   task renews the lease every TTL/3 on a `LeaseKeepAlive` stream, moving to another endpoint
//!   when the stream breaks (pausing at most TTL/6 between tries). Its [`LeaseState`] turns
//!   [`LeaseState::Lost`] as soon as the server answers TTL 0 (the lease does not exist) or the
//!   time the last renewal guaranteed has run out — on the client's
//!   clock, measured from when that renewal was *sent*, so the client never believes in a lease
//!   the server has already expired (clock rates assumed equal). Dropping the keeper stops the
//!   renewals (and revokes the lease, if asked to).
//! * **Watch resumption.** A [`WatchStream`] delivers every event of its key range exactly
//!   once, in revision order, from its start revision on, across broken streams and dead
//!   endpoints: it remembers the last revision it delivered and re-creates the watch on another
//!   endpoint from the next one. If that revision has been compacted away, the stream yields
//!   [`ClientError::Compacted`] and ends — events were lost and the consumer must re-read
//!   (unless the server's progress notifications had vouched that nothing was missed; see
//!   `watch.rs`).
//!
//! # What it assumes
//!
//! * The server never splits the events of one revision across two watch responses. etcd does
//!   so only for watches created with `fragment`, which this client never asks for; Cairn's
//!   coordinator never does.
//! * Calls run inside a Tokio runtime.
//!
//! # What it never does
//!
//! It never panics on what a server sends (a malformed answer is
//! [`ClientError::Malformed`]), never buffers without a bound (see the `CLIENT_*` limits in
//! [`crate::limits`]), and never keeps a task running past the handle that owns it (except a
//! dropped keeper's revoke, bounded by the client's attempts).
//!
//! # Not (yet) covered
//!
//! A server that is alive but cut off from its cluster keeps a watch open without events (etcd
//! clients ask for `WithRequireLeader`, which Cairn's coordinator does not implement); a server
//! that is frozen is noticed through HTTP/2 pings within
//! [`crate::limits::CLIENT_HTTP2_PING_INTERVAL`] plus [`crate::limits::CLIENT_HTTP2_PING_TIMEOUT`].

mod error;
mod kv;
mod lease;
mod options;
mod retry;
mod txn;
mod types;
mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::ResponseHeader;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

pub use error::ClientError;
pub use lease::{KeeperOptions, LeaseGrant, LeaseKeeper, LeaseLoss, LeaseState, LeaseTtl};
pub use options::ClientOptions;
pub use txn::{CmpOp, Compare, Txn, TxnOp, TxnOpResponse, TxnOutcome};
pub use types::{prefix_range_end, Deleted, KeyValue, LeaseId, Range, Revision};
pub use watch::{EventKind, WatchBatch, WatchEvent, WatchSpec, WatchStream};

use crate::limits;
use retry::{classify, may_retry, Backoff, Fate, Op};

/// A client of a coordinator cluster (or of etcd 3.4). Cheap to clone; clones share the
/// channels and the current endpoint.
#[derive(Clone)]
pub struct CoordinatorClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<EndpointChannel>,
    /// Index into `endpoints` of the one calls go to.
    current: AtomicUsize,
    options: ClientOptions,
}

struct EndpointChannel {
    /// As given to `connect`, for messages.
    addr: String,
    channel: Channel,
}

impl std::fmt::Debug for CoordinatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorClient")
            .field("endpoints", &self.endpoints())
            .field("current", &self.current_endpoint())
            .finish()
    }
}

impl CoordinatorClient {
    /// A client of the servers at `endpoints` (`host:port` or `http://host:port`). Nothing is
    /// connected yet: each channel connects on first use (and reconnects after a failure), so
    /// this succeeds while servers are down.
    pub async fn connect(endpoints: &[String], options: ClientOptions) -> Result<Self, ClientError> {
        options.validate()?;
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        if endpoints.len() > limits::CLIENT_ENDPOINTS_MAX {
            return Err(ClientError::TooManyEndpoints { count: endpoints.len(), max: limits::CLIENT_ENDPOINTS_MAX });
        }
        let endpoints = endpoints
            .iter()
            .map(|addr| {
                Ok(EndpointChannel { addr: addr.clone(), channel: lazy_channel(addr, &options)?.connect_lazy() })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(CoordinatorClient { inner: Arc::new(Inner { endpoints, current: AtomicUsize::new(0), options }) })
    }

    /// The endpoints, as given to [`CoordinatorClient::connect`].
    pub fn endpoints(&self) -> Vec<&str> {
        self.inner.endpoints.iter().map(|e| e.addr.as_str()).collect()
    }

    /// The endpoint the next call goes to.
    pub fn current_endpoint(&self) -> &str {
        &self.current().1.addr
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    fn current(&self) -> (usize, &EndpointChannel) {
        let index = self.inner.current.load(Ordering::Acquire) % self.inner.endpoints.len();
        (index, &self.inner.endpoints[index])
    }

    /// Makes the endpoint after `from` current, unless another call already moved on from
    /// `from` (concurrent failures on one endpoint skip it once, not once each).
    fn fail_over(&self, from: usize) {
        let next = (from + 1) % self.inner.endpoints.len();
        let _ = self.inner.current.compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire);
    }

    fn addr(&self, index: usize) -> &str {
        &self.inner.endpoints[index].addr
    }

    /// A request carrying the per-attempt deadline to the server.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.inner.options.request_timeout);
        request
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.inner.options.backoff_base, self.inner.options.backoff_max)
    }

    /// Runs a unary RPC with failover: `attempt` is called with the current endpoint's channel
    /// once per attempt. Returns the answer and the index of the endpoint that gave it.
    async fn call<T, F, Fut>(&self, operation: &'static str, op: Op, mut attempt: F) -> Result<(T, usize), ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let options = &self.inner.options;
        let mut backoff = self.backoff();
        let mut last = String::new();
        for n in 1..=options.attempts {
            let (index, endpoint) = self.current();
            let (fate, reason) =
                match tokio::time::timeout(options.request_timeout, attempt(endpoint.channel.clone())).await {
                    Ok(Ok(response)) => return Ok((response.into_inner(), index)),
                    Ok(Err(status)) => match classify(&status) {
                        Fate::Refused => return Err(server_error(operation, &endpoint.addr, &status)),
                        fate => (fate, describe(&status)),
                    },
                    Err(_) => (Fate::Unknown, format!("no answer within {:?}", options.request_timeout)),
                };
            // The endpoint failed us: later calls start elsewhere, whether this one goes on or not.
            self.fail_over(index);
            if !may_retry(op, fate) {
                return Err(ClientError::OutcomeUnknown { operation, endpoint: endpoint.addr.clone(), reason });
            }
            let addr = &endpoint.addr;
            tracing::debug!(operation, endpoint = %addr, attempt = n, %reason, "coordinator call failed; trying again");
            last = format!("{}: {reason}", endpoint.addr);
            if n < options.attempts {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        Err(ClientError::Unavailable { operation, attempts: options.attempts, last })
    }
}

/// The endpoint configuration for `addr`: deadlines and HTTP/2 pings.
fn lazy_channel(addr: &str, options: &ClientOptions) -> Result<Endpoint, ClientError> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    if !uri.starts_with("http://") {
        return Err(ClientError::InvalidEndpoint {
            endpoint: addr.to_owned(),
            reason: "only plain-text http:// endpoints are supported".to_owned(),
        });
    }
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::InvalidEndpoint { endpoint: addr.to_owned(), reason: e.to_string() })?;
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(limits::CLIENT_HTTP2_PING_INTERVAL)
        .keep_alive_timeout(limits::CLIENT_HTTP2_PING_TIMEOUT)
        // etcd refuses pings on a connection without calls (grpc-go's PermitWithoutStream).
        .keep_alive_while_idle(false))
}

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(limits::CLIENT_RECV_BYTES_MAX)
        .max_encoding_message_size(limits::CLIENT_SEND_BYTES_MAX)
}

fn lease_client(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel)
        .max_decoding_message_size(limits::CLIENT_RECV_BYTES_MAX)
        .max_encoding_message_size(limits::CLIENT_SEND_BYTES_MAX)
}

fn watch_client(channel: Channel) -> WatchClient<Channel> {
    WatchClient::new(channel)
        .max_decoding_message_size(limits::CLIENT_RECV_BYTES_MAX)
        .max_encoding_message_size(limits::CLIENT_SEND_BYTES_MAX)
}

/// A status as text for messages: its code and message, and the transport error behind it.
fn describe(status: &Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(error) = source {
        let cause = error.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = error.source();
    }
    text
}

fn server_error(operation: &'static str, endpoint: &str, status: &Status) -> ClientError {
    ClientError::Server {
        operation,
        endpoint: endpoint.to_owned(),
        code: status.code(),
        message: status.message().to_owned(),
    }
}

/// The revision in a response header, which etcd always sends.
fn header_revision(
    header: Option<ResponseHeader>,
    operation: &'static str,
    endpoint: &str,
) -> Result<Revision, ClientError> {
    header.map(|h| Revision(h.revision)).ok_or_else(|| ClientError::Malformed {
        operation,
        endpoint: endpoint.to_owned(),
        what: "response without a header",
    })
}
