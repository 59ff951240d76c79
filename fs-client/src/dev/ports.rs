//! Free-port selection on 127.0.0.1.
//!
//! A port is "picked" by binding it (port 0 lets the kernel choose). The allocator keeps every
//! listener open until [`PortAllocator::release`], so one cluster never gets the same port twice;
//! after release, the servers bind them. Another process could take a port in between — an
//! accepted race for a development tool.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use super::DevError;

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
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| DevError::io("bind a free port on 127.0.0.1", e))?;
        let port = listener.local_addr().map_err(|e| DevError::io("read a bound port", e))?.port();
        self.held.push(listener);
        Ok(port)
    }

    /// Closes every held listener so servers can bind the ports.
    pub fn release(self) {
        drop(self.held);
    }
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
    fn picked_ports_are_distinct_and_bindable() {
        let ports = pick_free_ports(9).expect("pick");
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 9);
        for port in ports {
            assert_ne!(port, 0);
            TcpListener::bind(("127.0.0.1", port)).expect("released port is bindable");
        }
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
