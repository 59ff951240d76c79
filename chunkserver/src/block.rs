//! Block math and the stored block format.
//!
//! A chunk is cut into fixed-size blocks (a power of two that divides the chunk size). Block
//! `i` covers bytes `[i * block_size, (i + 1) * block_size)` of the chunk. A stored block value
//! is `crc32 (4 bytes, little-endian) || data`, where `data` is a prefix of the block: bytes of
//! the block past the end of `data` (and blocks that are not stored at all) read as zeros. So a
//! block is never longer than the bytes ever written into it, and holes cost nothing.
//!
//! The checksum is CRC-32/IEEE as computed by the crc32fast crate (the project's mandated CRC
//! crate; DESIGN.md says CRC32C, which crc32fast does not compute).

use crate::limits::{BLOCK_SIZE_MAX_BYTES, BLOCK_SIZE_MIN_BYTES, CHUNK_SIZE_DEFAULT_BYTES, CHUNK_SIZE_LARGE_BYTES};

/// Bytes of the checksum in front of a stored block's data.
pub const BLOCK_CRC_BYTES: usize = 4;

/// CRC-32/IEEE of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The sizes a chunk was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub chunk_size_bytes: u64,
    pub block_size_bytes: u32,
}

/// Why a geometry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("chunk size {0} is neither 64 MiB nor 128 MiB")]
    ChunkSize(u64),
    #[error("block size {0} is not a power of two between {BLOCK_SIZE_MIN_BYTES} and {BLOCK_SIZE_MAX_BYTES}")]
    BlockSize(u32),
}

impl Geometry {
    pub fn new(chunk_size_bytes: u64, block_size_bytes: u32) -> Result<Geometry, GeometryError> {
        if chunk_size_bytes != CHUNK_SIZE_DEFAULT_BYTES && chunk_size_bytes != CHUNK_SIZE_LARGE_BYTES {
            return Err(GeometryError::ChunkSize(chunk_size_bytes));
        }
        validate_block_size(block_size_bytes)?;
        Ok(Geometry { chunk_size_bytes, block_size_bytes })
    }

    /// Blocks in a full chunk.
    pub fn blocks_per_chunk(&self) -> u32 {
        (self.chunk_size_bytes / u64::from(self.block_size_bytes)) as u32
    }

    /// The block holding byte `offset`.
    pub fn block_of(&self, offset: u64) -> u32 {
        (offset / u64::from(self.block_size_bytes)) as u32
    }

    /// First byte of block `index`.
    pub fn block_start(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.block_size_bytes)
    }

    /// Blocks needed to hold `length` bytes (the index one past the last).
    pub fn blocks_for_length(&self, length: u64) -> u32 {
        length.div_ceil(u64::from(self.block_size_bytes)) as u32
    }

    /// Whether `[offset, offset + len)` lies within the chunk.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.chunk_size_bytes)
    }

    /// The pieces of `[offset, offset + len)`, one per block it touches, in order. The caller
    /// checks [`Geometry::contains`] first.
    pub fn spans(&self, offset: u64, len: u64) -> Spans {
        Spans { geometry: *self, offset, end: offset + len, start: offset }
    }
}

pub fn validate_block_size(block_size_bytes: u32) -> Result<(), GeometryError> {
    if !block_size_bytes.is_power_of_two() || !(BLOCK_SIZE_MIN_BYTES..=BLOCK_SIZE_MAX_BYTES).contains(&block_size_bytes)
    {
        return Err(GeometryError::BlockSize(block_size_bytes));
    }
    Ok(())
}

/// The part of one block that a byte range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub index: u32,
    /// First covered byte, relative to the block.
    pub start_in_block: usize,
    /// Covered bytes.
    pub len: usize,
    /// Where the covered bytes sit in the caller's buffer (relative to the range's offset).
    pub start_in_range: usize,
}

impl BlockSpan {
    pub fn end_in_block(&self) -> usize {
        self.start_in_block + self.len
    }

    /// Whether the span covers its whole block, so the block can be written without reading
    /// it first.
    pub fn is_whole_block(&self, geometry: &Geometry) -> bool {
        self.start_in_block == 0 && self.len == geometry.block_size_bytes as usize
    }
}

/// Iterator returned by [`Geometry::spans`].
#[derive(Debug, Clone)]
pub struct Spans {
    geometry: Geometry,
    offset: u64,
    end: u64,
    start: u64,
}

impl Iterator for Spans {
    type Item = BlockSpan;

    fn next(&mut self) -> Option<BlockSpan> {
        if self.offset >= self.end {
            return None;
        }
        let index = self.geometry.block_of(self.offset);
        let block_start = self.geometry.block_start(index);
        let block_end = block_start + u64::from(self.geometry.block_size_bytes);
        let span_end = block_end.min(self.end);
        let span = BlockSpan {
            index,
            start_in_block: (self.offset - block_start) as usize,
            len: (span_end - self.offset) as usize,
            start_in_range: (self.offset - self.start) as usize,
        };
        self.offset = span_end;
        Some(span)
    }
}

/// Encodes a stored block value: checksum, then data.
pub fn encode_block(data: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(BLOCK_CRC_BYTES + data.len());
    value.extend_from_slice(&crc32(data).to_le_bytes());
    value.extend_from_slice(data);
    value
}

/// Why a stored block value failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockCheckError {
    #[error("stored value of {len} bytes is too short to hold a checksum")]
    TooShort { len: usize },
    #[error("stored block of {len} bytes is longer than the block size {block_size}")]
    TooLong { len: usize, block_size: u32 },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Mismatch { stored: u32, computed: u32 },
}

/// Verifies a stored block value and returns its data.
pub fn decode_block(value: &[u8], block_size_bytes: u32) -> Result<&[u8], BlockCheckError> {
    decode_block_with_crc(value, block_size_bytes).map(|(_, data)| data)
}

