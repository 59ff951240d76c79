//! gRPC adapters only: [`ChunkApi`] implements `cairn.chunk.v1.ChunkService` over the engine,
//! and `status.rs` is the one table from domain errors to gRPC statuses.

mod service;
pub mod status;

pub use service::ChunkApi;
