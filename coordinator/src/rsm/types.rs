//! openraft type configuration shared by every state machine on the runtime.
//!
//! The runtime is application-agnostic: a log entry carries a batch of opaque commands (bytes the
//! [`App`](super::app::App) decodes) and the response is one opaque result per command. Batching
//! many proposals into one entry is how the runtime group-commits: one append, one fsync and one
//! replication round trip for many client requests.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Raft node id. openraft requires a plain integer type with many std traits; the newtype lives at
/// the API edges instead ([`crate::rsm::NodeId`] is this alias so that openraft types line up).
pub type NodeId = u64;

/// A batch of application commands committed as one log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBatch(#[serde(with = "byte_strings")] pub Vec<Vec<u8>>);

/// One application response per command of a [`CommandBatch`], in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse(#[serde(with = "byte_strings")] pub Vec<Vec<u8>>);

/// Encodes each command as one byte string. Left to serde's default, a `Vec<u8>` is a sequence
/// of single bytes, which costs a call per byte: a 1 MiB value took long enough to encode that
/// AppendEntries missed its deadline.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(items.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let items: Vec<serde_bytes::ByteBuf> = Vec::deserialize(d)?;
        Ok(items.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}

impl std::fmt::Display for CommandBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} commands", self.0.len())
    }
}

/// A cluster member as the Raft membership records it: where peers reach it, where clients
/// reach it (published by the member itself once it runs), and a display name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub peer_addr: String,
    pub client_addr: String,
    pub name: String,
}

impl Member {
    pub fn new(peer_addr: impl Into<String>) -> Self {
        Self { peer_addr: peer_addr.into(), ..Default::default() }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(peer {}, client {})", self.name, self.peer_addr, self.client_addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = CommandBatch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Member>;

/// bincode encoding used for log entries, metadata and peer messages.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}
