//! Waiting for a condition with a deadline instead of sleeping.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::limits::POLL_INTERVAL;

/// Calls `check` until it returns `Ok`, every [`POLL_INTERVAL`], for at most `timeout`.
///
/// `check` answers `Err(why_not)` while the condition does not hold; the last answer ends up in
/// the error, so a failure reads "timed out after 30s waiting for WHAT; last: WHY NOT".
pub async fn poll_until<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(why_not) => why_not.to_string(),
        };
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
