//! Helpers shared by the lock and election tests (`lock_*.rs`, `election_*.rs`): contender
//! processes (the `lock_client` binary), a throw-away single-node etcd 3.4, and the checks of
//! the fenced counter. Each test crate uses a different part, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod resource;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use self::resource::Record;

/// How long a contender may take to finish its iterations once nothing blocks it.
pub const CONTENDERS_EXIT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long etcd may take to answer after it is started.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at a process or a file.
pub const POLL: Duration = Duration::from_millis(20);

/// Locks a mutex even if a panicking thread poisoned it (the data is a plain event list).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One `lock_client` process and the events it printed so far. Killed when dropped.
pub struct Contender {
    pub id: String,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr_path: PathBuf,
}

impl Contender {
    /// Starts `lock_client <args>`; its stderr goes to `dir/<id>.stderr`.
    pub fn spawn(id: &str, dir: &Path, args: &[String]) -> anyhow::Result<Contender> {
        let stderr_path = dir.join(format!("{id}.stderr"));
        let stderr =
            std::fs::File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_lock_client"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawn lock_client")?;
        let stdout = child.stdout.take().context("lock_client stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let who = id.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) => locked(&sink).push(event),
                    Err(_) => eprintln!("{who}: unparsable line {line:?}"),
                }
            }
        });
        Ok(Contender { id: id.to_owned(), child, events, stderr_path })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid(), signal).with_context(|| format!("send {signal} to {}", self.id))
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().with_context(|| format!("kill {}", self.id))?;
        self.child.wait().with_context(|| format!("reap {}", self.id))?;
        Ok(())
    }

    pub fn events(&self) -> Vec<Value> {
        locked(&self.events).clone()
    }

    /// The events named `name`.
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == name).collect()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("wait for {}", self.id))
    }

    /// Waits for the first event named `name`, failing if the process exits first.
    pub async fn wait_for_event(&mut self, name: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events_named(name).into_iter().next() {
                return Ok(event);
            }
            if let Some(status) = self.try_exit()? {
                bail!("{} exited ({status}) before {name:?}; stderr: {}", self.id, self.stderr());
            }
            if Instant::now() >= deadline {
                bail!("{} printed no {name:?} within {timeout:?}; events: {:?}", self.id, self.events());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until every contender has exited successfully.
pub async fn wait_all_done(contenders: &mut [Contender], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for contender in contenders.iter_mut() {
        loop {
            if let Some(status) = contender.try_exit()? {
                ensure!(
                    status.success(),
                    "{} failed ({status}); last events: {:?}; stderr: {}",
                    contender.id,
                    contender.events().iter().rev().take(5).collect::<Vec<_>>(),
                    contender.stderr()
                );
                break;
            }
            if Instant::now() >= deadline {
                bail!("{} did not finish within {timeout:?}; last events: {:?}", contender.id, {
                    let events = contender.events();
                    events.iter().rev().take(5).cloned().collect::<Vec<_>>()
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

/// Arguments of `lock_client lock`.
pub struct LockArgs<'a> {
    pub endpoints: &'a [String],
    pub name: &'a str,
    pub dir: &'a Path,
    pub iterations: u64,
    pub ttl_secs: i64,
    pub fenced: bool,
    pub kv_counter: Option<&'a str>,
    pub hold_ms: u64,
    pub pause_at: Option<u64>,
}

impl LockArgs<'_> {
    pub fn to_args(&self, id: &str) -> Vec<String> {
        let mut args = vec![
            "lock".to_owned(),
            "--endpoints".to_owned(),
            self.endpoints.join(","),
            "--name".to_owned(),
            self.name.to_owned(),
            "--id".to_owned(),
            id.to_owned(),
            "--dir".to_owned(),
            self.dir.display().to_string(),
            "--iterations".to_owned(),
            self.iterations.to_string(),
            "--ttl".to_owned(),
            self.ttl_secs.to_string(),
            "--hold-ms".to_owned(),
            self.hold_ms.to_string(),
        ];
        if self.fenced {
            args.push("--fenced".to_owned());
        }
        if let Some(counter) = self.kv_counter {
            args.extend(["--kv-counter".to_owned(), counter.to_owned()]);
        }
        if let Some(at) = self.pause_at {
            args.extend(["--pause-at".to_owned(), at.to_string()]);
        }
        args
    }
}

/// What a run of contenders did, from their own reports and from the resource's record.
#[derive(Debug)]
pub struct Outcome {
    pub record: Record,
    /// Successful increments the clients reported (file resource).
    pub increments_reported: usize,
    /// Increments of the coordinator counter the clients reported, and its final value.
    pub kv_increments_reported: usize,
    pub kv_counter: Option<u64>,
    /// Grants whose header revision differed from the lock key's create revision.
    pub token_mismatches: Vec<Value>,
    /// Every grant: (client, token), in no particular order.
    pub grants: Vec<(String, i64)>,
}

impl Outcome {
    pub fn gather(contenders: &[Contender], record: Record, kv_counter: Option<u64>) -> Outcome {
        let mut increments_reported = 0;
        let mut kv_increments_reported = 0;
        let mut token_mismatches = Vec::new();
        let mut grants = Vec::new();
        for contender in contenders {
            for event in contender.events() {
                match event["event"].as_str() {
                    Some("write") if event["ok"] == true => increments_reported += 1,
                    Some("kv_write") if event["ok"] == true => kv_increments_reported += 1,
                    Some("acquired") => {
                        let token = event["token"].as_i64().unwrap_or(-1);
                        if event["create_revision"].as_i64() != event["header_revision"].as_i64() {
                            token_mismatches.push(event.clone());
                        }
                        grants.push((contender.id.clone(), token));
                    }
                    _ => {}
                }
            }
        }
        Outcome { record, increments_reported, kv_increments_reported, kv_counter, token_mismatches, grants }
    }

    /// Accepted writes that did not end up in the counter: each accepted write set the counter
    /// to the value its writer read plus one, so the counter is the number of writes unless
    /// some were overwritten by a writer that had read an older value.
    pub fn lost_updates(&self) -> u64 {
        (self.record.writes.len() as u64).saturating_sub(self.record.counter)
    }

    /// Accepted writes that wrote a value some earlier accepted write had already written.
    pub fn repeated_values(&self) -> Vec<u64> {
        let mut seen = std::collections::BTreeSet::new();
        self.record.writes.iter().filter(|w| !seen.insert(w.value)).map(|w| w.value).collect()
    }

    pub fn summary(&self) -> String {
        format!(
            "counter={} accepted_writes={} reported_increments={} lost_updates={} repeated_values={:?} \
             refusals={:?} overlaps={:?} kv_counter={:?} kv_increments={} token_mismatches={}",
            self.record.counter,
            self.record.writes.len(),
            self.increments_reported,
            self.lost_updates(),
            self.repeated_values(),
            self.record.refusals,
            self.record.overlaps,
            self.kv_counter,
            self.kv_increments_reported,
            self.token_mismatches.len()
        )
    }

    /// The fenced counter's promise: every accepted write incremented the value before it
    /// (1, 2, 3, ... in order), the counter equals the number of increments the clients saw
    /// succeed, and tokens never went backwards.
    pub fn check_counter_exact(&self) -> anyhow::Result<()> {
        let values: Vec<u64> = self.record.writes.iter().map(|w| w.value).collect();
        let expected: Vec<u64> = (1..=values.len() as u64).collect();
        ensure!(values == expected, "accepted writes are not 1, 2, 3, ...: {values:?}\n{}", self.summary());
        ensure!(
            self.record.counter == values.len() as u64 && self.increments_reported == values.len(),
            "lost or doubled increments: {}",
            self.summary()
        );
        let tokens: Vec<i64> = self.record.writes.iter().map(|w| w.token).collect();
        ensure!(tokens.windows(2).all(|w| w[0] <= w[1]), "tokens went backwards: {tokens:?}");
        Ok(())
    }

    /// Cairn's promises about tokens: the response header carries the lock key's create
    /// revision, and no two grants to different clients share a token.
    pub fn check_tokens(&self) -> anyhow::Result<()> {
        ensure!(self.token_mismatches.is_empty(), "header revision != create revision: {:?}", self.token_mismatches);
        let mut owner: BTreeMap<i64, &str> = BTreeMap::new();
        for (client, token) in &self.grants {
            if let Some(other) = owner.insert(*token, client) {
                ensure!(other == client, "token {token} granted to {other} and {client}");
            }
        }
        Ok(())
    }

    /// The coordinator counter (txn-fenced) matches the increments its clients saw succeed.
    pub fn check_kv_counter(&self) -> anyhow::Result<()> {
        ensure!(
            self.kv_counter == Some(self.kv_increments_reported as u64),
            "kv counter {:?} after {} successful increments",
            self.kv_counter,
            self.kv_increments_reported
        );
        Ok(())
    }
}

/// The value of a counter key, `None` if it does not exist.
pub async fn read_kv_counter(client: &mut etcd_client::Client, key: &str) -> anyhow::Result<Option<u64>> {
    let got = client.get(key, None).await.with_context(|| format!("get {key}"))?;
    match got.kvs().first() {
        None => Ok(None),
        Some(kv) => {
            let text = String::from_utf8_lossy(kv.value()).into_owned();
            Ok(Some(text.parse().with_context(|| format!("counter {text:?}"))?))
        }
    }
}

/// A single-node etcd (Debian's `etcd` 3.4) in its own directory, on free ports; killed when
/// dropped.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers; `Ok(None)` (after saying so) when the `etcd`
    /// binary is not installed, so the caller can skip.
    pub async fn start(election_timeout_ms: u64) -> anyhow::Result<Option<Etcd>> {
        let installed = Command::new("etcd").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        if !installed {
            eprintln!("SKIPPED: `etcd` (Debian's etcd-server 3.4) is not installed; the etcd comparison did not run");
            return Ok(None);
        }
        let dir = tempfile::Builder::new().prefix("cairn-etcd-").tempdir().context("create the etcd directory")?;
        let ports = cairn_fs_client::dev::pick_free_ports(2).context("pick ports for etcd")?;
        let client_url = format!("http://127.0.0.1:{}", ports[0]);
        let peer_url = format!("http://127.0.0.1:{}", ports[1]);
        let log = std::fs::File::create(dir.path().join("etcd.log")).context("create etcd.log")?;
        let heartbeat_ms = (election_timeout_ms / 10).max(10);
        let child = Command::new("etcd")
            .args(["--name", "solo", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("solo={peer_url}")])
            .args(["--heartbeat-interval", &heartbeat_ms.to_string()])
            .args(["--election-timeout", &election_timeout_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawn etcd")?;
        let etcd = Etcd { child, endpoint: format!("127.0.0.1:{}", ports[0]), _dir: dir };
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            let answered = match cairn_tests::connect(std::slice::from_ref(&etcd.endpoint)).await {
                Ok(mut client) => client.get("probe", None).await.is_ok(),
                Err(_) => false,
            };
            if answered {
                return Ok(Some(etcd));
            }
            if Instant::now() >= deadline {
                bail!("etcd at {} did not answer within {ETCD_READY_TIMEOUT:?}", etcd.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
