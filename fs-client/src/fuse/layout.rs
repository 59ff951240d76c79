//! Offset arithmetic of the data path: which chunk holds which file bytes, and how a write
//! buffer's extents merge and split at chunk boundaries. Pure functions, tested without I/O.

use std::collections::BTreeMap;

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
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Extents that overlap or touch [offset, end) merge into one.
        let first = self.extents.range(..=offset).next_back().filter(|(o, d)| *o + d.len() as u64 >= offset);
        let start = first.map_or(offset, |(o, _)| *o);
        let touched: Vec<u64> = self.extents.range(start..=end).map(|(o, _)| *o).collect();
        let mut merged_start = offset;
        let mut merged_end = end;
        for o in &touched {
            let len = self.extents[o].len() as u64;
            merged_start = merged_start.min(*o);
            merged_end = merged_end.max(o + len);
        }
        let mut merged = vec![0u8; (merged_end - merged_start) as usize];
        for o in touched {
            if let Some(old) = self.extents.remove(&o) {
                self.bytes -= old.len() as u64;
                let at = (o - merged_start) as usize;
                merged[at..at + old.len()].copy_from_slice(&old);
            }
        }
        let at = (offset - merged_start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len() as u64;
        self.extents.insert(merged_start, merged);
    }

    /// Takes everything, split into per-chunk pieces: chunk index → (offset in chunk, bytes).
    pub fn take_by_chunk(&mut self, chunk_size: u64) -> BTreeMap<u64, Vec<(u64, Vec<u8>)>> {
        let mut out: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (offset, data) in std::mem::take(&mut self.extents) {
            for span in split_range(offset, data.len() as u64, chunk_size) {
                let from = span.offset_in_range as usize;
                let piece = data[from..from + span.len as usize].to_vec();
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

    #[test]
    fn take_by_chunk_splits_at_boundaries() {
        let mut b = WriteBuffer::default();
        b.write(95, &[7u8; 10]);
        b.write(250, &[9u8; 5]);
        let pieces = b.take_by_chunk(100);
        assert!(b.is_empty());
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[&0], vec![(95, vec![7u8; 5])]);
        assert_eq!(pieces[&1], vec![(0, vec![7u8; 5])]);
        assert_eq!(pieces[&2], vec![(50, vec![9u8; 5])]);
    }
}
