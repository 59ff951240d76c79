//! The chunk side of the metaserver outside the state machine: the watched chunkserver
//! registry, placement, calls to chunkservers, and the leader's work on the chunk map
//! (failure reports, truncations, deletions, the orphan scan, healing, fsck).
//!
//! The chunk map itself is replicated state (`crate::namespace::chunks`); everything here either
//! decides before proposing (placement) or acts on chunkservers and then proposes what it did.

pub mod calls;
pub mod leader;
pub mod placement;
pub mod registry;

pub use leader::{ChunkManager, FailureReport, FsckChunk, FsckReport};
pub use registry::{RegistryView, ServerEntry};
