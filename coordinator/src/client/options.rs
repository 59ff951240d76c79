//! How a [`super::CoordinatorClient`] times out, retries and keeps its streams.

use std::time::Duration;

use super::error::ClientError;
use crate::limits;

/// Deadlines and retry bounds of a client. Defaults come from [`crate::limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline of one attempt of an RPC (also sent to the server as the gRPC deadline).
    pub request_timeout: Duration,
    /// Deadline for connecting to one endpoint.
    pub connect_timeout: Duration,
    /// Attempts of one call, across endpoints, before it fails with
    /// [`ClientError::Unavailable`]. At least 1.
    pub attempts: u32,
    /// First and longest pause between attempts (exponential, with jitter).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a broken watch keeps trying to resume before it ends with
    /// [`ClientError::Unavailable`].
    pub watch_resume_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: limits::CLIENT_REQUEST_TIMEOUT_DEFAULT,
            connect_timeout: limits::CLIENT_CONNECT_TIMEOUT_DEFAULT,
            attempts: limits::CLIENT_ATTEMPTS_DEFAULT,
            backoff_base: limits::CLIENT_BACKOFF_BASE_DEFAULT,
            backoff_max: limits::CLIENT_BACKOFF_MAX_DEFAULT,
            watch_resume_timeout: limits::CLIENT_WATCH_RESUME_TIMEOUT_DEFAULT,
        }
    }
}

impl ClientOptions {
    /// Refuses options the client cannot work with.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let invalid = |what: &str| Err(ClientError::InvalidArgument(what.to_owned()));
        if self.request_timeout.is_zero() {
            return invalid("request_timeout must be positive");
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be positive");
        }
        if self.attempts == 0 {
            return invalid("attempts must be at least 1");
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_max {
            return invalid("backoff_base must be positive and at most backoff_max");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_others_are_checked() {
        assert!(ClientOptions::default().validate().is_ok());
        let bad = [
            ClientOptions { attempts: 0, ..Default::default() },
            ClientOptions { request_timeout: Duration::ZERO, ..Default::default() },
            ClientOptions { backoff_base: Duration::from_secs(2), ..Default::default() },
        ];
        for options in bad {
            assert!(matches!(options.validate(), Err(ClientError::InvalidArgument(_))), "{options:?}");
        }
    }
}
