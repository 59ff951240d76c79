//! What this replica knows about its own corruption: chunks whose stored blocks failed their
//! checksum (found by a read, a partial overwrite, a stat digest or the scrubber), and the
//! scrubber's progress. A corrupt chunk is flagged in its stored metadata (so `ListChunks` and
//! `StatChunk` report it across restarts), counted in metrics, logged at ERROR (a replica has
//! lost data and must be repaired), and listed in `/status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::engine::ChunkEngine;
use crate::error::ChunkError;
use crate::ids::ChunkId;
use crate::limits::CORRUPT_REPORT_MAX;
use crate::metrics::Metrics;

/// One corrupt chunk as `/status` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CorruptChunk {
    pub chunk_id: u64,
    /// The first block found bad.
    pub block: u32,
    /// What found it: "read", "write", "stat" or "scrub".
    pub found_by: &'static str,
    pub message: String,
}

/// The scrubber's progress as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ScrubProgress {
    pub passes: u64,
    pub chunks_scrubbed: u64,
    pub bytes_scrubbed: u64,
    /// Seconds since the Unix epoch when the last pass finished.
    pub last_pass_finished_unix_s: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    corrupt: BTreeMap<ChunkId, CorruptChunk>,
    scrub: ScrubProgress,
}

#[derive(Debug)]
pub struct Integrity {
    engine: Arc<ChunkEngine>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl Integrity {
    pub fn new(engine: Arc<ChunkEngine>, metrics: Arc<Metrics>) -> Integrity {
        Integrity { engine, metrics, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at an operation's error and, if it is a checksum failure, records it. Blocking
    /// (it writes the corrupt flag): call from a blocking context.
    pub fn observe(&self, error: &ChunkError, found_by: &'static str) {
        let ChunkError::Corrupt { chunk, block, .. } = error else { return };
        self.metrics.checksum_errors.inc();
        if found_by == "scrub" {
            self.metrics.scrub_corrupt_chunks.inc();
        }
        let newly = match self.engine.mark_corrupt(*chunk) {
            Ok(newly) => newly,
            Err(e) => {
                tracing::warn!(%chunk, error = %e, "record the corrupt flag");
                true
            }
        };
        let mut state = self.state();
        let known = state.corrupt.contains_key(chunk);
        if !known && state.corrupt.len() < CORRUPT_REPORT_MAX {
            state.corrupt.insert(
                *chunk,
                CorruptChunk { chunk_id: chunk.0, block: *block, found_by, message: error.to_string() },
            );
        }
        drop(state);
        if newly || !known {
            tracing::error!(chunk_id = chunk.0, block, found_by, error = %error, "corrupt chunk replica; it needs repair from another replica");
        }
    }

    /// Forgets a chunk that was deleted or replaced.
    pub fn clear(&self, chunk: ChunkId) {
        self.state().corrupt.remove(&chunk);
    }

    pub fn corrupt_chunks(&self) -> Vec<CorruptChunk> {
        self.state().corrupt.values().cloned().collect()
    }

    pub fn scrub_progress(&self) -> ScrubProgress {
        self.state().scrub.clone()
    }

    pub(crate) fn scrubbed(&self, bytes: u64) {
        self.metrics.scrub_bytes.inc_by(bytes);
        self.state().scrub.bytes_scrubbed += bytes;
    }

    pub(crate) fn chunk_scrubbed(&self) {
        self.state().scrub.chunks_scrubbed += 1;
    }

    pub(crate) fn pass_finished(&self) {
        self.metrics.scrub_passes.inc();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).ok();
        let mut state = self.state();
        state.scrub.passes += 1;
        state.scrub.last_pass_finished_unix_s = now;
    }
}
