//! `cairn bench`: load generators that talk to servers only through their public APIs, so the
//! same benchmark runs against Cairn and against the system it imitates (a real etcd).

pub mod kv;
pub mod lock;
pub mod meta;
