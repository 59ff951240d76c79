//! The background scrubber: re-reads every chunk at a bounded rate, verifying every block's
//! CRC and computing the chunk's blake3 digest, and reports corrupt chunks (through
//! [`Integrity`]). It pauses `scrub_interval` between passes and stops at shutdown.
//!
//! It reads through the engine one `READ_MESSAGE_BYTES` piece at a time, each under the
//! chunk's read lock, so it never blocks writers for long; a chunk written during its scrub is
//! still verified block by block, but its digest then mixes two states (it is only logged).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::engine::ChunkEngine;
use crate::error::ChunkError;
use crate::ids::ChunkId;
use crate::integrity::Integrity;
use crate::limits::{LIST_CHUNKS_MAX, READ_MESSAGE_BYTES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Bytes per second; 0 disables scrubbing.
    pub rate_bytes_per_sec: u64,
    /// Pause between two passes.
    pub interval: Duration,
}

/// Runs scrub passes until `stop` is cancelled.
pub async fn run(engine: Arc<ChunkEngine>, integrity: Arc<Integrity>, config: ScrubConfig, stop: CancellationToken) {
    if config.rate_bytes_per_sec == 0 {
        tracing::info!("scrubber disabled");
        stop.cancelled().await;
        return;
    }
    loop {
        if let Err(e) = pass(&engine, &integrity, config, &stop).await {
            tracing::warn!(error = %e, "scrub pass failed");
        } else if !stop.is_cancelled() {
            integrity.pass_finished();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, ChunkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ChunkError::Internal(format!("blocking task: {e}")))?
}

/// One pass over every chunk.
async fn pass(
    engine: &Arc<ChunkEngine>,
    integrity: &Arc<Integrity>,
    config: ScrubConfig,
    stop: &CancellationToken,
) -> Result<(), ChunkError> {
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut after = ChunkId(0);
    loop {
        let e = engine.clone();
        let (page, more) = blocking(move || e.list(after, LIST_CHUNKS_MAX)).await?;
        for (chunk, meta) in &page {
            let mut hasher = blake3::Hasher::new();
            let mut offset = 0u64;
            let mut outcome = Ok(());
            while offset < meta.length_bytes {
                if stop.is_cancelled() {
                    return Ok(());
                }
                let (e, chunk) = (engine.clone(), *chunk);
                let version = meta.version;
                match blocking(move || e.read(chunk, Some(version), offset, READ_MESSAGE_BYTES as u64)).await {
                    Ok((_, data)) if data.is_empty() => break,
                    Ok((_, data)) => {
                        hasher.update(&data);
                        offset += data.len() as u64;
                        bytes += data.len() as u64;
                        integrity.scrubbed(data.len() as u64);
                    }
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
                // Rate limit: sleep until the pass is no faster than the configured rate.
                let due = Duration::from_secs_f64(bytes as f64 / config.rate_bytes_per_sec as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(ahead) => {}
                    }
                }
            }
            match outcome {
                Ok(()) => {
                    integrity.chunk_scrubbed();
                    tracing::debug!(%chunk, digest = %hasher.finalize(), "scrubbed");
                }
                Err(error @ ChunkError::Corrupt { .. }) => {
                    let i = integrity.clone();
                    blocking(move || {
                        i.observe(&error, "scrub");
                        Ok(())
                    })
                    .await?;
                }
                // Deleted, re-versioned or being replaced since it was listed: next pass.
                Err(
                    ChunkError::NotFound { .. } | ChunkError::StaleReplica { .. } | ChunkError::StaleVersion { .. },
                ) => {}
                Err(error) => tracing::warn!(%chunk, %error, "scrub read failed"),
            }
        }
        match page.last() {
            Some((last, _)) if more => after = *last,
            _ => return Ok(()),
        }
    }
}