/// [`decode_block`], also returning the verified CRC-32 of the data.
pub fn decode_block_with_crc(value: &[u8], block_size_bytes: u32) -> Result<(u32, &[u8]), BlockCheckError> {
    if value.len() < BLOCK_CRC_BYTES {
        return Err(BlockCheckError::TooShort { len: value.len() });
    }
    let (crc, data) = value.split_at(BLOCK_CRC_BYTES);
    if data.len() > block_size_bytes as usize {
        return Err(BlockCheckError::TooLong { len: data.len(), block_size: block_size_bytes });
    }
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32(data);
    if stored != computed {
        return Err(BlockCheckError::Mismatch { stored, computed });
    }
    Ok((stored, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{KIB, MIB};

    fn geometry(block: u32) -> Geometry {
        Geometry::new(64 * MIB, block).expect("geometry")
    }

    #[test]
    fn geometry_validation() {
        assert!(Geometry::new(64 * MIB, 64 * KIB as u32).is_ok());
        assert!(Geometry::new(128 * MIB, 4 * MIB as u32).is_ok());
        assert_eq!(Geometry::new(32 * MIB, 64 * KIB as u32), Err(GeometryError::ChunkSize(32 * MIB)));
        assert_eq!(Geometry::new(64 * MIB, 3000), Err(GeometryError::BlockSize(3000)));
        assert_eq!(Geometry::new(64 * MIB, 1024), Err(GeometryError::BlockSize(1024)));
        assert_eq!(Geometry::new(64 * MIB, 8 * MIB as u32), Err(GeometryError::BlockSize(8 * MIB as u32)));
        assert_eq!(geometry(64 * KIB as u32).blocks_per_chunk(), 1024);
    }

    #[test]
    fn spans_inside_one_block() {
        let g = geometry(4096);
        let spans: Vec<_> = g.spans(100, 200).collect();
        assert_eq!(spans, [BlockSpan { index: 0, start_in_block: 100, len: 200, start_in_range: 0 }]);
        assert!(!spans[0].is_whole_block(&g));
    }

    #[test]
    fn spans_across_blocks() {
        let g = geometry(4096);
        let spans: Vec<_> = g.spans(4000, 4096 + 200).collect();
        assert_eq!(
            spans,
            [
                BlockSpan { index: 0, start_in_block: 4000, len: 96, start_in_range: 0 },
                BlockSpan { index: 1, start_in_block: 0, len: 4096, start_in_range: 96 },
                BlockSpan { index: 2, start_in_block: 0, len: 104, start_in_range: 4192 },
            ]
        );
        assert!(spans[1].is_whole_block(&g));
        assert_eq!(spans.iter().map(|s| s.len).sum::<usize>(), 4096 + 200);
    }

    #[test]
    fn spans_at_chunk_boundaries() {
        let g = geometry(64 * KIB as u32);
        let last = g.blocks_per_chunk() - 1;
        // The very last byte of the chunk.
        let spans: Vec<_> = g.spans(64 * MIB - 1, 1).collect();
        assert_eq!(spans, [BlockSpan { index: last, start_in_block: 64 * 1024 - 1, len: 1, start_in_range: 0 }]);
        // The whole chunk: every block, each whole.
        let spans: Vec<_> = g.spans(0, 64 * MIB).collect();
        assert_eq!(spans.len(), g.blocks_per_chunk() as usize);
        assert!(spans.iter().all(|s| s.is_whole_block(&g)));
        assert_eq!(spans.last().map(|s| s.index), Some(last));
        // Ranges ending exactly at, and past, the chunk's end.
        assert!(g.contains(64 * MIB - 10, 10));
        assert!(!g.contains(64 * MIB - 10, 11));
        assert!(!g.contains(64 * MIB, 1));
        assert!(g.contains(64 * MIB, 0));
        assert!(!g.contains(u64::MAX, 2));
        // A block-aligned range.
        let spans: Vec<_> = g.spans(g.block_start(3), 64 * 1024).collect();
        assert_eq!(spans, [BlockSpan { index: 3, start_in_block: 0, len: 64 * 1024, start_in_range: 0 }]);
        assert_eq!(g.spans(10, 0).count(), 0);
    }

    #[test]
    fn blocks_for_length_rounds_up() {
        let g = geometry(4096);
        assert_eq!(g.blocks_for_length(0), 0);
        assert_eq!(g.blocks_for_length(1), 1);
        assert_eq!(g.blocks_for_length(4096), 1);
        assert_eq!(g.blocks_for_length(4097), 2);
        assert_eq!(g.blocks_for_length(64 * MIB), g.blocks_per_chunk());
    }

    #[test]
    fn stored_block_round_trip_and_crc_detection() {
        let data = b"hello, cairn".to_vec();
        let mut value = encode_block(&data);
        assert_eq!(decode_block(&value, 4096), Ok(&data[..]));
        // Flip one data bit: detected.
        value[BLOCK_CRC_BYTES + 3] ^= 0x10;
        assert!(matches!(decode_block(&value, 4096), Err(BlockCheckError::Mismatch { .. })));
        // Flip a checksum bit: detected.
        let mut value = encode_block(&data);
        value[0] ^= 1;
        assert!(matches!(decode_block(&value, 4096), Err(BlockCheckError::Mismatch { .. })));
        assert_eq!(decode_block(&[1, 2], 4096), Err(BlockCheckError::TooShort { len: 2 }));
        assert!(matches!(decode_block(&encode_block(&[0; 5000]), 4096), Err(BlockCheckError::TooLong { .. })));
        // An empty block is valid.
        assert_eq!(decode_block(&encode_block(&[]), 4096), Ok(&[][..]));
    }
}
