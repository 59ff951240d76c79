//! `cairn bench meta`: a closed-loop benchmark of the metaserver's namespace operations over gRPC
//! (`cairn.meta.v1.MetaService`), as root.
//!
//! For each client count, in order: `clients` workers are started, each with a directory of its
//! own (`/<run>/c<clients>/w<i>`) and a pool of the files it created there. Then every selected
//! operation runs for `warmup + duration`, each worker issuing one request at a time:
//! - `create`: `Create` (O_EXCL, no open handle) of a new name in the worker's directory; the file
//!   joins the pool.
//! - `stat`: `GetAttr` of a random pool file by inode (what a client with a cached entry asks).
//! - `lookup`: `Lookup` of a random pool file by parent and name (a path walk's step; answers the
//!   attributes too).
//! - `readdir`: one full listing, page by page until EOF, of a shared directory holding
//!   `readdir_entries` files; the latency is that of the whole listing, and a listing that does
//!   not return exactly that many entries counts as an error.
//! - `rename`: `Rename` of the next pool file between two names (`fN` <-> `rN`) in its directory.
//! - `unlink`: `Unlink` of a pool file. A worker whose pool runs dry ends the run for everyone
//!   (the measured window is cut there, so throughput is never that of fewer clients).
//!
//! Before `stat`, `lookup`, `rename` and `unlink` each worker tops its pool up to `min_files`
//! (untimed). With `route` = leader (the default) every worker follows the leader that a
//! follower names in its answers, as the FUSE client does; with `rotate`, requests rotate over
//! the endpoints, as in `bench kv`, so two thirds of them reach a
//! follower that forwards changes and asks the leader for a read index. Failures (gRPC errors
//! and non-zero errno) are counted, never fatal; the first one's message is kept. Everything
//! lives under `/cairn-bench-meta-<random run id>/` and is removed at the end unless `keep`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_proto::meta::meta_service_client::MetaServiceClient;
use cairn_proto::meta::{
    CreateRequest, Credentials, GetAttrRequest, LookupRequest, MkdirRequest, ReadDirRequest, RemoveRequest,
    RenameRequest,
};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use super::kv::{describe_status, endpoint_uri, new_histogram};
use crate::fuse::leader_hint;
use crate::limits::{
    BENCH_CLIENTS_MAX, BENCH_CONNECT_TIMEOUT, BENCH_ERROR_BACKOFF, BENCH_META_MIN_FILES_MAX,
    BENCH_META_READDIR_ENTRIES_MAX, BENCH_META_READDIR_PAGE_MAX, BENCH_META_RPC_TIMEOUT, BENCH_META_SETUP_TASKS,
};

/// The root directory's inode number (fixed by the metaserver's format).
const ROOT_INO: u64 = 1;
const ENOENT: u32 = 2;
const EEXIST: u32 = 17;
/// Benchmark files and directories are created with these bits (umask 0).
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// A benchmarked operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MetaOp {
    /// `Create` (O_EXCL) of a new file in the worker's directory.
    Create,
    /// `GetAttr` of one of the worker's files by inode.
    Stat,
    /// `Lookup` of one of the worker's files by parent and name.
    Lookup,
    /// A full listing of the shared directory of `--readdir-entries` files.
    Readdir,
    /// `Rename` of one of the worker's files within its directory.
    Rename,
    /// `Unlink` of one of the worker's files.
    Unlink,
}

