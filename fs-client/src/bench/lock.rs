//! `cairn bench lock`: a closed-loop benchmark of the etcd-v3 `Lock` service and of lease
//! keep-alives, runnable against Cairn's coordinator or a real etcd 3.4 (which serves v3lock
//! too).
//!
//! Operations, each run once per client count:
//! - `uncontended`: every worker owns a lock name of its own and repeats `Lock` + `Unlock`; the
//!   latency is that of the pair (an acquire/release round trip). With one client this is the
//!   classic uncontended lock.
//! - `contended`: every worker repeats `Lock` + `Unlock` on one shared name, so each grant is a
//!   handoff from the previous holder; ops/s is handoffs per second and the latency includes the
//!   wait in the queue.
//! - `keepalive`: every worker keeps one `LeaseKeepAlive` stream and sends the next renewal as
//!   soon as the previous one is answered; ops/s is renewals per second.
//!
//! Each worker grants itself a lease before the run (TTL well beyond the run) and revokes it
//! afterwards, so a run leaves no keys behind. Workers are spread over the endpoints
//! round-robin (worker i talks to endpoint i mod n) and share channels as `bench kv` does.
//! Failures are counted, never fatal; the first one's message is kept. Lock names live under
//! `cairn-bench-lock/<random run id>/`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_proto::etcdserverpb::lease_client::LeaseClient;
use cairn_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use cairn_proto::v3lockpb::lock_client::LockClient;
use cairn_proto::v3lockpb::{LockRequest, UnlockRequest};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::kv::{describe_status, endpoint_uri, new_histogram};
use crate::limits::{
    BENCH_CLIENTS_MAX, BENCH_CLIENTS_PER_CHANNEL, BENCH_CONNECT_TIMEOUT, BENCH_ERROR_BACKOFF,
    BENCH_KEEPALIVE_STREAM_BUFFER, BENCH_LOCK_LEASE_TTL_MARGIN, BENCH_LOCK_RPC_TIMEOUT, BENCH_RPC_TIMEOUT,
};

/// A benchmarked operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LockOp {
    /// `Lock` + `Unlock` of a lock name no other worker uses.
    Uncontended,
    /// `Lock` + `Unlock` of one name shared by every worker (handoffs).
    Contended,
    /// Lease renewals on a keep-alive stream, one in flight per worker.
    Keepalive,
}

impl LockOp {
    pub fn name(self) -> &'static str {
        match self {
            LockOp::Uncontended => "uncontended",
            LockOp::Contended => "contended",
            LockOp::Keepalive => "keepalive",
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockBenchConfig {
    /// `host:port` (or `http://host:port`) of every endpoint to spread workers over.
    pub endpoints: Vec<String>,
    /// Client counts; one run per count and operation.
    pub clients: Vec<usize>,
    /// Measured time of each run.
    pub duration: Duration,
    /// Unmeasured time at the start of each run.
    pub warmup: Duration,
    pub ops: Vec<LockOp>,
}

impl LockBenchConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            bail!("--endpoints needs at least one host:port (and no empty entries)");
        }
        if self.clients.is_empty() || self.clients.iter().any(|&c| c == 0 || c > BENCH_CLIENTS_MAX) {
            bail!("--clients must list counts between 1 and {BENCH_CLIENTS_MAX}");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.ops.is_empty() {
            bail!("--ops needs at least one operation");
        }
        Ok(())
    }

    /// Lease TTL for the workers: the whole run plus a margin, so no lease expires mid-run.
    fn lease_ttl_secs(&self) -> i64 {
        let run = self.warmup + self.duration + BENCH_LOCK_LEASE_TTL_MARGIN;
        i64::try_from(run.as_secs()).unwrap_or(i64::MAX).max(1)
    }
}

/// The outcome of one (operation, client count) run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockBenchResult {
    pub op: LockOp,
    pub clients: usize,
    /// Completed operations in the measured window (round trips, handoffs or renewals).
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// The first failure of the run (setup and warm-up included), if any.
    pub first_error: Option<String>,
}

