//! Lease countdowns, kept only on the leader.
//!
//! The replicated state holds each lease's id and granted TTL; *when* a lease expires is
//! decided here, on the leader, and committed as a `LeaseExpire` command — time never enters
//! the state machine. A new leader starts every countdown afresh from the moment it first looks
//! at a lease (as etcd's lessor does on promotion), so a leader change can only extend a lease,
//! never cut it short.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Deadlines of the leases this node has seen while leader.
#[derive(Default)]
pub struct Lessor {
    deadlines: Mutex<HashMap<i64, Instant>>,
}

impl Lessor {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i64, Instant>) -> T) -> T {
        let mut guard = match self.deadlines.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Forgets every countdown; called when this node becomes leader (or stops being one).
    pub fn reset(&self) {
        self.with(|d| d.clear());
    }

    /// Restarts `id`'s countdown at `ttl_secs` from `now`.
    pub fn renew(&self, id: i64, ttl_secs: i64, now: Instant) {
        let deadline = now + Duration::from_secs(ttl_secs.max(0) as u64);
        self.with(|d| d.insert(id, deadline));
    }

    /// Time left on `id`, starting its countdown now if this leader has not seen it yet.
    pub fn remaining(&self, id: i64, ttl_secs: i64, now: Instant) -> Duration {
        self.with(|d| {
            let deadline = *d.entry(id).or_insert_with(|| now + Duration::from_secs(ttl_secs.max(0) as u64));
            deadline.saturating_duration_since(now)
        })
    }

    /// Reconciles with the leases that exist (`live`: id and granted TTL) and returns those
    /// whose deadline has passed. Leases not seen before start their countdown now; countdowns
    /// of leases that no longer exist are dropped.
    pub fn expired(&self, live: &[(i64, i64)], now: Instant) -> Vec<i64> {
        self.with(|d| {
            let ids: std::collections::HashSet<i64> = live.iter().map(|(id, _)| *id).collect();
            d.retain(|id, _| ids.contains(id));
            let mut out = Vec::new();
            for (id, ttl) in live {
                let deadline = *d.entry(*id).or_insert_with(|| now + Duration::from_secs((*ttl).max(0) as u64));
                if deadline <= now {
                    out.push(*id);
                }
            }
            out.sort_unstable();
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdown_starts_on_first_sight_and_renews() {
        let l = Lessor::new();
        let t0 = Instant::now();
        assert!(l.expired(&[(1, 5), (2, 1)], t0).is_empty());
        assert_eq!(l.expired(&[(1, 5), (2, 1)], t0 + Duration::from_secs(2)), vec![2]);
        l.renew(1, 5, t0 + Duration::from_secs(4));
        assert!(l.expired(&[(1, 5)], t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(l.expired(&[(1, 5)], t0 + Duration::from_secs(10)), vec![1]);
        assert_eq!(l.remaining(1, 5, t0 + Duration::from_secs(6)), Duration::from_secs(3));
    }

    #[test]
    fn reset_extends_every_lease() {
        let l = Lessor::new();
        let t0 = Instant::now();
        l.expired(&[(1, 2)], t0);
        l.reset();
        // A new leader at t0+1.5s gives the lease a full TTL again.
        assert!(l.expired(&[(1, 2)], t0 + Duration::from_millis(1500)).is_empty());
        assert!(l.expired(&[(1, 2)], t0 + Duration::from_millis(3000)).is_empty());
        assert_eq!(l.expired(&[(1, 2)], t0 + Duration::from_millis(3600)), vec![1]);
    }

    #[test]
    fn vanished_leases_are_forgotten() {
        let l = Lessor::new();
        let t0 = Instant::now();
        l.expired(&[(1, 1)], t0);
        assert!(l.expired(&[], t0 + Duration::from_secs(5)).is_empty());
        // Seen again later (a re-grant with the same id): a fresh countdown.
        assert!(l.expired(&[(1, 1)], t0 + Duration::from_secs(5)).is_empty());
    }
}