impl MetaOp {
    pub fn name(self) -> &'static str {
        match self {
            MetaOp::Create => "create",
            MetaOp::Stat => "stat",
            MetaOp::Lookup => "lookup",
            MetaOp::Readdir => "readdir",
            MetaOp::Rename => "rename",
            MetaOp::Unlink => "unlink",
        }
    }

    /// Operations on existing pool files, which the pool is topped up for.
    fn needs_files(self) -> bool {
        matches!(self, MetaOp::Stat | MetaOp::Lookup | MetaOp::Rename | MetaOp::Unlink)
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaBenchConfig {
    /// `host:port` (or `http://host:port`) of every metaserver to spread requests over.
    pub endpoints: Vec<String>,
    /// Client counts; for each, every operation runs once, in `ops` order.
    pub clients: Vec<usize>,
    /// Measured time of each run.
    pub duration: Duration,
    /// Unmeasured time at the start of each run.
    pub warmup: Duration,
    pub ops: Vec<MetaOp>,
    /// Files in the directory that `readdir` lists.
    pub readdir_entries: usize,
    /// Entries asked per `ReadDir` page (0: the server's default).
    pub readdir_page: u32,
    /// `ReadDir` with attributes (readdirplus).
    pub readdir_plus: bool,
    /// Pool size each worker is topped up to before `stat`, `lookup`, `rename`, `unlink`.
    pub min_files: usize,
    /// Leave the benchmark's files in place.
    pub keep: bool,
    /// Which metaserver each request goes to.
    pub route: Route,
    /// Workers that share one channel (connection) to each endpoint.
    pub clients_per_connection: usize,
}

impl MetaBenchConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            bail!("--endpoints needs at least one host:port (and no empty entries)");
        }
        if self.clients.is_empty() || self.clients.iter().any(|&c| c == 0 || c > BENCH_CLIENTS_MAX) {
            bail!("--clients must list counts between 1 and {BENCH_CLIENTS_MAX}");
        }
        if self.clients_per_connection == 0 {
            bail!("--clients-per-connection must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.ops.is_empty() {
            bail!("--ops needs at least one operation");
        }
        if self.ops.contains(&MetaOp::Readdir) && !(1..=BENCH_META_READDIR_ENTRIES_MAX).contains(&self.readdir_entries)
        {
            bail!("--readdir-entries must be between 1 and {BENCH_META_READDIR_ENTRIES_MAX}");
        }
        if self.readdir_page > BENCH_META_READDIR_PAGE_MAX {
            bail!("--readdir-page must be at most {BENCH_META_READDIR_PAGE_MAX}");
        }
        if self.min_files == 0 || self.min_files > BENCH_META_MIN_FILES_MAX {
            bail!("--min-files must be between 1 and {BENCH_META_MIN_FILES_MAX}");
        }
        Ok(())
    }
}

/// The outcome of one (client count, operation) run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaBenchResult {
    pub op: MetaOp,
    pub clients: usize,
    /// Successful operations in the measured window (for `readdir`: full listings).
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Length of the measured window: `duration`, or less when a worker's pool ran dry.
    pub measured_secs: f64,
    /// A worker's pool ran dry and ended the window early.
    pub window_cut: bool,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// The first failure of the run (warm-up included), if any.
    pub first_error: Option<String>,
}

impl MetaBenchResult {
    /// `op=create clients=64 ops=.. ops_per_sec=.. p50_ms=.. p99_ms=.. errors=N`
    pub fn text_line(&self) -> String {
        let mut line = format!(
            "op={} clients={} ops={} ops_per_sec={:.1} p50_ms={:.3} p99_ms={:.3} errors={}",
            self.op.name(),
            self.clients,
            self.ops,
            self.ops_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.errors
        );
        if self.window_cut {
            line.push_str(&format!(" measured_secs={:.2} (a worker ran out of files)", self.measured_secs));
        }
        line
    }
}

fn root() -> Credentials {
    Credentials { uid: 0, gid: 0, groups: Vec::new() }
}

/// `errno 17 (EEXIST)`.
fn describe_errno(errno: u32) -> String {
    let name =
        i32::try_from(errno).map(nix::errno::Errno::from_raw).map_or_else(|_| "?".to_owned(), |e| format!("{e:?}"));
    format!("errno {errno} ({name})")
}

/// A failed operation: a transport/cluster status, or a POSIX errno in the answer.
#[derive(Debug)]
enum OpError {
    Status(tonic::Status),
    Errno(u32),
    Other(String),
}

impl OpError {
    fn describe(&self, what: &str) -> String {
        match self {
            OpError::Status(status) => format!("{what}: {}", describe_status(status)),
            OpError::Errno(errno) => format!("{what}: {}", describe_errno(*errno)),
            OpError::Other(text) => format!("{what}: {text}"),
        }
    }
}

