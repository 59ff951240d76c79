//! `lock_client`: the contender process of the lock and election tests
//! (`tests/tests/lock_*.rs`, `tests/tests/election_*.rs`). It talks to any etcd-v3 endpoint —
//! Cairn's coordinator or a real etcd 3.4 — through the Rust etcd-client, so the same process
//! runs against both, and a test can freeze (SIGSTOP) or kill (SIGKILL) it like a real client.
//!
//! It prints one JSON object per line on stdout, one per event, which the tests read.
//!
//! ```text
//! lock_client lock --endpoints A,B,C --name NAME --id ID --dir DIR --iterations N --ttl SECS
//!                  [--fenced] [--kv-counter KEY] [--hold-ms MS] [--pause-at I]
//! lock_client campaign --endpoints A,B,C --name NAME --id ID --ttl SECS
//! ```
//!
//! `lock`: holds a lease (kept alive every TTL/3), and N times: `Lock(NAME, lease)` (the
//! fencing token is the lock key's create revision, read back with a `Range`), a
//! read-modify-write increment of the counter in the file resource in DIR (see
//! `tests/tests/lock_support/resource.rs`; `--fenced` makes it check tokens), optionally the
//! same increment of the coordinator key KEY guarded by a txn comparing the lock key's create
//! revision, then `Unlock`. At iteration I (`--pause-at`) it stops between the read and the
//! write: it creates `DIR/paused-ID` and waits until `DIR/resume-ID` exists, so a test can
//! SIGSTOP it there. A lost lease (the keep-alive says TTL 0) is replaced by a new one.
//!
//! `campaign`: holds a lease, campaigns with value ID, and once leader proclaims
//! `ID-proclaimed`, then stays leader (keeping the lease alive) until it is killed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, LeaderKey, ProclaimOptions, Txn, TxnOp};
use serde_json::json;

#[path = "../../tests/lock_support/resource.rs"]
mod resource;

use resource::{Access, Resource};

/// Deadline for connecting to the endpoints.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for one short RPC (grant, range, txn, unlock, proclaim).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for one `Lock` or `Campaign`, which wait for their turn.
const WAIT_RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failing operation is retried before the client gives up.
const RETRY_DEADLINE: Duration = Duration::from_secs(90);
/// Pause between retries.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How often the paused client looks for its resume file.
const RESUME_POLL: Duration = Duration::from_millis(20);
/// How long the paused client waits for its resume file.
const RESUME_DEADLINE: Duration = Duration::from_secs(120);

/// etcd's message for a lease that does not exist (Lock and Campaign answer it when the
/// caller's lease is gone).
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

fn emit(event: serde_json::Value) {
    println!("{event}");
}

fn unix_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Command-line flags, `--name value` or bare `--flag`.
struct Flags(Vec<String>);

impl Flags {
    fn value(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0.iter().position(|a| *a == flag).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }

    fn required(&self, name: &str) -> anyhow::Result<&str> {
        self.value(name).with_context(|| format!("--{name} is required"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> anyhow::Result<Option<T>> {
        match self.value(name) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| anyhow::anyhow!("--{name}: not a number: {text}")),
        }
    }

    fn present(&self, name: &str) -> bool {
        self.0.iter().any(|a| *a == format!("--{name}"))
    }
}

/// Whether an error is an answer from the server (so retrying would get the same answer)
/// rather than a failure to get one. tonic reports a broken connection as a status too (code
/// UNKNOWN, "transport error"), but with the transport error as its source.
fn is_answer(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else { return false };
    let answered = std::error::Error::source(s).is_none();
    answered
        && matches!(
            s.code(),
            tonic::Code::Unknown
                | tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition
        )
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message() == LEASE_NOT_FOUND)
}

