//! `cairn bench kv`: a closed-loop benchmark of any etcd-v3 `KV` gRPC service.
//!
//! For each (operation, client count) pair it starts `clients` workers, each issuing one request
//! at a time. Workers share a small pool of gRPC channels — one channel per endpoint for every
//! [`BENCH_CLIENTS_PER_CHANNEL`] workers — and every worker rotates through the endpoints
//! request by request, so writes reach every node (a follower forwards them to the leader).
//! After a warm-up, each worker records the latency of the requests that start and finish
//! inside the measured window in its own histogram; the histograms are merged at the end.
//! Failed requests are counted, never fatal; the first failure's message is kept.
//!
//! Keys are 8-byte zero-padded decimals drawn uniformly from `0..keys`; put values are
//! `value_size` random bytes. `range` is a linearizable (`serializable = false`) single-key get.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{PutRequest, RangeRequest};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::limits::{
    BENCH_CLIENTS_MAX, BENCH_CLIENTS_PER_CHANNEL, BENCH_CONNECT_TIMEOUT, BENCH_ERROR_BACKOFF, BENCH_KEYS_MAX,
    BENCH_KEY_DIGITS, BENCH_LATENCY_MAX_US, BENCH_LATENCY_SIGFIG, BENCH_RPC_TIMEOUT, BENCH_VALUE_SIZE_MAX_BYTES,
};

/// A benchmarked operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvOp {
    /// `Put` of a random value under a random key.
    Put,
    /// Linearizable single-key `Range` of a random key.
    Range,
}

impl KvOp {
    pub fn name(self) -> &'static str {
        match self {
            KvOp::Put => "put",
            KvOp::Range => "range",
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBenchConfig {
    /// `host:port` (or `http://host:port`) of every endpoint to spread requests over.
    pub endpoints: Vec<String>,
    /// Client counts; one run per count and operation.
    pub clients: Vec<usize>,
    /// Measured time of each run.
    pub duration: Duration,
    /// Unmeasured time at the start of each run.
    pub warmup: Duration,
    /// Size of the key space.
    pub keys: u64,
    pub value_size_bytes: usize,
    pub ops: Vec<KvOp>,
}

impl KvBenchConfig {
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
        if self.keys == 0 || self.keys > BENCH_KEYS_MAX {
            bail!("--keys must be between 1 and {BENCH_KEYS_MAX} (keys are {BENCH_KEY_DIGITS}-digit decimals)");
        }
        if self.value_size_bytes > BENCH_VALUE_SIZE_MAX_BYTES {
            bail!("--value-size must be at most {BENCH_VALUE_SIZE_MAX_BYTES} bytes");
        }
        if self.ops.is_empty() {
            bail!("--ops needs at least one operation");
        }
        Ok(())
    }
}

/// The outcome of one (operation, client count) run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvBenchResult {
    pub op: KvOp,
    pub clients: usize,
    /// Successful requests in the measured window.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Failed requests in the measured window.
    pub errors: u64,
    /// The first failure of the run (warm-up included), if any.
    pub first_error: Option<String>,
}