impl From<tonic::Status> for OpError {
    fn from(status: tonic::Status) -> Self {
        OpError::Status(status)
    }
}

fn check(errno: u32) -> Result<(), OpError> {
    if errno == 0 {
        Ok(())
    } else {
        Err(OpError::Errno(errno))
    }
}

/// Which metaserver each request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Like the FUSE client: start anywhere, then follow the leader that a follower names in
    /// its answer, so that changes and reads reach the leader directly.
    Leader,
    /// Rotate over every endpoint, so two thirds of the requests reach a follower that
    /// forwards changes to the leader and asks it for a read index before reads.
    Rotate,
}

/// The metaserver clients of one worker: one per endpoint, used in rotation or following the
/// leader.
#[derive(Clone)]
struct Clients {
    meta: Vec<MetaServiceClient<Channel>>,
    next: usize,
    /// The endpoint of the last request.
    last: usize,
    /// With [`Route::Leader`], the endpoints (to place the leader a follower names).
    follow: Option<Arc<Vec<String>>>,
}

impl Clients {
    fn new(channels: &[Channel], first: usize) -> Self {
        let meta: Vec<_> = channels.iter().cloned().map(MetaServiceClient::new).collect();
        Self { next: first % meta.len(), last: 0, meta, follow: None }
    }

    /// Sends every request to the leader once an answer names it.
    fn following(mut self, endpoints: Arc<Vec<String>>) -> Self {
        self.follow = Some(endpoints);
        self
    }

    fn next(&mut self) -> &mut MetaServiceClient<Channel> {
        let i = self.next;
        self.last = i;
        if self.follow.is_none() {
            self.next = (self.next + 1) % self.meta.len();
        }
        &mut self.meta[i]
    }

    /// The outcome of the last request. With [`Route::Leader`], the next request goes to the
    /// leader the answer names; after a failure that names none, to the next endpoint (the
    /// leader may have changed or died).
    fn settle<T>(&mut self, outcome: Result<tonic::Response<T>, tonic::Status>) -> Result<T, tonic::Status> {
        if let Some(endpoints) = &self.follow {
            let (metadata, failed) = match &outcome {
                Ok(response) => (response.metadata(), false),
                Err(status) => (status.metadata(), true),
            };
            match leader_hint(endpoints, metadata) {
                Some(leader) => self.next = leader,
                None if failed => self.next = (self.last + 1) % self.meta.len(),
                None => {}
            }
        }
        outcome.map(tonic::Response::into_inner)
    }

    async fn mkdir(&mut self, parent: u64, name: &str) -> Result<u64, OpError> {
        let request = MkdirRequest {
            cred: Some(root()),
            time: None,
            parent,
            name: name.as_bytes().to_vec(),
            mode: DIR_MODE,
            umask: 0,
        };
        let outcome = self.next().mkdir(request).await;
        let resp = self.settle(outcome)?;
        check(resp.errno)?;
        resp.attr.map(|a| a.ino).ok_or_else(|| OpError::Other("mkdir answered no attributes".into()))
    }

    async fn create(&mut self, parent: u64, name: &str) -> Result<u64, OpError> {
        let request = CreateRequest {
            cred: Some(root()),
            time: None,
            parent,
            name: name.as_bytes().to_vec(),
            mode: FILE_MODE,
            umask: 0,
            exclusive: true,
            session: 0,
            open: None,
            allocate_first_chunk: false,
        };
        let outcome = self.next().create(request).await;
        let resp = self.settle(outcome)?;
        check(resp.errno)?;
        resp.attr.map(|a| a.ino).ok_or_else(|| OpError::Other("create answered no attributes".into()))
    }

    async fn lookup(&mut self, parent: u64, name: &str) -> Result<u64, OpError> {
        let request = LookupRequest { cred: Some(root()), parent, name: name.as_bytes().to_vec() };
        let outcome = self.next().lookup(request).await;
        let resp = self.settle(outcome)?;
        check(resp.errno)?;
        resp.attr.map(|a| a.ino).ok_or_else(|| OpError::Other("lookup answered no attributes".into()))
    }

