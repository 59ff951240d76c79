//! Where a chunk's replicas go: a pure function of the registry view.
//!
//! Rules, in order: distinct servers; never a server that already holds (or held and failed) a
//! replica; only servers with room for a whole chunk; spread over zones, then racks (when
//! servers are labelled) — a server in a zone (rack) no replica uses yet comes first; among
//! equals, the most free space first, then the lowest id (deterministic for tests).

use std::collections::HashSet;

use super::registry::ServerEntry;
use crate::namespace::{ChunkserverId, Replica};

/// Chooses up to `want` servers for a chunk of `chunk_size_bytes`. `holding` are the live
/// servers that keep their replica (their labels count as used); `exclude` are servers never to
/// choose. Answers fewer than `want` when fewer servers qualify.
pub fn place(
    servers: &[ServerEntry],
    holding: &[ChunkserverId],
    exclude: &[ChunkserverId],
    want: usize,
    chunk_size_bytes: u64,
) -> Vec<Replica> {
    let mut zones: HashSet<&str> = HashSet::new();
    let mut racks: HashSet<(&str, &str)> = HashSet::new();
    for s in servers.iter().filter(|s| holding.contains(&s.server())) {
        zones.insert(&s.zone);
        racks.insert((&s.zone, &s.rack));
    }
    let mut candidates: Vec<&ServerEntry> = servers
        .iter()
        .filter(|s| {
            !holding.contains(&s.server()) && !exclude.contains(&s.server()) && s.free_bytes >= chunk_size_bytes
        })
        .collect();
    candidates.sort_by(|a, b| b.free_bytes.cmp(&a.free_bytes).then(a.id.cmp(&b.id)));
    let mut chosen = Vec::new();
    while chosen.len() < want && !candidates.is_empty() {
        let score = |s: &ServerEntry| {
            let new_zone = !s.zone.is_empty() && !zones.contains(s.zone.as_str());
            let new_rack = !s.rack.is_empty() && !racks.contains(&(s.zone.as_str(), s.rack.as_str()));
            (new_zone, new_rack)
        };
        // The first candidate with the best score: candidates are in free-space order.
        let mut best = 0;
        for (i, s) in candidates.iter().enumerate() {
            if score(s) > score(candidates[best]) {
                best = i;
            }
        }
        let s = candidates.remove(best);
        zones.insert(&s.zone);
        racks.insert((&s.zone, &s.rack));
        chosen.push(Replica { server: s.server(), addr: s.addr.clone() });
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB64: u64 = 64 << 20;

    fn server(id: u64, free_gib: u64, zone: &str, rack: &str) -> ServerEntry {
        ServerEntry {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            capacity_bytes: 100 << 30,
            free_bytes: free_gib << 30,
            rack: rack.into(),
            zone: zone.into(),
        }
    }

    fn ids(replicas: &[Replica]) -> Vec<u64> {
        replicas.iter().map(|r| r.server.0).collect()
    }

    #[test]
    fn most_free_first_and_distinct() {
        let servers = [server(1, 5, "", ""), server(2, 50, "", ""), server(3, 20, "", ""), server(4, 20, "", "")];
        assert_eq!(ids(&place(&servers, &[], &[], 3, MIB64)), vec![2, 3, 4]);
        assert_eq!(ids(&place(&servers, &[], &[], 9, MIB64)), vec![2, 3, 4, 1], "no server twice");
        assert_eq!(ids(&place(&servers, &[ChunkserverId(2)], &[ChunkserverId(3)], 2, MIB64)), vec![4, 1]);
    }

    #[test]
    fn full_servers_are_skipped() {
        let mut servers = vec![server(1, 5, "", ""), server(2, 50, "", "")];
        servers[1].free_bytes = MIB64 - 1;
        assert_eq!(ids(&place(&servers, &[], &[], 3, MIB64)), vec![1]);
        assert!(place(&[], &[], &[], 3, MIB64).is_empty());
    }

    #[test]
    fn spreads_over_zones_then_racks() {
        let servers = [
            server(1, 90, "z1", "r1"),
            server(2, 80, "z1", "r1"),
            server(3, 70, "z1", "r2"),
            server(4, 10, "z2", "r3"),
        ];
        // z1 (most free), then z2 (new zone), then rack r2 of z1 (new rack) before r1's second.
        assert_eq!(ids(&place(&servers, &[], &[], 3, MIB64)), vec![1, 4, 3]);
        // Healing: the holder's zone and rack count as used.
        assert_eq!(ids(&place(&servers, &[ChunkserverId(4)], &[], 1, MIB64)), vec![1]);
        assert_eq!(ids(&place(&servers, &[ChunkserverId(1), ChunkserverId(4)], &[], 1, MIB64)), vec![3]);
    }
}
