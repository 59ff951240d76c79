//! gRPC adapters for the etcd v3 API. Each translates a request, delegates to
//! [`Backend`](crate::backend::Backend) or [`WatchSession`](crate::watch::WatchSession), and maps
//! errors through the single table in [`error`].

pub mod cluster;
pub mod election;
pub mod error;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;
