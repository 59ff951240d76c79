//! Cairn's chunkserver. Not built yet: it arrives with its own issue (see docs/architecture.md).
//! The crate exists so the workspace layout is final from the start; it has no behaviour.