    async fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<(), OpError> {
        let request = RemoveRequest { cred: Some(root()), time: None, parent, name: name.to_vec() };
        let outcome = self.next().unlink(request).await;
        check(self.settle(outcome)?.errno)
    }

    async fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), OpError> {
        let request = RemoveRequest { cred: Some(root()), time: None, parent, name: name.as_bytes().to_vec() };
        let outcome = self.next().rmdir(request).await;
        check(self.settle(outcome)?.errno)
    }

    /// Every name in directory `ino`, page by page.
    async fn list(&mut self, ino: u64, page: u32, plus: bool) -> Result<Vec<Vec<u8>>, OpError> {
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let request = ReadDirRequest { cred: Some(root()), ino, cookie, limit: page, plus };
            let outcome = self.next().read_dir(request).await;
            let resp = self.settle(outcome)?;
            check(resp.errno)?;
            if let Some(last) = resp.entries.last() {
                cookie = last.cookie;
            } else if !resp.eof {
                return Err(OpError::Other("readdir answered an empty page before EOF".into()));
            }
            names.extend(resp.entries.into_iter().map(|e| e.name));
            if resp.eof {
                return Ok(names);
            }
        }
    }

    /// Unlinks every entry of directory `ino` (named `name` in `parent`), then removes it.
    async fn remove_dir(&mut self, parent: u64, name: &str, ino: u64) -> Result<(), OpError> {
        for entry in self.list(ino, BENCH_META_READDIR_PAGE_MAX, false).await? {
            match self.unlink(ino, &entry).await {
                Ok(()) | Err(OpError::Errno(ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        self.rmdir(parent, name).await
    }
}

/// A file a worker created and still owns.
#[derive(Debug, Clone, Copy)]
struct PoolFile {
    n: u64,
    ino: u64,
    /// Named `rN` (renamed an odd number of times) rather than `fN`.
    renamed: bool,
}

impl PoolFile {
    fn name(&self) -> String {
        Self::name_of(self.n, self.renamed)
    }

    fn name_of(n: u64, renamed: bool) -> String {
        if renamed {
            format!("r{n}")
        } else {
            format!("f{n}")
        }
    }
}

/// One worker's state, kept from run to run of a client count.
struct Worker {
    index: usize,
    clients: Clients,
    /// The client count's directory, which holds this worker's `w<index>`.
    parent_ino: u64,
    dir_ino: u64,
    pool: Vec<PoolFile>,
    next_n: u64,
    rename_cursor: usize,
    rng: StdRng,
}

/// What every worker of one run shares.
struct Run {
    op: MetaOp,
    measure_start: Instant,
    end: Instant,
    /// Set by the first worker whose pool runs dry: nothing finishing later is counted.
    cut: OnceLock<Instant>,
    first_error: OnceLock<String>,
    readdir: Option<ReaddirTarget>,
    readdir_page: u32,
    readdir_plus: bool,
}

#[derive(Debug, Clone, Copy)]
struct ReaddirTarget {
    ino: u64,
    entries: usize,
}

struct Outcome {
    latencies_us: Histogram<u64>,
    ops: u64,
    errors: u64,
}

impl Run {
    /// Counts one operation that ran from `started` to `finished`, if inside the window.
    fn record(&self, outcome: &mut Outcome, started: Instant, finished: Instant, ok: bool) {
        let end = self.cut.get().map_or(self.end, |&cut| cut.min(self.end));
        if started < self.measure_start || finished > end {
            return;
        }
        if ok {
            let micros = u64::try_from(finished.duration_since(started).as_micros()).unwrap_or(u64::MAX);
            outcome.latencies_us.saturating_record(micros.max(1));
            outcome.ops += 1;
        } else {
            outcome.errors += 1;
        }
    }

    fn over(&self, now: Instant) -> bool {
        now >= self.end || self.cut.get().is_some()
    }
}

impl Worker {
    /// Creates files until the pool holds `count` (untimed set-up).
    async fn fill(&mut self, count: usize) -> Result<(), String> {
        let mut failures = 0;
        while self.pool.len() < count {
            let n = self.next_n;
            self.next_n += 1;
            match self.clients.create(self.dir_ino, &PoolFile::name_of(n, false)).await {
                Ok(ino) => self.pool.push(PoolFile { n, ino, renamed: false }),
                Err(e) => {
                    failures += 1;
                    if failures > count.max(10) {
                        return Err(e.describe("fill the file pool"));
                    }
                    tokio::time::sleep(BENCH_ERROR_BACKOFF).await;
                }
            }
        }
        Ok(())
    }

    async fn run(mut self, run: Arc<Run>) -> anyhow::Result<(Worker, Outcome)> {
        let mut outcome = Outcome { latencies_us: new_histogram()?, ops: 0, errors: 0 };
        loop {
            let started = Instant::now();
            if run.over(started) {
                break;
            }
            let result = match self.one(&run).await {
                Some(result) => result,
                None => {
                    // The pool ran dry: the window ends here for every worker.
                    let _ = run.cut.set(started);
                    break;
                }
            };
            let finished = Instant::now();
            run.record(&mut outcome, started, finished, result.is_ok());
            if let Err(e) = result {
                let _ = run.first_error.set(e.describe(run.op.name()));
                if matches!(e, OpError::Status(_)) {
                    tokio::time::sleep(BENCH_ERROR_BACKOFF).await;
                }
            }
        }
        Ok((self, outcome))
    }

    /// One operation; `None` when there is no file left to operate on.
    async fn one(&mut self, run: &Run) -> Option<Result<(), OpError>> {
        let dir = self.dir_ino;
        Some(match run.op {
            MetaOp::Create => {
                let n = self.next_n;
                self.next_n += 1;
                self.clients.create(dir, &PoolFile::name_of(n, false)).await.map(|ino| {
                    self.pool.push(PoolFile { n, ino, renamed: false });
                })
            }
            MetaOp::Stat => {
                let file = *self.random_file()?;
                let request = GetAttrRequest { cred: Some(root()), ino: file.ino };
                let outcome = self.clients.next().get_attr(request).await;
                match self.clients.settle(outcome) {
                    Ok(resp) => check(resp.errno),
                    Err(status) => Err(status.into()),
                }
            }
            MetaOp::Lookup => {
                let file = *self.random_file()?;
                let request = LookupRequest { cred: Some(root()), parent: dir, name: file.name().into_bytes() };
                let outcome = self.clients.next().lookup(request).await;
                match self.clients.settle(outcome) {
                    Ok(resp) => check(resp.errno),
                    Err(status) => Err(status.into()),
                }
            }
            MetaOp::Readdir => {
                let target = run.readdir?;
                match self.clients.list(target.ino, run.readdir_page, run.readdir_plus).await {
                    Ok(names) if names.len() == target.entries => Ok(()),
                    Ok(names) => {
                        Err(OpError::Other(format!("listed {} entries, expected {}", names.len(), target.entries)))
                    }
                    Err(e) => Err(e),
                }
            }
            MetaOp::Rename => {
                if self.pool.is_empty() {
                    return None;
                }
                let i = self.rename_cursor % self.pool.len();
                self.rename_cursor = i + 1;
                let file = self.pool[i];
                let to = PoolFile { renamed: !file.renamed, ..file };
                let request = RenameRequest {
                    cred: Some(root()),
                    time: None,
                    parent: dir,
                    name: file.name().into_bytes(),
                    new_parent: dir,
                    new_name: to.name().into_bytes(),
                    flags: 0,
                };
                let outcome = self.clients.next().rename(request).await;
                match self.clients.settle(outcome) {
                    Ok(resp) => check(resp.errno).map(|()| self.pool[i] = to),
                    Err(status) => {
                        // Outcome unknown: the file may carry either name now; stop using it.
                        self.pool.swap_remove(i);
                        Err(status.into())
                    }
                }
            }
            MetaOp::Unlink => {
                let file = self.pool.pop()?;
                self.clients.unlink(dir, file.name().as_bytes()).await
            }
        })
    }

    fn random_file(&mut self) -> Option<&PoolFile> {
        if self.pool.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0..self.pool.len());
        self.pool.get(i)
    }
}

/// channels[group][endpoint]: one channel per endpoint for every `clients_per_connection`
/// workers, connected lazily.
fn channels(config: &MetaBenchConfig, clients: usize) -> anyhow::Result<Vec<Vec<Channel>>> {
    let groups = clients.div_ceil(config.clients_per_connection).max(1);
    let mut channels = Vec::with_capacity(groups);
    for _ in 0..groups {
        let mut group = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let uri = endpoint_uri(endpoint);
            let channel = Endpoint::from_shared(uri.clone())
                .with_context(|| format!("parse endpoint {uri}"))?
                .connect_timeout(BENCH_CONNECT_TIMEOUT)
                .timeout(BENCH_META_RPC_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            group.push(channel);
        }
        channels.push(group);
    }
    Ok(channels)
}

/// Runs every (client count, operation) pair in order, calling `report` after each.
pub async fn run(
    config: &MetaBenchConfig,
    mut report: impl FnMut(&MetaBenchResult),
) -> anyhow::Result<Vec<MetaBenchResult>> {
    config.validate()?;
    let setup_channels = channels(config, BENCH_META_SETUP_TASKS)?;
    let mut setup = Clients::new(&setup_channels[0], 0);
    let endpoints = Arc::new(config.endpoints.clone());
    let run_name = format!("cairn-bench-meta-{:016x}", rand::random::<u64>());
    let run_ino =
        setup.mkdir(ROOT_INO, &run_name).await.map_err(|e| anyhow::anyhow!(e.describe("create the run directory")))?;

    let readdir = if config.ops.contains(&MetaOp::Readdir) {
        let ino = setup.mkdir(run_ino, "readdir").await.map_err(|e| anyhow::anyhow!(e.describe("mkdir readdir")))?;
        fill_dir(&setup_channels, ino, config.readdir_entries).await?;
        Some(ReaddirTarget { ino, entries: config.readdir_entries })
    } else {
        None
    };

    let mut results = Vec::new();
    for &clients in &config.clients {
        let dir_name = format!("c{clients}");
        let dir_ino = setup.mkdir(run_ino, &dir_name).await.map_err(|e| anyhow::anyhow!(e.describe("mkdir")))?;
        let channels = channels(config, clients)?;
        let mut workers = Vec::with_capacity(clients);
        for index in 0..clients {
            let mut worker_clients = Clients::new(&channels[index / config.clients_per_connection], index);
            if config.route == Route::Leader {
                worker_clients = worker_clients.following(endpoints.clone());
            }
            let ino = worker_clients
                .mkdir(dir_ino, &format!("w{index}"))
                .await
                .map_err(|e| anyhow::anyhow!(e.describe("mkdir a worker directory")))?;
            workers.push(Worker {
                index,
                clients: worker_clients,
                parent_ino: dir_ino,
                dir_ino: ino,
                pool: Vec::new(),
                next_n: 0,
                rename_cursor: 0,
                rng: StdRng::from_entropy(),
            });
        }
        for &op in &config.ops {
            if op.needs_files() {
                workers = fill_pools(workers, config.min_files).await?;
            }
            let (back, result) = run_one(config, op, clients, workers, readdir).await?;
            workers = back;
            report(&result);
            results.push(result);
        }
        if !config.keep {
            remove_worker_dirs(workers).await?;
            setup.rmdir(run_ino, &dir_name).await.map_err(|e| anyhow::anyhow!(e.describe("rmdir")))?;
        }
    }

    if !config.keep {
        if readdir.is_some() {
            empty_dir(&setup_channels, run_ino, "readdir").await?;
        }
        setup.rmdir(ROOT_INO, &run_name).await.map_err(|e| anyhow::anyhow!(e.describe("rmdir the run directory")))?;
    }
    Ok(results)
}

async fn run_one(
    config: &MetaBenchConfig,
    op: MetaOp,
    clients: usize,
    workers: Vec<Worker>,
    readdir: Option<ReaddirTarget>,
) -> anyhow::Result<(Vec<Worker>, MetaBenchResult)> {
    let start = Instant::now();
    let run = Arc::new(Run {
        op,
        measure_start: start + config.warmup,
        end: start + config.warmup + config.duration,
        cut: OnceLock::new(),
        first_error: OnceLock::new(),
        readdir,
        readdir_page: config.readdir_page,
        readdir_plus: config.readdir_plus,
    });
    let mut tasks = JoinSet::new();
    for worker in workers {
        tasks.spawn(worker.run(Arc::clone(&run)));
    }
    let mut merged = new_histogram()?;
    let (mut ops, mut errors) = (0u64, 0u64);
    let mut back = Vec::with_capacity(clients);
    while let Some(joined) = tasks.join_next().await {
        let (worker, outcome) = joined.context("join a benchmark worker")??;
        merged.add(&outcome.latencies_us).context("merge latency histograms")?;
        ops += outcome.ops;
        errors += outcome.errors;
        back.push(worker);
    }
    back.sort_by_key(|w| w.index);

    let window_end = run.cut.get().map_or(run.end, |&cut| cut.min(run.end));
    let measured_secs = window_end.saturating_duration_since(run.measure_start).as_secs_f64();
    let mut first_error = run.first_error.get().cloned();
    if matches!(run.cut.get(), Some(&cut) if cut <= run.measure_start) {
        first_error = Some(format!("{} ran out of files during the warm-up; raise --min-files", op.name()));
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let result = MetaBenchResult {
        op,
        clients,
        ops,
        ops_per_sec: if measured_secs > 0.0 { ops as f64 / measured_secs } else { 0.0 },
        measured_secs,
        window_cut: run.cut.get().is_some(),
        p50_ms: ms(merged.value_at_quantile(0.50)),
        p99_ms: ms(merged.value_at_quantile(0.99)),
        p999_ms: ms(merged.value_at_quantile(0.999)),
        max_ms: ms(merged.max()),
        errors,
        first_error,
    };
    Ok((back, result))
}

async fn fill_pools(workers: Vec<Worker>, min_files: usize) -> anyhow::Result<Vec<Worker>> {
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        tasks.spawn(async move {
            let filled = worker.fill(min_files).await;
            (worker, filled)
        });
    }
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker, filled) = joined.context("join a set-up task")?;
        filled.map_err(anyhow::Error::msg)?;
        back.push(worker);
    }
    back.sort_by_key(|w| w.index);
    Ok(back)
}

