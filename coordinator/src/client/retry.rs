//! When a failed call may be sent again, and how long to wait first.
//!
//! The rule: a read may always be retried (it changes nothing); a write only when the failure
//! proves the request never took effect. What a failure proves is decided from the gRPC status
//! alone, by [`classify`], so it can be tested without a server.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

/// Whether a request changes the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

/// What a failed attempt tells about the request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// The request never took effect: the connection was refused before it was sent, or the
    /// server rejected it before proposing it. Safe to send again, anywhere.
    NotApplied,
    /// The request may have taken effect, or may still: the connection broke after sending,
    /// the deadline passed, the server timed out waiting for the commit.
    Unknown,
    /// The server answered with a definite error; sending it again would get the same answer.
    Refused,
}

/// etcd v3.4's errors (`rpctypes`) that the server returns before it proposes anything, with
/// their codes; exact strings, as etcd clients match them.
const NOT_APPLIED: &[(Code, &str)] = &[
    (Code::Unavailable, "etcdserver: no leader"),
    (Code::Unavailable, "etcdserver: server stopped"),
    (Code::Unavailable, "etcdserver: not capable"),
    (Code::ResourceExhausted, "etcdserver: too many requests"),
];

/// What `status`, the failure of one attempt, proves about the request.
pub(crate) fn classify(status: &Status) -> Fate {
    // A status with a source was made on this side from a transport failure; one the server
    // sent has none.
    if status.source().is_some() {
        if connect_failed(status) {
            return Fate::NotApplied;
        }
        return Fate::Unknown;
    }
    if NOT_APPLIED.iter().any(|(code, message)| status.code() == *code && status.message() == *message) {
        return Fate::NotApplied;
    }
    match status.code() {
        // "etcdserver: request timed out", "etcdserver: leader changed", a forwarding failure
        // between servers, ...: the server may have proposed the request.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Fate::Unknown,
        _ => Fate::Refused,
    }
}

/// Whether the failure happened while connecting, i.e. before anything was sent on the
/// connection (tonic reports refused, unreachable and timed-out connects as `ConnectError`).
fn connect_failed(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a request of kind `op` that failed with `fate` may be sent again.
pub(crate) fn may_retry(op: Op, fate: Fate) -> bool {
    match (op, fate) {
        (_, Fate::Refused) => false,
        (_, Fate::NotApplied) => true,
        (Op::Read, Fate::Unknown) => true,
        (Op::Write, Fate::Unknown) => false,
    }
}

/// Exponential backoff with jitter: the n-th pause (from 0) lies between half and all of
/// `min(base * 2^n, max)`, so clients that failed together do not retry together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, step: 0 }
    }

    /// The upper bound of the next pause.
    pub(crate) fn ceiling(&self) -> Duration {
        // 2^20 × any sane base is far past any sane max; stopping there avoids overflow.
        let factor = 1u32 << self.step.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next pause, and one step further for the pause after it.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.step = self.step.saturating_add(1);
        jittered(ceiling, rand::random::<f64>())
    }

    /// Starts again from `base` (after a success).
    pub(crate) fn reset(&mut self) {
        self.step = 0;
    }
}

/// A pause between half and all of `ceiling`; `unit` in [0, 1] picks where.
fn jittered(ceiling: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    let half = ceiling / 2;
    half + half.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_connect() -> Status {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    #[test]
    fn refused_connection_is_not_applied() {
        let status = refused_connect();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(classify(&status), Fate::NotApplied);
        assert!(may_retry(Op::Write, classify(&status)));
    }

    #[test]
    fn broken_connection_is_unknown() {
        // A connection that breaks mid-call surfaces as an I/O error (wrapped by hyper/h2).
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let status = Status::from_error(Box::new(io));
        assert_eq!(classify(&status), Fate::Unknown);
        assert!(may_retry(Op::Read, classify(&status)));
        assert!(!may_retry(Op::Write, classify(&status)));
    }

    #[test]
    fn etcd_errors_that_prove_nothing_was_proposed() {
        for message in ["etcdserver: no leader", "etcdserver: server stopped", "etcdserver: not capable"] {
            assert_eq!(classify(&Status::unavailable(message)), Fate::NotApplied, "{message}");
        }
        assert_eq!(classify(&Status::resource_exhausted("etcdserver: too many requests")), Fate::NotApplied);
        // The right string with the wrong code is not etcd's error.
        assert_eq!(classify(&Status::internal("etcdserver: no leader")), Fate::Refused);
    }

    #[test]
    fn timeouts_leave_writes_unknown() {
        for status in [
            Status::unavailable("etcdserver: request timed out"),
            Status::unavailable("etcdserver: request timed out, possibly due to previous leader failure"),
            Status::unavailable("etcdserver: leader changed"),
            Status::deadline_exceeded("deadline"),
            Status::cancelled("operation was canceled"),
        ] {
            assert_eq!(classify(&status), Fate::Unknown, "{status:?}");
            assert!(!may_retry(Op::Write, classify(&status)));
            assert!(may_retry(Op::Read, classify(&status)));
        }
    }

    #[test]
    fn answers_are_final() {
        for status in [
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::not_found("etcdserver: requested lease not found"),
            Status::invalid_argument("etcdserver: key is not provided"),
            Status::unknown("election: not leader"),
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
        ] {
            assert_eq!(classify(&status), Fate::Refused, "{status:?}");
            assert!(!may_retry(Op::Read, classify(&status)));
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(1000));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![50, 100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(50));
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        let c = Duration::from_millis(400);
        assert_eq!(jittered(c, 0.0), Duration::from_millis(200));
        assert_eq!(jittered(c, 1.0), Duration::from_millis(400));
        assert_eq!(jittered(c, 7.0), Duration::from_millis(400));
        assert_eq!(jittered(c, f64::NAN), Duration::from_millis(200));
    }
}
