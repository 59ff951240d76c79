//! Cairn's coordinator: a consensus runtime ([`rsm`]) that any replicated state machine can run
//! on, and an etcd-v3-compatible coordination service built on it (MVCC KV, Watch, Lease).

pub mod alarm;
pub mod api;
pub mod backend;
pub mod client;
pub mod config;
pub mod election;
pub mod http;
pub mod lessor;
pub mod limits;
pub mod lock;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod rsm;
pub mod watch;