/// Runs `op` until it succeeds or answers, retrying transport failures and timeouts (a node
/// may be down; another endpoint will serve).
async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut op: F) -> anyhow::Result<Result<T, etcd_client::Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + RETRY_DEADLINE;
    let mut failures = 0u32;
    loop {
        let error = match tokio::time::timeout(timeout, op()).await {
            Ok(Ok(value)) => return Ok(Ok(value)),
            Ok(Err(e)) if is_answer(&e) => return Ok(Err(e)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        failures += 1;
        if Instant::now() >= deadline {
            bail!("{what}: still failing after {failures} attempts: {error}");
        }
        emit(json!({"event": "retry", "what": what, "error": error}));
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

/// A lease kept alive by a background task until it is dropped or the server says it is gone.
struct Session {
    lease: i64,
    lost: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn grant(client: &Client, ttl: i64) -> anyhow::Result<Session> {
        let granted = retry("grant a lease", RPC_TIMEOUT, || {
            let mut client = client.clone();
            async move { client.lease_grant(ttl, None).await }
        })
        .await??;
        let lease = granted.id();
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, lost.clone()));
        emit(json!({"event": "lease", "lease": lease, "ttl": ttl}));
        Ok(Session { lease, lost, keeper })
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews `lease` every TTL/3 until the server answers TTL 0 (the lease is gone), reconnecting
/// the keep-alive stream whenever it breaks.
async fn keep_alive(mut client: Client, lease: i64, ttl: i64, lost: Arc<AtomicBool>) {
    let period = Duration::from_millis(u64::try_from(ttl).unwrap_or(1) * 1000 / 3);
    loop {
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(RPC_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() <= 0 => {
                        lost.store(true, Ordering::SeqCst);
                        emit(json!({"event": "lease_lost", "lease": lease}));
                        return;
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

async fn connect(flags: &Flags) -> anyhow::Result<Client> {
    let endpoints: Vec<String> = flags.required("endpoints")?.split(',').map(str::to_owned).collect();
    let options = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    Client::connect(&endpoints, Some(options)).await.with_context(|| format!("connect to {endpoints:?}"))
}

struct LockLoop {
    client: Client,
    name: String,
    id: String,
    dir: PathBuf,
    resource: Resource,
    kv_counter: Option<String>,
    ttl: i64,
    iterations: u64,
    hold: Duration,
    pause_at: Option<u64>,
}

impl LockLoop {
    async fn run(&self) -> anyhow::Result<()> {
        let mut session = Session::grant(&self.client, self.ttl).await?;
        for iteration in 0..self.iterations {
            let (key, token) = loop {
                if session.is_lost() {
                    session = Session::grant(&self.client, self.ttl).await?;
                }
                match self.lock(session.lease).await? {
                    Some(granted) => break granted,
                    // The lease is gone (it expired, or a retried Lock met its own withdrawn
                    // key): start over with a new one.
                    None => session = Session::grant(&self.client, self.ttl).await?,
                }
            };
            self.critical_section(iteration, &key, token).await?;
            retry("unlock", RPC_TIMEOUT, || {
                let mut client = self.client.clone();
                let key = key.clone();
                async move { client.unlock(key).await }
            })
            .await??;
            emit(json!({"event": "released", "id": self.id, "token": token}));
        }
        emit(json!({"event": "done", "id": self.id}));
        Ok(())
    }

    /// Acquires the lock; `None` if the server says the lease is gone.
    async fn lock(&self, lease: i64) -> anyhow::Result<Option<(Vec<u8>, i64)>> {
        let started = Instant::now();
        let locked = retry("lock", WAIT_RPC_TIMEOUT, || {
            let mut client = self.client.clone();
            let name = self.name.clone();
            async move { client.lock(name, Some(etcd_client::LockOptions::new().with_lease(lease))).await }
        })
        .await?;
        let resp = match locked {
            Ok(resp) => resp,
            Err(e) if is_lease_not_found(&e) => {
                emit(json!({"event": "lock_refused", "id": self.id, "lease": lease, "error": e.to_string()}));
                return Ok(None);
            }
            Err(e) => return Err(anyhow::Error::new(e).context("lock")),
        };
        let key = resp.key().to_vec();
        let header_revision = resp.header().map(|h| h.revision()).context("lock response without a header")?;
        // The documented way to learn the token: the lock key's create revision.
        let got = retry("read the lock key", RPC_TIMEOUT, || {
            let mut client = self.client.clone();
            let key = key.clone();
            async move { client.get(key, None).await }
        })
        .await??;
        let create_revision = got.kvs().first().map(|kv| kv.create_revision());
        // Cairn puts the token in the header too; etcd 3.4 does only for uncontended grants.
        let token = create_revision.unwrap_or(header_revision);
        emit(json!({
            "event": "acquired",
            "id": self.id,
            "key": String::from_utf8_lossy(&key),
            "token": token,
            "header_revision": header_revision,
            "create_revision": create_revision,
            "wait_ms": started.elapsed().as_millis(),
            "at_ms": unix_ms(),
        }));
        Ok(Some((key, token)))
    }

    async fn critical_section(&self, iteration: u64, key: &[u8], token: i64) -> anyhow::Result<()> {
        let value = match self.resource.read_counter(&self.id, token)? {
            Access::Done(value) => value,
            Access::Refused { highest_token } => {
                emit(json!({"event": "read_refused", "id": self.id, "token": token, "highest_token": highest_token}));
                return Ok(());
            }
        };
        let kv_value = match &self.kv_counter {
            Some(counter) => Some(self.kv_read(counter).await?),
            None => None,
        };
        if self.pause_at == Some(iteration) {
            self.pause(token).await?;
        }
        tokio::time::sleep(self.hold).await;
        match self.resource.write_counter(&self.id, token, value + 1)? {
            Access::Done(()) => {
                emit(json!({"event": "write", "id": self.id, "token": token, "value": value + 1, "ok": true}));
            }
            Access::Refused { highest_token } => emit(json!({
                "event": "write", "id": self.id, "token": token, "value": value + 1, "ok": false,
                "highest_token": highest_token,
            })),
        }
        if let (Some(counter), Some(kv_value)) = (&self.kv_counter, kv_value) {
            let ok = self.kv_write(counter, key, token, kv_value + 1).await?;
            emit(json!({"event": "kv_write", "id": self.id, "token": token, "value": kv_value + 1, "ok": ok}));
        }
        Ok(())
    }

    async fn kv_read(&self, counter: &str) -> anyhow::Result<u64> {
        let got = retry("read the kv counter", RPC_TIMEOUT, || {
            let mut client = self.client.clone();
            let counter = counter.to_owned();
            async move { client.get(counter, None).await }
        })
        .await??;
        match got.kvs().first() {
            None => Ok(0),
            Some(kv) => {
                let text = String::from_utf8_lossy(kv.value()).into_owned();
                text.parse().with_context(|| format!("kv counter {text:?}"))
            }
        }
    }

    /// Etcd-style fencing: the write happens only if the lock key still exists with the create
    /// revision it was granted at, i.e. only while this client still holds the lock.
    async fn kv_write(&self, counter: &str, key: &[u8], token: i64, value: u64) -> anyhow::Result<bool> {
        let resp = retry("write the kv counter", RPC_TIMEOUT, || {
            let mut client = self.client.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, token)])
                .and_then([TxnOp::put(counter.to_owned(), value.to_string(), None)]);
            async move { client.txn(txn).await }
        })
        .await??;
        Ok(resp.succeeded())
    }

    /// Announces the pause and waits for the test to let this client go on.
    async fn pause(&self, token: i64) -> anyhow::Result<()> {
        let marker = self.dir.join(format!("paused-{}", self.id));
        std::fs::write(&marker, token.to_string()).with_context(|| format!("write {}", marker.display()))?;
        emit(json!({"event": "paused", "id": self.id, "token": token, "at_ms": unix_ms()}));
        let resume = self.dir.join(format!("resume-{}", self.id));
        let deadline = Instant::now() + RESUME_DEADLINE;
        while !resume.exists() {
            if Instant::now() >= deadline {
                bail!("{} never appeared", resume.display());
            }
            tokio::time::sleep(RESUME_POLL).await;
        }
        emit(json!({"event": "resumed", "id": self.id, "token": token, "at_ms": unix_ms()}));
        Ok(())
    }
}

async fn lock_loop(flags: &Flags) -> anyhow::Result<()> {
    let dir = Path::new(flags.required("dir")?).to_path_buf();
    let lock_loop = LockLoop {
        client: connect(flags).await?,
        name: flags.required("name")?.to_owned(),
        id: flags.required("id")?.to_owned(),
        resource: Resource::new(&dir, flags.present("fenced")),
        dir,
        kv_counter: flags.value("kv-counter").map(str::to_owned),
        ttl: flags.number("ttl")?.context("--ttl is required")?,
        iterations: flags.number("iterations")?.context("--iterations is required")?,
        hold: Duration::from_millis(flags.number("hold-ms")?.unwrap_or(0)),
        pause_at: flags.number("pause-at")?,
    };
    lock_loop.run().await
}

async fn campaign(flags: &Flags) -> anyhow::Result<()> {
    let client = connect(flags).await?;
    let name = flags.required("name")?.to_owned();
    let id = flags.required("id")?.to_owned();
    let ttl: i64 = flags.number("ttl")?.context("--ttl is required")?;
    let session = Session::grant(&client, ttl).await?;
    let lease = session.lease;
    let won = retry("campaign", WAIT_RPC_TIMEOUT, || {
        let mut election = client.election_client();
        let (name, id) = (name.clone(), id.clone());
        async move { election.campaign(name, id, lease).await }
    })
    .await?
    .context("campaign")?;
    let leader = won.leader().context("campaign response without a leader key")?;
    emit(json!({
        "event": "leader",
        "id": id,
        "key": String::from_utf8_lossy(leader.key()),
        "rev": leader.rev(),
        "at_ms": unix_ms(),
    }));
    let leader_key = LeaderKey::new()
        .with_name(leader.name().to_vec())
        .with_key(leader.key().to_vec())
        .with_rev(leader.rev())
        .with_lease(leader.lease());
    retry("proclaim", RPC_TIMEOUT, || {
        let mut election = client.election_client();
        let options = ProclaimOptions::new().with_leader(leader_key.clone());
        let value = format!("{id}-proclaimed");
        async move { election.proclaim(value, Some(options)).await }
    })
    .await?
    .context("proclaim")?;
    emit(json!({"event": "proclaimed", "id": id, "at_ms": unix_ms()}));
    // Lead until killed, or until the lease is lost.
    while !session.is_lost() {
        tokio::time::sleep(RESUME_POLL).await;
    }
    bail!("lost the lease while leading")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        bail!("usage: lock_client lock|campaign --endpoints ... (see the source)");
    };
    let flags = Flags(rest.to_vec());
    let result = match command.as_str() {
        "lock" => lock_loop(&flags).await,
        "campaign" => campaign(&flags).await,
        other => bail!("unknown command {other:?}"),
    };
    if let Err(e) = &result {
        emit(json!({"event": "failed", "error": format!("{e:#}")}));
    }
    result
}
