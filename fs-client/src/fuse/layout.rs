//! Offset arithmetic of the data path: which chunk holds which file bytes, and how a write
//! buffer's extents merge and split at chunk boundaries. Pure functions, tested without I/O.

use std::collections::BTreeMap;

use bytes::Bytes;

/// One piece of a file byte range that falls inside a single chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Chunk index in the file.
    pub index: u64,
    /// Offset of the piece inside the chunk.
    pub offset_in_chunk: u64,
    /// Length of the piece.
    pub len: u64,
    /// Offset of the piece from the start of the range.
    pub offset_in_range: u64,
}

/// Splits `[offset, offset + len)` at chunk boundaries.
pub fn split_range(offset: u64, len: u64, chunk_size: u64) -> Vec<ChunkSpan> {
    let mut spans = Vec::new();
    if chunk_size == 0 {
        return spans;
    }
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let index = at / chunk_size;
        let offset_in_chunk = at % chunk_size;
        let piece = (chunk_size - offset_in_chunk).min(end - at);
        spans.push(ChunkSpan { index, offset_in_chunk, len: piece, offset_in_range: at - offset });
        at += piece;
    }
    spans
}

/// Buffered writes of one file: non-overlapping extents keyed by file offset. A later write
/// replaces the bytes it covers; touching extents merge so flushes stream large pieces.
#[derive(Debug, Default)]
pub struct WriteBuffer {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

impl WriteBuffer {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes buffered.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Offset of the first buffered byte (0 when empty).
    pub fn start(&self) -> u64 {
        self.extents.keys().next().copied().unwrap_or(0)
    }

    /// End offset of the last buffered byte (0 when empty).
    pub fn end(&self) -> u64 {
        self.extents.iter().next_back().map_or(0, |(o, d)| o + d.len() as u64)
    }

    /// Adds `data` at `offset`, overwriting older buffered bytes in that range.
    ///
    /// The extent that `data` starts in (or touches) is extended in place, so a sequential
    /// writer's appends cost a copy of the new bytes only, not of the whole extent again.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        let first = self.extents.range(..=offset).next_back().filter(|(o, d)| *o + d.len() as u64 >= offset);
        let (merged_start, mut merged) = match first.map(|(o, _)| *o) {
            Some(o) => (o, self.extents.remove(&o).unwrap_or_default()),
            None => (offset, Vec::with_capacity(data.len())),
        };
        self.bytes -= merged.len() as u64;
        // `merged` reaches `offset` (it touches or contains it): overwrite what it holds of
        // `data`'s range, append the rest.
        let at = (offset - merged_start) as usize;
        let overlap = (merged.len() - at).min(data.len());
        merged[at..at + overlap].copy_from_slice(&data[..overlap]);
        merged.extend_from_slice(&data[overlap..]);
        // Later extents that `data` overlaps or touches: their bytes past `end` are kept.
        let later: Vec<u64> = self.extents.range(offset..=end).map(|(o, _)| *o).collect();
        for o in later {
            if let Some(old) = self.extents.remove(&o) {
                self.bytes -= old.len() as u64;
                let merged_end = merged_start + merged.len() as u64;
                let old_end = o + old.len() as u64;
                if old_end > merged_end {
                    merged.extend_from_slice(&old[(merged_end - o) as usize..]);
                }
            }
        }
        self.bytes += merged.len() as u64;
        self.extents.insert(merged_start, merged);
    }

    /// Takes everything, split into per-chunk pieces: chunk index → (offset in chunk, bytes).
    /// The pieces share the extents' memory.
    pub fn take_by_chunk(&mut self, chunk_size: u64) -> BTreeMap<u64, Vec<(u64, Bytes)>> {
        let mut out: BTreeMap<u64, Vec<(u64, Bytes)>> = BTreeMap::new();
        for (offset, data) in std::mem::take(&mut self.extents) {
            let data = Bytes::from(data);
            for span in split_range(offset, data.len() as u64, chunk_size) {
                let from = span.offset_in_range as usize;
                let piece = data.slice(from..from + span.len as usize);
                out.entry(span.index).or_default().push((span.offset_in_chunk, piece));
            }
        }
        self.bytes = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_inside_and_across_chunks() {
        assert_eq!(
            split_range(10, 20, 100),
            [ChunkSpan { index: 0, offset_in_chunk: 10, len: 20, offset_in_range: 0 }]
        );
        assert_eq!(
            split_range(90, 220, 100),
            [
                ChunkSpan { index: 0, offset_in_chunk: 90, len: 10, offset_in_range: 0 },
                ChunkSpan { index: 1, offset_in_chunk: 0, len: 100, offset_in_range: 10 },
                ChunkSpan { index: 2, offset_in_chunk: 0, len: 100, offset_in_range: 110 },
                ChunkSpan { index: 3, offset_in_chunk: 0, len: 10, offset_in_range: 210 },
            ]
        );
        assert!(split_range(5, 0, 100).is_empty());
        assert_eq!(split_range(200, 100, 100).len(), 1);
        assert!(split_range(0, 10, 0).is_empty());
    }

    #[test]
    fn buffer_merges_overwrites_and_touching_writes() {
        let mut b = WriteBuffer::default();
        b.write(0, b"hello");
        b.write(5, b" world");
        assert_eq!(b.extents.len(), 1);
        assert_eq!(b.bytes(), 11);
        b.write(20, b"x");
        assert_eq!(b.extents.len(), 2);
        b.write(3, b"LO W");
        assert_eq!(b.extents[&0], b"helLO World");
        b.write(8, b"0123456789abcdef");
        assert_eq!(b.extents.len(), 1);
        assert_eq!(b.end(), 24);
        assert_eq!(b.start(), 0);
        assert_eq!(b.bytes(), 24);
        assert_eq!(b.extents[&0], b"helLO Wo0123456789abcdef");
    }

    /// Random overlapping writes against a flat model: same bytes, same byte count, extents
    /// neither overlapping nor touching.
    #[test]
    fn buffer_matches_a_flat_model_under_random_writes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..200u64 {
            let (mut b, mut model) = (WriteBuffer::default(), vec![None::<u8>; 256]);
            for i in 0..12u64 {
                let (offset, len) = (next(200), 1 + next(56));
                let data: Vec<u8> = (0..len).map(|k| (round + i * 7 + k) as u8).collect();
                b.write(offset, &data);
                for (k, &byte) in data.iter().enumerate() {
                    model[offset as usize + k] = Some(byte);
                }
                let mut previous_end = None;
                for (&o, d) in &b.extents {
                    assert!(!d.is_empty());
                    assert!(previous_end.is_none_or(|e| e < o), "extents overlap or touch at {o}");
                    previous_end = Some(o + d.len() as u64);
                    for (k, &byte) in d.iter().enumerate() {
                        assert_eq!(
                            Some(byte),
                            model[o as usize + k],
                            "round {round} write {i} byte {}",
                            o as usize + k
                        );
                    }
                }
                assert_eq!(b.bytes(), model.iter().filter(|m| m.is_some()).count() as u64);
            }
        }
    }

    #[test]
    fn take_by_chunk_splits_at_boundaries() {
        let mut b = WriteBuffer::default();
        b.write(95, &[7u8; 10]);
        b.write(250, &[9u8; 5]);
        let pieces = b.take_by_chunk(100);
        assert!(b.is_empty());
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[&0], vec![(95, Bytes::from(vec![7u8; 5]))]);
        assert_eq!(pieces[&1], vec![(0, Bytes::from(vec![7u8; 5]))]);
        assert_eq!(pieces[&2], vec![(50, Bytes::from(vec![9u8; 5]))]);
    }
}