async fn remove_worker_dirs(workers: Vec<Worker>) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        tasks.spawn(async move {
            let name = format!("w{}", worker.index);
            worker.clients.remove_dir(worker.parent_ino, &name, worker.dir_ino).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .context("join a clean-up task")?
            .map_err(|e| anyhow::anyhow!(e.describe("remove a worker directory")))?;
    }
    Ok(())
}

/// Creates `entries` files `e0`.. in directory `ino`, [`BENCH_META_SETUP_TASKS`] at a time.
async fn fill_dir(channels: &[Vec<Channel>], ino: u64, entries: usize) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for task in 0..BENCH_META_SETUP_TASKS {
        let mut clients = Clients::new(&channels[task % channels.len()], task);
        tasks.spawn(async move {
            for i in (task..entries).step_by(BENCH_META_SETUP_TASKS) {
                match clients.create(ino, &format!("e{i}")).await {
                    // EEXIST after an unknown outcome (a timed-out create that did apply).
                    Ok(_) | Err(OpError::Errno(EEXIST)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("join a set-up task")?.map_err(|e| anyhow::anyhow!(e.describe("fill the readdir directory")))?;
    }
    Ok(())
}

/// Unlinks every entry of `parent/name`, [`BENCH_META_SETUP_TASKS`] at a time, then removes it.
async fn empty_dir(channels: &[Vec<Channel>], parent: u64, name: &str) -> anyhow::Result<()> {
    let mut clients = Clients::new(&channels[0], 0);
    let describe = |e: OpError| anyhow::anyhow!(e.describe("remove the readdir directory"));
    let ino = clients.lookup(parent, name).await.map_err(describe)?;
    let names = clients.list(ino, BENCH_META_READDIR_PAGE_MAX, false).await.map_err(describe)?;
    let names = Arc::new(names);
    let mut tasks = JoinSet::new();
    for task in 0..BENCH_META_SETUP_TASKS {
        let mut clients = Clients::new(&channels[task % channels.len()], task);
        let names = Arc::clone(&names);
        tasks.spawn(async move {
            for entry in names.iter().skip(task).step_by(BENCH_META_SETUP_TASKS) {
                match clients.unlink(ino, entry).await {
                    Ok(()) | Err(OpError::Errno(ENOENT)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("join a clean-up task")?.map_err(describe)?;
    }
    clients.rmdir(parent, name).await.map_err(describe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MetaBenchConfig {
        MetaBenchConfig {
            endpoints: vec!["127.0.0.1:7100".into()],
            clients: vec![1, 64],
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            ops: vec![MetaOp::Create, MetaOp::Stat, MetaOp::Readdir],
            readdir_entries: 10_000,
            readdir_page: 0,
            readdir_plus: false,
            min_files: 1000,
            keep: false,
            route: Route::Leader,
            clients_per_connection: 16,
        }
    }

    #[test]
    fn validation() {
        assert!(config().validate().is_ok());
        // The readdir size only matters when readdir runs.
        assert!(MetaBenchConfig { ops: vec![MetaOp::Create], readdir_entries: 0, ..config() }.validate().is_ok());
        let bad = [
            MetaBenchConfig { endpoints: vec![], ..config() },
            MetaBenchConfig { clients_per_connection: 0, ..config() },
            MetaBenchConfig { endpoints: vec![" ".into()], ..config() },
            MetaBenchConfig { clients: vec![], ..config() },
            MetaBenchConfig { clients: vec![0], ..config() },
            MetaBenchConfig { duration: Duration::ZERO, ..config() },
            MetaBenchConfig { ops: vec![], ..config() },
            MetaBenchConfig { readdir_entries: 0, ..config() },
            MetaBenchConfig { readdir_page: BENCH_META_READDIR_PAGE_MAX + 1, ..config() },
            MetaBenchConfig { min_files: 0, ..config() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn pool_names_alternate_on_rename() {
        let file = PoolFile { n: 7, ino: 9, renamed: false };
        assert_eq!(file.name(), "f7");
        assert_eq!(PoolFile { renamed: true, ..file }.name(), "r7");
    }

    #[test]
    fn errno_descriptions_name_the_error() {
        assert_eq!(describe_errno(17), "errno 17 (EEXIST)");
        assert_eq!(OpError::Errno(2).describe("unlink"), "unlink: errno 2 (ENOENT)");
    }

    #[test]
    fn text_line_format() {
        let mut result = MetaBenchResult {
            op: MetaOp::Create,
            clients: 64,
            ops: 1000,
            ops_per_sec: 100.0,
            measured_secs: 10.0,
            window_cut: false,
            p50_ms: 1.5,
            p99_ms: 12.25,
            p999_ms: 20.0,
            max_ms: 30.0,
            errors: 0,
            first_error: None,
        };
        assert_eq!(
            result.text_line(),
            "op=create clients=64 ops=1000 ops_per_sec=100.0 p50_ms=1.500 p99_ms=12.250 errors=0"
        );
        result.window_cut = true;
        result.measured_secs = 4.5;
        assert!(result.text_line().ends_with(" measured_secs=4.50 (a worker ran out of files)"));
        assert_eq!(serde_json::to_value(&result).expect("json")["op"], "create");
    }

    #[tokio::test]
    async fn an_unreachable_metaserver_fails_the_set_up() {
        let port = crate::dev::pick_free_ports(1).expect("port")[0];
        let config = MetaBenchConfig { endpoints: vec![format!("127.0.0.1:{port}")], ..config() };
        let error = run(&config, |_| {}).await.expect_err("no metaserver listens");
        assert!(format!("{error:#}").contains("create the run directory"), "{error:#}");
    }
}
