//! The live chunkservers, as the coordinator's registry lists them: every metaserver node keeps
//! a watched, in-memory copy of the keys under `/cairn/chunkservers/`.
//!
//! # Contract
//! - A chunkserver keeps its key alive with a lease (chunkserver/src/registry.rs); the key
//!   disappears when the lease expires. A server is *live* here while its key exists in this
//!   node's copy.
//! - The copy starts with a full read of the prefix and follows a watch from the read's
//!   revision + 1, so no change is missed; when the watch ends (compaction, no coordinator for
//!   a while) the copy is read again. While the coordinators are unreachable, the copy keeps its
//!   last state.
//! - Until the first read succeeds the view is not *synced*: chunk placement then answers
//!   "unavailable" and nobody treats replicas as lost.
//! - The view is not replicated state: it only feeds decisions taken before proposing
//!   (placement) or by the leader (healing), never `apply`.

use std::collections::BTreeMap;
use std::sync::RwLock;

use cairn_coordinator::client::{ClientOptions, CoordinatorClient, EventKind, WatchSpec};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::limits::{REGISTRY_RETRY_INTERVAL, REGISTRY_SERVERS_MAX};
use crate::namespace::ChunkserverId;

/// Prefix of every chunkserver's registry key (the chunkserver's `REGISTRY_PREFIX`).
pub const REGISTRY_PREFIX: &str = "/cairn/chunkservers/";

/// A chunkserver's registry value: the JSON the chunkserver writes (chunkserver/src/registry.rs,
/// `RegistryEntry`). Unknown fields are ignored so a newer chunkserver can add some.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerEntry {
    pub id: u64,
    /// host:port of its chunk gRPC service.
    pub addr: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    #[serde(default)]
    pub rack: String,
    #[serde(default)]
    pub zone: String,
}

impl ServerEntry {
    pub fn server(&self) -> ChunkserverId {
        ChunkserverId(self.id)
    }
}

#[derive(Debug, Default)]
struct State {
    servers: BTreeMap<u64, ServerEntry>,
    synced: bool,
}

/// This node's copy of the registry.
#[derive(Debug, Default)]
pub struct RegistryView {
    state: RwLock<State>,
}

impl RegistryView {
    pub fn new() -> Self {
        Self::default()
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        // Every write replaces whole values, so a poisoned lock still holds a consistent map.
        f(&self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether the registry has been read at least once.
    pub fn synced(&self) -> bool {
        self.read(|s| s.synced)
    }

    /// The live servers, by id; `None` until the view is synced.
    pub fn live(&self) -> Option<Vec<ServerEntry>> {
        self.read(|s| s.synced.then(|| s.servers.values().cloned().collect()))
    }

    /// Whether `server` is live. Before the first sync every server counts as live (nothing is
    /// known to be lost yet).
    pub fn is_live(&self, server: ChunkserverId) -> bool {
        self.read(|s| !s.synced || s.servers.contains_key(&server.0))
    }

    /// Replaces the whole view (a fresh read of the registry).
    pub fn replace(&self, servers: Vec<ServerEntry>) {
        self.write(|s| {
            s.servers = servers.into_iter().map(|e| (e.id, e)).collect();
            s.synced = true;
        });
    }

    pub fn put(&self, entry: ServerEntry) {
        self.write(|s| {
            if s.servers.len() < REGISTRY_SERVERS_MAX || s.servers.contains_key(&entry.id) {
                s.servers.insert(entry.id, entry);
            }
        });
    }

    pub fn remove(&self, id: u64) {
        self.write(|s| {
            s.servers.remove(&id);
        });
    }
}

/// The server id a registry key names, if it is one.
fn key_id(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key).ok()?.strip_prefix(REGISTRY_PREFIX)?.parse().ok()
}

fn parse_entry(key: &[u8], value: &[u8]) -> Option<ServerEntry> {
    let entry: ServerEntry = serde_json::from_slice(value).ok()?;
    // The key is authoritative: an entry under another server's key is ignored.
    (key_id(key) == Some(entry.id)).then_some(entry)
}

/// Keeps `view` following the registry until `stop` is cancelled. Without endpoints the view
/// stays unsynced (no chunk can be placed).
pub async fn follow(view: std::sync::Arc<RegistryView>, endpoints: Vec<String>, stop: CancellationToken) {
    if endpoints.is_empty() {
        tracing::warn!("no coordinator endpoints configured: chunks cannot be placed");
        return;
    }
    let client = match CoordinatorClient::connect(&endpoints, ClientOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "coordinator client for the chunkserver registry");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            outcome = follow_once(&view, &client) => {
                tracing::warn!(error = %outcome, "chunkserver registry watch ended; reading it again");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REGISTRY_RETRY_INTERVAL) => {}
        }
    }
}

