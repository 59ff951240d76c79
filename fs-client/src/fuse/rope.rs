//! Read data kept in the buffers it arrived in.
//!
//! A chunk read arrives as 1 MiB messages, each decoded without a copy out of the receive
//! buffer (`ReadChunkResponse.data` is `Bytes`). Copying them into one contiguous buffer, zeroed
//! first, cost about a sixth of the mount's CPU in a cold sequential read (perf, 2026-11-27). A
//! [`Rope`] keeps the messages as they are and zeros as a shared static page, and a FUSE reply
//! is a slice of one message unless it straddles two, the only case that copies.

use std::ops::Range;

use bytes::Bytes;

/// Zeros for holes and for bytes past a chunk's end, shared by every rope.
static ZEROS: [u8; ZEROS_BYTES] = [0; ZEROS_BYTES];
const ZEROS_BYTES: usize = 1024 * 1024;

/// Bytes in order, as a list of shared buffers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rope {
    /// Never holds an empty part.
    parts: Vec<Bytes>,
    /// `ends[i]`: the offset just past `parts[i]`.
    ends: Vec<usize>,
}

impl Rope {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// Appends `bytes` (shared, not copied).
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.ends.push(self.len() + bytes.len());
            self.parts.push(bytes);
        }
    }

    /// Appends `n` zero bytes.
    pub fn push_zeros(&mut self, mut n: usize) {
        while n > 0 {
            let step = n.min(ZEROS_BYTES);
            self.push(Bytes::from_static(&ZEROS[..step]));
            n -= step;
        }
    }

    /// Appends every part of `other`.
    pub fn append(&mut self, other: Rope) {
        for part in other.parts {
            self.push(part);
        }
    }

    /// Cuts the rope to `len` bytes, or pads it with zeros up to `len`.
    pub fn resize_zeros(&mut self, len: usize) {
        let current = self.len();
        if len >= current {
            self.push_zeros(len - current);
            return;
        }
        // The first part that reaches past `len` is the new last one.
        let keep = self.ends.partition_point(|&end| end < len);
        self.parts.truncate(keep + 1);
        self.ends.truncate(keep + 1);
        if let (Some(last), Some(end)) = (self.parts.last_mut(), self.ends.last_mut()) {
            last.truncate(last.len() - (*end - len));
            *end = len;
        }
        if len == 0 {
            self.parts.clear();
            self.ends.clear();
        }
    }

    /// The bytes of `range` (clamped to the rope): shared when one part holds them all, else
    /// copied into a new buffer.
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        let (start, end) = (range.start.min(self.len()), range.end.min(self.len()));
        if start >= end {
            return Bytes::new();
        }
        let first = self.ends.partition_point(|&e| e <= start);
        let part_start = |i: usize| if i == 0 { 0 } else { self.ends[i - 1] };
        if end <= self.ends[first] {
            let at = part_start(first);
            return self.parts[first].slice(start - at..end - at);
        }
        let mut out = Vec::with_capacity(end - start);
        for i in first..self.parts.len() {
            let at = part_start(i);
            if at >= end {
                break;
            }
            let (from, to) = (start.max(at) - at, end.min(self.ends[i]) - at);
            out.extend_from_slice(&self.parts[i][from..to]);
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rope of parts with the given sizes, byte `i` of the whole being `i % 251`.
    fn rope(sizes: &[usize]) -> (Rope, Vec<u8>) {
        let total: usize = sizes.iter().sum();
        let flat: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut r = Rope::new();
        let mut at = 0;
        for &n in sizes {
            r.push(Bytes::copy_from_slice(&flat[at..at + n]));
            at += n;
        }
        (r, flat)
    }

    #[test]
    fn slices_match_the_flat_bytes_at_every_boundary() {
        let (r, flat) = rope(&[5, 1, 0, 7, 3]);
        assert_eq!(r.len(), 16);
        for start in 0..=16 {
            for end in start..=18 {
                let got = r.slice(start..end);
                assert_eq!(&got[..], &flat[start..end.min(16)], "{start}..{end}");
            }
        }
    }

    #[test]
    fn a_slice_inside_one_part_shares_its_memory() {
        let (r, _) = rope(&[8, 8]);
        let whole = r.parts[1].clone();
        let got = r.slice(9..15);
        assert_eq!(got.as_ptr(), whole[1..].as_ptr());
    }

    #[test]
    fn resizing_cuts_inside_a_part_and_pads_with_zeros() {
        let (mut r, flat) = rope(&[4, 4, 4]);
        r.resize_zeros(6);
        assert_eq!(r.len(), 6);
        assert_eq!(&r.slice(0..6)[..], &flat[..6]);
        r.resize_zeros(8);
        assert_eq!(r.len(), 8);
        assert_eq!(&r.slice(0..8)[..], &[0, 1, 2, 3, 4, 5, 0, 0]);
        r.resize_zeros(4);
        assert_eq!(&r.slice(0..10)[..], &flat[..4]);
        r.resize_zeros(0);
        assert_eq!(r.len(), 0);
        assert!(r.parts.is_empty() && r.ends.is_empty());
    }

    #[test]
    fn long_zero_runs_span_several_shared_pages() {
        let mut r = Rope::new();
        r.push(Bytes::from_static(b"ab"));
        r.push_zeros(2 * ZEROS_BYTES + 3);
        r.push(Bytes::from_static(b"cd"));
        assert_eq!(r.len(), 2 * ZEROS_BYTES + 7);
        let tail = r.slice(r.len() - 6..r.len());
        assert_eq!(&tail[..], &[0, 0, 0, 0, b'c', b'd']);
        assert!(r.slice(2..2 * ZEROS_BYTES + 5).iter().all(|&b| b == 0));
    }

    #[test]
    fn appending_keeps_the_order() {
        let (mut a, flat_a) = rope(&[3, 2]);
        let (b, flat_b) = rope(&[4]);
        a.append(b);
        let mut flat = flat_a;
        flat.extend_from_slice(&flat_b);
        assert_eq!(&a.slice(0..a.len())[..], &flat[..]);
    }
}
