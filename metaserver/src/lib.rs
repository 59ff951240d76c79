//! Cairn's metaserver, phase 1: the Raft-replicated namespace (see docs/metaserver.md).
//!
//! - [`namespace`]: the deterministic state machine (inodes, entries, attributes, xattrs,
//!   sessions, file locks).
//! - [`sessions`]: session lease countdowns and expiry on the leader.
//! - [`node`]: wiring and lifecycle of one metaserver process.
//! - [`api`]: the thin tonic adapter of `cairn.meta.v1.MetaService`.
//! - [`config`], [`limits`], [`metrics`], [`http`]: operations.

pub mod api;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod sessions;