impl LockBenchResult {
    /// `op=contended clients=16 ops=1234 ops_per_sec=123.4 p50_ms=.. p99_ms=.. errors=N`
    pub fn text_line(&self) -> String {
        format!(
            "op={} clients={} ops={} ops_per_sec={:.1} p50_ms={:.3} p99_ms={:.3} errors={}",
            self.op.name(),
            self.clients,
            self.ops,
            self.ops_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.errors
        )
    }
}

/// Runs every (operation, client count) pair in order, calling `report` after each.
pub async fn run(
    config: &LockBenchConfig,
    mut report: impl FnMut(&LockBenchResult),
) -> anyhow::Result<Vec<LockBenchResult>> {
    config.validate()?;
    let run_id: u64 = rand::random();
    let mut results = Vec::new();
    for &op in &config.ops {
        for &clients in &config.clients {
            let prefix = format!("cairn-bench-lock/{run_id:016x}/{}-{clients}", op.name());
            let result = run_one(config, op, clients, &prefix).await?;
            report(&result);
            results.push(result);
        }
    }
    Ok(results)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    measure_start: Instant,
    end: Instant,
}

struct WorkerOutcome {
    latencies_us: Histogram<u64>,
    ops: u64,
    errors: u64,
}

impl WorkerOutcome {
    fn new() -> anyhow::Result<Self> {
        Ok(Self { latencies_us: new_histogram()?, ops: 0, errors: 0 })
    }

    /// Counts one operation that ran from `started` to `finished`, if inside the window.
    fn record(&mut self, window: &Window, started: Instant, finished: Instant, ok: bool) {
        if started < window.measure_start || finished > window.end {
            return;
        }
        if ok {
            let micros = u64::try_from(finished.duration_since(started).as_micros()).unwrap_or(u64::MAX);
            self.latencies_us.saturating_record(micros.max(1));
            self.ops += 1;
        } else {
            self.errors += 1;
        }
    }
}

/// Everything a worker needs.
struct Worker {
    op: LockOp,
    channel: Channel,
    /// The lock name this worker uses.
    name: Vec<u8>,
    lease_ttl_secs: i64,
    window: Window,
    first_error: Arc<OnceLock<String>>,
}

fn channels(config: &LockBenchConfig, clients: usize) -> anyhow::Result<Vec<Vec<Channel>>> {
    // channels[group][endpoint], connected lazily: an unreachable endpoint shows up as errors.
    let groups = clients.div_ceil(BENCH_CLIENTS_PER_CHANNEL);
    let mut channels = Vec::with_capacity(groups);
    for _ in 0..groups {
        let mut group = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let uri = endpoint_uri(endpoint);
            let channel = Endpoint::from_shared(uri.clone())
                .with_context(|| format!("parse endpoint {uri}"))?
                .connect_timeout(BENCH_CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            group.push(channel);
        }
        channels.push(group);
    }
    Ok(channels)
}

