//! Cairn's metaserver, the Raft-replicated namespace and chunk map (see docs/metaserver.md).
//!
//! - [`namespace`]: the deterministic state machine (inodes, entries, attributes, xattrs,
//!   sessions, file locks).
//! - [`sessions`]: session lease countdowns and expiry on the leader.
//! - [`chunks`]: the chunkserver registry, placement, and the leader's chunk work (failure
//!   reports, truncations, deletions, orphan scan, healing, fsck).
//! - [`node`]: wiring and lifecycle of one metaserver process.
//! - [`api`]: the thin tonic adapter of `cairn.meta.v1.MetaService`.
//! - [`config`], [`limits`], [`metrics`], [`http`]: operations.

pub mod api;
pub mod chunks;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod sessions;