impl KvBenchResult {
    /// `op=put clients=16 ops=12345 ops_per_sec=1234.5 p50_ms=.. p99_ms=.. errors=N`
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
pub async fn run(config: &KvBenchConfig, mut report: impl FnMut(&KvBenchResult)) -> anyhow::Result<Vec<KvBenchResult>> {
    config.validate()?;
    let mut results = Vec::new();
    for &op in &config.ops {
        for &clients in &config.clients {
            let result = run_one(config, op, clients).await?;
            report(&result);
            results.push(result);
        }
    }
    Ok(results)
}

/// Normalises `host:port` to a URI tonic accepts.
pub fn endpoint_uri(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// The benchmark key for index `k`.
pub fn key_for(k: u64) -> Vec<u8> {
    format!("{k:0width$}", width = BENCH_KEY_DIGITS).into_bytes()
}

/// The measured window of a run.
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

async fn run_one(config: &KvBenchConfig, op: KvOp, clients: usize) -> anyhow::Result<KvBenchResult> {
    // channels[group][endpoint]; connections are made lazily, so an unreachable endpoint shows
    // up as counted errors, like any other failure during the run.
    let groups = clients.div_ceil(BENCH_CLIENTS_PER_CHANNEL);
    let mut channels: Vec<Vec<Channel>> = Vec::with_capacity(groups);
    for _ in 0..groups {
        let mut group = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let uri = endpoint_uri(endpoint);
            let channel = Endpoint::from_shared(uri.clone())
                .with_context(|| format!("parse endpoint {uri}"))?
                .connect_timeout(BENCH_CONNECT_TIMEOUT)
                .timeout(BENCH_RPC_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            group.push(channel);
        }
        channels.push(group);
    }

    let start = Instant::now();
    let window = Window { measure_start: start + config.warmup, end: start + config.warmup + config.duration };
    let first_error = Arc::new(OnceLock::new());
    let mut workers = JoinSet::new();
    for worker in 0..clients {
        let kv: Vec<KvClient<Channel>> = channels[worker % groups].iter().cloned().map(KvClient::new).collect();
        workers.spawn(run_worker(
            op,
            kv,
            worker,
            config.keys,
            config.value_size_bytes,
            window,
            Arc::clone(&first_error),
        ));
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
    Ok(KvBenchResult {
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

async fn run_worker(
    op: KvOp,
    mut kv: Vec<KvClient<Channel>>,
    worker: usize,
    keys: u64,
    value_size_bytes: usize,
    window: Window,
    first_error: Arc<OnceLock<String>>,
) -> anyhow::Result<WorkerOutcome> {
    let mut outcome = WorkerOutcome { latencies_us: new_histogram()?, ops: 0, errors: 0 };
    let mut rng = StdRng::from_entropy();
    let mut next_endpoint = worker % kv.len();
    loop {
        let started = Instant::now();
        if started >= window.end {
            return Ok(outcome);
        }
        let endpoint = next_endpoint;
        next_endpoint = (next_endpoint + 1) % kv.len();
        let client = &mut kv[endpoint];
        let key = key_for(rng.gen_range(0..keys));
        let result = match op {
            KvOp::Put => {
                let mut value = vec![0u8; value_size_bytes];
                rng.fill(&mut value[..]);
                let request = PutRequest { key, value, ..Default::default() };
                client.put(request).await.map(drop)
            }
            KvOp::Range => {
                let request = RangeRequest { key, serializable: false, ..Default::default() };
                client.range(request).await.map(drop)
            }
        };
        let finished = Instant::now();
        let measured = started >= window.measure_start && finished <= window.end;
        match result {
            Ok(()) if measured => {
                let micros = u64::try_from(finished.duration_since(started).as_micros()).unwrap_or(u64::MAX);
                outcome.latencies_us.saturating_record(micros.max(1));
                outcome.ops += 1;
            }
            Ok(()) => {}
            Err(status) => {
                if measured {
                    outcome.errors += 1;
                }
                let _ = first_error.set(describe_status(&status));
                tokio::time::sleep(BENCH_ERROR_BACKOFF).await;
            }
        }
    }
}

pub(super) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, BENCH_LATENCY_MAX_US, BENCH_LATENCY_SIGFIG).context("create latency histogram")
}

/// `code: message (cause: cause: ...)`, shorter than tonic's `Display`.
pub(super) fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(&format!(" (caused by: {cause})"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KvBenchConfig {
        KvBenchConfig {
            endpoints: vec!["127.0.0.1:2379".into()],
            clients: vec![1, 16],
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            keys: 100_000,
            value_size_bytes: 256,
            ops: vec![KvOp::Put, KvOp::Range],
        }
    }

    #[test]
    fn keys_are_eight_zero_padded_digits() {
        assert_eq!(key_for(0), b"00000000");
        assert_eq!(key_for(42), b"00000042");
        assert_eq!(key_for(BENCH_KEYS_MAX - 1), b"99999999");
    }

    #[test]
    fn endpoint_uris() {
        assert_eq!(endpoint_uri("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_uri(" http://h:1 "), "http://h:1");
    }

    #[test]
    fn validation() {
        assert!(config().validate().is_ok());
        let bad = [
            KvBenchConfig { endpoints: vec![], ..config() },
            KvBenchConfig { clients: vec![0], ..config() },
            KvBenchConfig { keys: BENCH_KEYS_MAX + 1, ..config() },
            KvBenchConfig { duration: Duration::ZERO, ..config() },
            KvBenchConfig { value_size_bytes: BENCH_VALUE_SIZE_MAX_BYTES + 1, ..config() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn text_line_format() {
        let result = KvBenchResult {
            op: KvOp::Put,
            clients: 16,
            ops: 12345,
            ops_per_sec: 1234.5,
            p50_ms: 0.8125,
            p99_ms: 3.1,
            p999_ms: 9.0,
            max_ms: 12.0,
            errors: 2,
            first_error: None,
        };
        assert_eq!(
            result.text_line(),
            "op=put clients=16 ops=12345 ops_per_sec=1234.5 p50_ms=0.812 p99_ms=3.100 errors=2"
        );
        let json = serde_json::to_value(&result).expect("json");
        assert_eq!(json["op"], "put");
        assert_eq!(json["clients"], 16);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_counts_errors_instead_of_failing() {
        let port = crate::dev::pick_free_ports(1).expect("port")[0];
        let config = KvBenchConfig {
            endpoints: vec![format!("127.0.0.1:{port}")],
            clients: vec![2],
            duration: Duration::from_millis(300),
            ops: vec![KvOp::Put],
            ..config()
        };
        let results = run(&config, |_| {}).await.expect("run");
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].ops, 0);
        assert!(results[0].errors > 0);
        assert!(results[0].first_error.is_some());
    }
}
