//! Cairn's chunkserver: stores chunks of file data in RocksDB as checksummed blocks, replicates
//! writes along a chain of chunkservers, verifies every read, scrubs in the background, and
//! registers itself in the coordinator. See docs/chunkserver.md.
//!
//! Layout: `storage/` (the key-value contract, RocksDB and in-memory), `engine.rs` (chunk
//! operations and block math on top of storage, with `block.rs`), `api/` (tonic adapters and
//! the error→status table), `replication.rs` (forwarding along the chain), `client.rs` (calling
//! chunkservers, failover reads), `integrity.rs` and `scrubber.rs` (corruption reports),
//! `registry.rs` (coordinator registration), `node.rs` (wiring and lifecycle), `config.rs`,
//! `metrics.rs`, `limits.rs`, `space.rs`, `http.rs`; `bench.rs`, `debug.rs` and `tools.rs`
//! back the binary's subcommands.

pub mod api;
pub mod bench;
pub mod block;
pub mod client;
pub mod config;
pub mod debug;
pub mod engine;
pub mod error;
pub mod http;
pub mod ids;
pub mod integrity;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod replication;
pub mod scrubber;
pub mod space;
pub mod storage;
pub mod tools;
