//! Free-port selection on 127.0.0.1.
//!
//! A port is "picked" by binding it. The allocator keeps every listener open until
//! [`PortAllocator::release`], so one cluster never gets the same port twice; after release, the
//! servers bind them. Another process could take a port in between — an accepted race for a
//! development tool, made rare by where ports are drawn from: random ports *below* the kernel's
//! ephemeral range (`ip_local_port_range`), because the kernel hands ephemeral ports to every
//! outgoing connection (clients, Raft peers, other tests) and a released ephemeral port is soon
//! reused as some connection's source port. Only if no such port can be bound does the kernel
//! pick one (port 0). Within one process (parallel tests starting clusters at once) the race
//! is closed: a port handed out is not handed out again for `DEV_PORT_REUSE_AFTER`, while its
//! server may still be starting.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Instant;

use rand::Rng;

use super::DevError;
use crate::limits::{DEV_PORT_MIN, DEV_PORT_PICK_ATTEMPTS, DEV_PORT_REUSE_AFTER};

/// Ports this process handed out, and when.
static HANDED_OUT: Mutex<Option<HashMap<u16, Instant>>> = Mutex::new(None);

/// Records `port` as handed out; false if it was handed out within `DEV_PORT_REUSE_AFTER`.
fn hand_out(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let recent = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    recent.retain(|_, at| now.duration_since(*at) < DEV_PORT_REUSE_AFTER);
    if recent.contains_key(&port) {
        return false;
    }
    recent.insert(port, now);
    true
}

/// Hands out distinct free ports, holding each bound until released.
#[derive(Debug, Default)]
pub struct PortAllocator {
    held: Vec<TcpListener>,
}

impl PortAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A free port: `preferred` if it can be bound now, else one the kernel picks.
    pub fn reserve(&mut self, preferred: Option<u16>) -> Result<u16, DevError> {
        if let Some(port) = preferred.filter(|&p| p != 0) {
            if let Ok(listener) = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
                self.held.push(listener);
                return Ok(port);
            }
        }
        let low = ephemeral_port_low();
        if low > DEV_PORT_MIN {
            let mut rng = rand::thread_rng();
            for _ in 0..DEV_PORT_PICK_ATTEMPTS {
                let port = rng.gen_range(DEV_PORT_MIN..low);
                if let Ok(listener) = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
                    if hand_out(port) {
                        self.held.push(listener);
                        return Ok(port);
                    }
                }
            }
        }
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| DevError::io("bind a free port on 127.0.0.1", e))?;
        let port = listener.local_addr().map_err(|e| DevError::io("read a bound port", e))?.port();
        hand_out(port);
        self.held.push(listener);
        Ok(port)
    }

    /// Closes every held listener so servers can bind the ports.
    pub fn release(self) {
        drop(self.held);
    }
}

/// The first port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_port_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` distinct free ports on 127.0.0.1 (released before returning).
pub fn pick_free_ports(n: usize) -> Result<Vec<u16>, DevError> {
    let mut allocator = PortAllocator::new();
    let ports = (0..n).map(|_| allocator.reserve(None)).collect::<Result<Vec<_>, _>>()?;
    allocator.release();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn picked_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports = pick_free_ports(9).expect("pick");
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 9);
        let low = ephemeral_port_low();
        for port in ports {
            assert!((DEV_PORT_MIN..low).contains(&port), "{port}");
        }
    }

    #[test]
    fn released_ports_are_not_handed_out_again() {
        // Two clusters picking one after the other, the first not yet bound: no port twice.
        let first: HashSet<u16> = pick_free_ports(200).expect("pick").into_iter().collect();
        let second: HashSet<u16> = pick_free_ports(200).expect("pick").into_iter().collect();
        assert_eq!((first.len(), second.len()), (200, 200));
        assert!(first.is_disjoint(&second), "{:?}", first.intersection(&second).collect::<Vec<_>>());
    }

    #[test]
    fn preferred_port_is_kept_when_free_and_replaced_when_busy() {
        let port = pick_free_ports(1).expect("pick")[0];
        let mut allocator = PortAllocator::new();
        assert_eq!(allocator.reserve(Some(port)).expect("reserve"), port);
        // The allocator itself now holds `port`, so asking again must yield another one.
        let other = allocator.reserve(Some(port)).expect("reserve");
        assert_ne!(other, port);
        allocator.release();
    }
}