/// Reads the registry, then applies its changes until the watch ends; returns why it ended.
async fn follow_once(view: &RegistryView, client: &CoordinatorClient) -> String {
    let range = match client.get_prefix(REGISTRY_PREFIX).await {
        Ok(r) => r,
        Err(e) => return e.to_string(),
    };
    let servers: Vec<ServerEntry> = range.kvs.iter().filter_map(|kv| parse_entry(&kv.key, &kv.value)).collect();
    tracing::info!(servers = servers.len(), revision = %range.revision, "read the chunkserver registry");
    view.replace(servers);
    let spec =
        WatchSpec::prefix(REGISTRY_PREFIX).from_revision(cairn_coordinator::client::Revision(range.revision.0 + 1));
    let mut stream = match client.watch(spec).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    loop {
        match stream.recv().await {
            None => return "watch stream ended".into(),
            Some(Err(e)) => return e.to_string(),
            Some(Ok(batch)) => {
                for event in batch.events {
                    match event.kind {
                        EventKind::Put => match parse_entry(event.key(), event.value()) {
                            Some(entry) => view.put(entry),
                            None => {
                                tracing::warn!(key = %String::from_utf8_lossy(event.key()), "unreadable registry entry")
                            }
                        },
                        EventKind::Delete => {
                            if let Some(id) = key_id(event.key()) {
                                tracing::info!(
                                    chunkserver = id,
                                    "chunkserver left the registry (lease expired or revoked)"
                                );
                                view.remove(id);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_like_the_chunkserver_writes_them() {
        let json = br#"{"id":3,"addr":"127.0.0.1:7000","capacity_bytes":100,"free_bytes":40,"rack":"r1","zone":"z1"}"#;
        let e = parse_entry(b"/cairn/chunkservers/3", json).expect("entry");
        assert_eq!((e.id, e.addr.as_str(), e.free_bytes, e.rack.as_str()), (3, "127.0.0.1:7000", 40, "r1"));
        assert!(parse_entry(b"/cairn/chunkservers/4", json).is_none(), "id must match the key");
        assert!(parse_entry(b"/cairn/chunkservers/3", b"nonsense").is_none());
        assert_eq!(key_id(b"/cairn/chunkservers/12"), Some(12));
        assert_eq!(key_id(b"/other/12"), None);
    }

    #[test]
    fn liveness_follows_the_view() {
        let view = RegistryView::new();
        assert!(view.is_live(ChunkserverId(1)), "unsynced: nothing is known lost");
        assert!(view.live().is_none());
        let e = |id| ServerEntry {
            id,
            addr: format!("h:{id}"),
            capacity_bytes: 10,
            free_bytes: 10,
            rack: String::new(),
            zone: String::new(),
        };
        view.replace(vec![e(1), e(2)]);
        assert!(view.is_live(ChunkserverId(1)) && !view.is_live(ChunkserverId(3)));
        view.remove(1);
        view.put(e(3));
        let ids: Vec<u64> = view.live().expect("synced").iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 3]);
    }
}
