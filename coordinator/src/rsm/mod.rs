//! The consensus runtime: a replicated state machine on openraft, with a RocksDB log store and
//! state store, a tonic transport, batching, read-index reads and leader forwarding.
//!
//! An application implements [`App`] (deterministic apply over [`store`] tables) and gets a
//! replicated, durable, snapshotting state machine. The coordinator's MVCC KV and the
//! metaserver's namespace both run on it unchanged.

// openraft's StorageError and RPCError are large, and its traits fix them as our error types.
#![allow(clippy::result_large_err)]

pub mod app;
mod error;
mod log_store;
mod network;
mod node;
mod replica;
mod service;
mod state_machine;
pub mod store;
mod types;

pub use app::App;
pub use error::RsmError;
pub use log_store::LogStore;
pub use network::incoming_nodelay;
pub use node::{AppRpcHandler, MembershipChange, Rsm, RsmConfig};
pub use service::PeerService;
pub use state_machine::StateMachine;
pub use types::{BatchResponse, CommandBatch, Member, NodeId, RaftMetrics, TypeConfig};

#[cfg(test)]
mod tests;