async fn run_one(
    config: &LockBenchConfig,
    op: LockOp,
    clients: usize,
    prefix: &str,
) -> anyhow::Result<LockBenchResult> {
    let channels = channels(config, clients)?;
    let start = Instant::now();
    let window = Window { measure_start: start + config.warmup, end: start + config.warmup + config.duration };
    let first_error = Arc::new(OnceLock::new());
    let mut workers = JoinSet::new();
    for i in 0..clients {
        let group = &channels[i / BENCH_CLIENTS_PER_CHANNEL];
        let name = match op {
            LockOp::Contended => format!("{prefix}/shared"),
            _ => format!("{prefix}/{i}"),
        };
        let worker = Worker {
            op,
            channel: group[i % group.len()].clone(),
            name: name.into_bytes(),
            lease_ttl_secs: config.lease_ttl_secs(),
            window,
            first_error: first_error.clone(),
        };
        workers.spawn(worker.run());
    }
    let mut merged = new_histogram()?;
    let (mut ops, mut errors) = (0u64, 0u64);
    while let Some(joined) = workers.join_next().await {
        let outcome = joined.context("join a benchmark worker")??;
        merged.add(&outcome.latencies_us).context("merge latency histograms")?;
        ops += outcome.ops;
        errors += outcome.errors;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(LockBenchResult {
        op,
        clients,
        ops,
        ops_per_sec: ops as f64 / config.duration.as_secs_f64(),
        p50_ms: ms(merged.value_at_quantile(0.50)),
        p99_ms: ms(merged.value_at_quantile(0.99)),
        p999_ms: ms(merged.value_at_quantile(0.999)),
        max_ms: ms(merged.max()),
        errors,
        first_error: first_error.get().cloned(),
    })
}

impl Worker {
    fn note_error(&self, status: &tonic::Status) {
        let _ = self.first_error.set(describe_status(status));
    }

    async fn run(self) -> anyhow::Result<WorkerOutcome> {
        let mut outcome = WorkerOutcome::new()?;
        let mut lease = LeaseClient::new(self.channel.clone());
        // The lease is set up before the window; retried until the run ends.
        let lease_id = loop {
            if Instant::now() >= self.window.end {
                return Ok(outcome);
            }
            let grant = LeaseGrantRequest { ttl: self.lease_ttl_secs, id: 0 };
            match tokio::time::timeout(BENCH_RPC_TIMEOUT, lease.lease_grant(grant)).await {
                Ok(Ok(resp)) => break resp.into_inner().id,
                Ok(Err(status)) => self.note_error(&status),
                Err(_) => self.note_error(&tonic::Status::deadline_exceeded("lease grant timed out")),
            }
            tokio::time::sleep(BENCH_ERROR_BACKOFF).await;
        };
        match self.op {
            LockOp::Uncontended | LockOp::Contended => self.lock_loop(lease_id, &mut outcome).await,
            LockOp::Keepalive => self.keepalive_loop(lease_id, &mut outcome).await,
        }
        // Leaves nothing behind: revoking the lease deletes any lock key it still holds.
        let _ = tokio::time::timeout(BENCH_RPC_TIMEOUT, lease.lease_revoke(LeaseRevokeRequest { id: lease_id })).await;
        Ok(outcome)
    }

    async fn lock_loop(&self, lease_id: i64, outcome: &mut WorkerOutcome) {
        let mut locks = LockClient::new(self.channel.clone());
        while Instant::now() < self.window.end {
            let started = Instant::now();
            let request = LockRequest { name: self.name.clone(), lease: lease_id };
            let result = match tokio::time::timeout(BENCH_LOCK_RPC_TIMEOUT, locks.lock(request)).await {
                Ok(Ok(resp)) => {
                    let key = resp.into_inner().key;
                    match tokio::time::timeout(BENCH_RPC_TIMEOUT, locks.unlock(UnlockRequest { key })).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(status),
                        Err(_) => Err(tonic::Status::deadline_exceeded("unlock timed out")),
                    }
                }
                Ok(Err(status)) => Err(status),
                Err(_) => Err(tonic::Status::deadline_exceeded("lock timed out")),
            };
            match result {
                Ok(()) => outcome.record(&self.window, started, Instant::now(), true),
                Err(status) => self.fail(outcome, started, &status).await,
            }
        }
    }

    async fn keepalive_loop(&self, lease_id: i64, outcome: &mut WorkerOutcome) {
        let mut lease = LeaseClient::new(self.channel.clone());
        while Instant::now() < self.window.end {
            // The first renewal is queued before the stream opens: etcd (grpc-go) sends the
            // response headers only with its first answer, so opening an empty stream would
            // wait forever.
            let (tx, rx) = mpsc::channel(BENCH_KEEPALIVE_STREAM_BUFFER);
            let mut started = Instant::now();
            if tx.send(LeaseKeepAliveRequest { id: lease_id }).await.is_err() {
                continue;
            }
            let opened = tokio::time::timeout(BENCH_RPC_TIMEOUT, lease.lease_keep_alive(ReceiverStream::new(rx))).await;
            let mut responses = match opened {
                Ok(Ok(resp)) => resp.into_inner(),
                Ok(Err(status)) => {
                    self.fail(outcome, started, &status).await;
                    continue;
                }
                Err(_) => {
                    self.fail(outcome, started, &tonic::Status::deadline_exceeded("keep-alive stream did not open"))
                        .await;
                    continue;
                }
            };
            loop {
                let answer = tokio::time::timeout(BENCH_RPC_TIMEOUT, responses.message()).await;
                let failure = match answer {
                    Ok(Ok(Some(resp))) if resp.ttl > 0 => None,
                    Ok(Ok(Some(_))) => Some(tonic::Status::not_found("lease expired (keep-alive answered TTL 0)")),
                    Ok(Ok(None)) => Some(tonic::Status::unavailable("keep-alive stream ended")),
                    Ok(Err(status)) => Some(status),
                    Err(_) => Some(tonic::Status::deadline_exceeded("keep-alive timed out")),
                };
                if let Some(status) = failure {
                    self.fail(outcome, started, &status).await;
                    break;
                }
                outcome.record(&self.window, started, Instant::now(), true);
                if Instant::now() >= self.window.end {
                    return;
                }
                started = Instant::now();
                if tx.send(LeaseKeepAliveRequest { id: lease_id }).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Counts a failed operation that started at `started`, remembers the error, and backs off.
    async fn fail(&self, outcome: &mut WorkerOutcome, started: Instant, status: &tonic::Status) {
        outcome.record(&self.window, started, Instant::now(), false);
        self.note_error(status);
        tokio::time::sleep(BENCH_ERROR_BACKOFF).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LockBenchConfig {
        LockBenchConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            clients: vec![1, 16],
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            ops: vec![LockOp::Uncontended, LockOp::Contended, LockOp::Keepalive],
        }
    }

    #[test]
    fn validation() {
        assert!(config().validate().is_ok());
        let bad = [
            LockBenchConfig { endpoints: vec![], ..config() },
            LockBenchConfig { clients: vec![0], ..config() },
            LockBenchConfig { duration: Duration::ZERO, ..config() },
            LockBenchConfig { ops: vec![], ..config() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn leases_outlive_the_run() {
        let config = LockBenchConfig { duration: Duration::from_secs(30), warmup: Duration::from_secs(2), ..config() };
        assert!(config.lease_ttl_secs() > 32);
    }

    #[test]
    fn text_line_format() {
        let result = LockBenchResult {
            op: LockOp::Contended,
            clients: 16,
            ops: 1000,
            ops_per_sec: 100.0,
            p50_ms: 150.0,
            p99_ms: 180.5,
            p999_ms: 190.0,
            max_ms: 200.0,
            errors: 0,
            first_error: None,
        };
        assert_eq!(
            result.text_line(),
            "op=contended clients=16 ops=1000 ops_per_sec=100.0 p50_ms=150.000 p99_ms=180.500 errors=0"
        );
        assert_eq!(serde_json::to_value(&result).expect("json")["op"], "contended");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_counts_errors_instead_of_failing() {
        let port = crate::dev::pick_free_ports(1).expect("port")[0];
        let config = LockBenchConfig {
            endpoints: vec![format!("127.0.0.1:{port}")],
            clients: vec![2],
            duration: Duration::from_millis(300),
            ops: vec![LockOp::Uncontended],
            ..config()
        };
        let results = run(&config, |_| {}).await.expect("run");
        assert_eq!(results[0].ops, 0);
        assert!(results[0].first_error.is_some());
    }
}
