//! Engine tests on the in-memory store: block math at chunk boundaries, holes, partial-block
//! overwrites, truncation, checksum detection, versions, space, installation, and a randomized
//! comparison against a flat byte-array model.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::*;
use crate::block::BLOCK_CRC_BYTES;
use crate::limits::{CHUNK_SIZE_LARGE_BYTES, MIB};
use crate::storage::MemoryStore;

const BLOCK: u32 = 4096;

fn engine_with(space: Space) -> (Arc<MemoryStore>, Arc<ChunkEngine>) {
    let store = Arc::new(MemoryStore::new());
    let engine = ChunkEngine::open(store.clone(), Arc::new(space), BLOCK).expect("open");
    (store, Arc::new(engine))
}

fn engine() -> (Arc<MemoryStore>, Arc<ChunkEngine>) {
    engine_with(Space::fixed(u64::MAX / 2, 0, None))
}

fn target(chunk: u64, version: u64) -> WriteTarget {
    WriteTarget { chunk: ChunkId(chunk), version: ChunkVersion(version), create: true, chunk_size_bytes: 0 }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

fn read_all(engine: &ChunkEngine, chunk: u64) -> Vec<u8> {
    let meta = engine.stat(ChunkId(chunk), false).expect("stat").meta;
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < meta.length_bytes {
        let (_, data) = engine.read(ChunkId(chunk), None, offset, MIB).expect("read");
        offset += data.len() as u64;
        out.extend(data);
    }
    out
}

#[test]
fn write_then_read_round_trips_across_blocks() {
    let (_, engine) = engine();
    let data = pattern(3 * BLOCK as usize + 123, 7);
    let meta = engine.write(&target(1, 1), 100, &data).expect("write");
    assert_eq!(meta.length_bytes, 100 + data.len() as u64);
    let (_, back) = engine.read(ChunkId(1), Some(ChunkVersion(1)), 100, data.len() as u64).expect("read");
    assert_eq!(back, data);
    // The first 100 bytes were never written: a hole inside block 0.
    let (_, head) = engine.read(ChunkId(1), None, 0, 100).expect("read");
    assert_eq!(head, vec![0; 100]);
}

#[test]
fn writes_at_the_chunk_boundaries() {
    let (_, engine) = engine();
    let end = CHUNK_SIZE_DEFAULT_BYTES;
    // Last byte of the chunk, and the last block in full.
    engine.write(&target(1, 1), end - 1, b"z").expect("last byte");
    engine.write(&target(1, 1), end - u64::from(BLOCK), &pattern(BLOCK as usize, 3)).expect("last block");
    assert_eq!(engine.stat(ChunkId(1), false).expect("stat").meta.length_bytes, end);
    // One byte past the end, or a range straddling it: refused, nothing changes.
    let before = engine.read(ChunkId(1), None, end - 10, 10).expect("read").1;
    assert!(matches!(engine.write(&target(1, 1), end, b"x"), Err(ChunkError::OutOfRange { .. })));
    assert!(matches!(engine.write(&target(1, 1), end - 1, b"xy"), Err(ChunkError::OutOfRange { .. })));
    assert!(matches!(engine.write(&target(1, 1), u64::MAX, b"xy"), Err(ChunkError::OutOfRange { .. })));
    assert_eq!(engine.read(ChunkId(1), None, end - 10, 10).expect("read").1, before);
    // Reads past the end of the chunk are refused; reads past its length are cut short.
    assert!(matches!(engine.read(ChunkId(1), None, end, 1), Err(ChunkError::OutOfRange { .. })));
    engine.write(&target(2, 1), 0, b"abc").expect("write");
    assert_eq!(engine.read(ChunkId(2), None, 1, 100).expect("read").1, b"bc");
    assert_eq!(engine.read(ChunkId(2), None, 3, 100).expect("read").1, b"");
    assert_eq!(engine.read(ChunkId(2), None, 50, 100).expect("read").1, b"");
    // A 128 MiB chunk accepts offsets beyond 64 MiB.
    let large = WriteTarget { chunk_size_bytes: CHUNK_SIZE_LARGE_BYTES, ..target(3, 1) };
    engine.write(&large, CHUNK_SIZE_LARGE_BYTES - 1, b"q").expect("write large");
    assert!(matches!(
        engine.write(&WriteTarget { chunk_size_bytes: 3 * MIB, ..target(4, 1) }, 0, b"q"),
        Err(ChunkError::Geometry(_))
    ));
}

#[test]
fn holes_read_as_zeros_and_are_not_stored() {
    let (store, engine) = engine();
    engine.write(&target(1, 1), 10 * MIB, b"tail").expect("write");
    let (meta, data) = engine.read(ChunkId(1), None, 10 * MIB - 5, 9).expect("read");
    assert_eq!(meta.length_bytes, 10 * MIB + 4);
    assert_eq!(data, b"\0\0\0\0\0tail");
    let (_, zeros) = engine.read(ChunkId(1), None, 0, MIB).expect("read");
    assert_eq!(zeros, vec![0; MIB as usize]);
    assert_eq!(store.block_indices(ChunkId(1)).expect("indices"), vec![(10 * MIB / u64::from(BLOCK)) as u32]);
}

#[test]
fn partial_block_overwrite_rewrites_only_touched_blocks() {
    let (store, engine) = engine();
    let mut model = pattern(4 * BLOCK as usize, 1);
    engine.write(&target(1, 1), 0, &model).expect("write");
    // Overwrite 100 bytes in the middle of block 1, and a range straddling blocks 2 and 3.
    let patch = pattern(100, 9);
    engine.write(&target(1, 1), u64::from(BLOCK) + 500, &patch).expect("overwrite");
    model[BLOCK as usize + 500..BLOCK as usize + 600].copy_from_slice(&patch);
    let straddle = pattern(300, 5);
    let at = 3 * BLOCK as usize - 150;
    engine.write(&target(1, 1), at as u64, &straddle).expect("overwrite");
    model[at..at + 300].copy_from_slice(&straddle);
    assert_eq!(read_all(&engine, 1), model);
    // A partial write into a block stored shorter (the last, trimmed block) pads with zeros.
    engine.write(&target(2, 1), 0, b"ab").expect("write");
    engine.write(&target(2, 1), 10, b"cd").expect("write");
    assert_eq!(read_all(&engine, 2), b"ab\0\0\0\0\0\0\0\0cd");
    assert_eq!(store.block(ChunkId(2), 0).expect("block").map(|v| v.len()), Some(BLOCK_CRC_BYTES + 12));
}

#[test]
fn truncate_down_and_up() {
    let (store, engine) = engine();
    let data = pattern(5 * BLOCK as usize, 2);
    engine.write(&target(1, 1), 0, &data).expect("write");
    // Down into the middle of block 2: blocks 3 and 4 go, block 2 is trimmed.
    let cut = 2 * u64::from(BLOCK) + 10;
    let meta = engine.truncate(ChunkId(1), ChunkVersion(1), cut).expect("truncate down");
    assert_eq!(meta.length_bytes, cut);
    assert_eq!(store.block_indices(ChunkId(1)).expect("indices"), vec![0, 1, 2]);
    assert_eq!(read_all(&engine, 1), data[..cut as usize]);
    // Up again: the dropped range reads as zeros, not as the old data.
    engine.truncate(ChunkId(1), ChunkVersion(1), 5 * u64::from(BLOCK)).expect("truncate up");
    let mut expected = data[..cut as usize].to_vec();
    expected.resize(5 * BLOCK as usize, 0);
    assert_eq!(read_all(&engine, 1), expected);
    // To a block boundary, and to zero.
    engine.truncate(ChunkId(1), ChunkVersion(1), u64::from(BLOCK)).expect("truncate to boundary");
    assert_eq!(store.block_indices(ChunkId(1)).expect("indices"), vec![0]);
    engine.truncate(ChunkId(1), ChunkVersion(1), 0).expect("truncate to zero");
    assert!(store.block_indices(ChunkId(1)).expect("indices").is_empty());
    assert!(read_all(&engine, 1).is_empty());
    // Beyond the chunk size, or with another version: refused.
    assert!(matches!(
        engine.truncate(ChunkId(1), ChunkVersion(1), CHUNK_SIZE_DEFAULT_BYTES + 1),
        Err(ChunkError::OutOfRange { .. })
    ));
    assert!(matches!(engine.truncate(ChunkId(1), ChunkVersion(2), 0), Err(ChunkError::StaleReplica { .. })));
    assert!(matches!(engine.truncate(ChunkId(9), ChunkVersion(1), 0), Err(ChunkError::NotFound { .. })));
}

#[test]
fn checksum_mismatch_names_chunk_and_block() {
    let (store, engine) = engine();
    engine.write(&target(7, 1), 0, &pattern(3 * BLOCK as usize, 4)).expect("write");
    let mut value = store.block(ChunkId(7), 1).expect("block").expect("stored");
    value[BLOCK_CRC_BYTES + 17] ^= 0xff;
    store.put_raw_block(ChunkId(7), 1, value);
    // Reads of other blocks still work; reads touching block 1 fail naming it.
    assert!(engine.read(ChunkId(7), None, 0, u64::from(BLOCK)).is_ok());
    let err = engine.read(ChunkId(7), None, 0, 3 * u64::from(BLOCK)).expect_err("corrupt");
    assert!(matches!(err, ChunkError::Corrupt { chunk: ChunkId(7), block: 1, .. }), "{err}");
    assert!(err.to_string().contains("block 1"), "{err}");
    // A partial overwrite of the bad block must not launder it into a valid checksum.
    assert!(matches!(
        engine.write(&target(7, 1), u64::from(BLOCK) + 5, b"x"),
        Err(ChunkError::Corrupt { block: 1, .. })
    ));
    assert!(matches!(engine.stat(ChunkId(7), true), Err(ChunkError::Corrupt { block: 1, .. })));
    assert!(engine.mark_corrupt(ChunkId(7)).expect("mark"));
    assert!(!engine.mark_corrupt(ChunkId(7)).expect("mark again"));
    assert!(engine.stat(ChunkId(7), false).expect("stat").meta.corrupt);
    // A whole-block overwrite replaces the bad block.
    engine.write(&target(7, 1), u64::from(BLOCK), &pattern(BLOCK as usize, 8)).expect("rewrite");
    assert!(engine.read(ChunkId(7), None, 0, 3 * u64::from(BLOCK)).is_ok());
}

#[test]
fn versions_guard_every_mutation() {
    let (_, engine) = engine();
    engine.write(&target(1, 5), 0, b"v5").expect("create at 5");
    assert!(matches!(engine.write(&target(1, 4), 0, b"x"), Err(ChunkError::StaleVersion { .. })));
    assert!(matches!(engine.write(&target(1, 6), 0, b"x"), Err(ChunkError::StaleReplica { .. })));
    assert!(matches!(engine.check_write(&target(1, 4)), Err(ChunkError::StaleVersion { .. })));
    assert!(engine.check_write(&target(1, 5)).is_ok());
    // Without `create`, a missing chunk is an error.
    let no_create = WriteTarget { create: false, ..target(2, 1) };
    assert!(matches!(engine.check_write(&no_create), Err(ChunkError::NotFound { .. })));
    assert!(matches!(engine.write(&no_create, 0, b"x"), Err(ChunkError::NotFound { .. })));
    // Reads with a version must match; 0 (None) reads any.
    assert!(matches!(engine.read(ChunkId(1), Some(ChunkVersion(6)), 0, 2), Err(ChunkError::StaleReplica { .. })));
    assert_eq!(engine.read(ChunkId(1), Some(ChunkVersion(5)), 0, 2).expect("read").1, b"v5");
    // Version updates: only from the expected version, upwards; idempotent when retried.
    assert!(matches!(
        engine.update_version(ChunkId(1), ChunkVersion(4), ChunkVersion(6)),
        Err(ChunkError::StaleVersion { .. })
    ));
    assert!(engine.update_version(ChunkId(1), ChunkVersion(5), ChunkVersion(5)).is_err());
    assert_eq!(engine.update_version(ChunkId(1), ChunkVersion(5), ChunkVersion(6)).expect("bump").version.0, 6);
    assert_eq!(engine.update_version(ChunkId(1), ChunkVersion(5), ChunkVersion(6)).expect("retry").version.0, 6);
    assert!(matches!(engine.write(&target(1, 5), 0, b"x"), Err(ChunkError::StaleVersion { .. })));
    engine.write(&target(1, 6), 0, b"V6").expect("write at 6");
    // Deletes refuse only older versions.
    assert!(matches!(engine.delete(ChunkId(1), Some(ChunkVersion(5))), Err(ChunkError::StaleVersion { .. })));
    assert!(engine.delete(ChunkId(1), Some(ChunkVersion(6))).expect("delete"));
    assert!(!engine.delete(ChunkId(1), None).expect("delete again"));
    assert!(matches!(engine.read(ChunkId(1), None, 0, 1), Err(ChunkError::NotFound { .. })));
    assert!(matches!(engine.write(&target(0, 1), 0, b"x"), Err(ChunkError::InvalidArgument(_))));
}

#[test]
fn oversized_messages_are_refused() {
    let (_, engine) = engine();
    let big = vec![1u8; WRITE_MESSAGE_BYTES_MAX + 1];
    assert!(matches!(engine.write(&target(1, 1), 0, &big), Err(ChunkError::TooLarge { .. })));
    assert!(matches!(engine.stat(ChunkId(1), false), Err(ChunkError::NotFound { .. })));
}

#[test]
fn writes_are_refused_when_space_runs_out() {
    let (_, engine) = engine_with(Space::fixed(u64::MAX / 2, 0, Some(10_000)));
    engine.write(&target(1, 1), 0, &[1; 8_000]).expect("fits");
    assert!(matches!(engine.write(&target(1, 1), 8_000, &[1; 3_000]), Err(ChunkError::NoSpace { .. })));
    engine.write(&target(1, 1), 0, &[2; 8_000]).expect("overwrite needs no capacity");
    engine.truncate(ChunkId(1), ChunkVersion(1), 1_000).expect("shrink");
    engine.write(&target(1, 1), 1_000, &[3; 8_000]).expect("space was released");
    let (_, full_disk) = engine_with(Space::fixed(1_000, 900, None));
    assert!(matches!(full_disk.write(&target(1, 1), 0, &[1; 200]), Err(ChunkError::NoSpace { .. })));
    assert!(matches!(full_disk.stat(ChunkId(1), false), Err(ChunkError::NotFound { .. })));
}

#[test]
fn stat_digest_covers_holes_and_matches_blake3_of_contents() {
    let (_, engine) = engine();
    engine.write(&target(1, 1), 3 * u64::from(BLOCK) + 7, b"hello").expect("write");
    let stat = engine.stat(ChunkId(1), true).expect("stat");
    let mut expected = vec![0u8; 3 * BLOCK as usize + 7];
    expected.extend_from_slice(b"hello");
    assert_eq!(stat.blake3, Some(*blake3::hash(&expected).as_bytes()));
    // After truncating up, the digest covers the zeros too.
    engine.truncate(ChunkId(1), ChunkVersion(1), 10 * u64::from(BLOCK) + 1).expect("truncate");
    expected.resize(10 * BLOCK as usize + 1, 0);
    assert_eq!(engine.stat(ChunkId(1), true).expect("stat").blake3, Some(*blake3::hash(&expected).as_bytes()));
}

#[test]
fn list_pages_through_chunks() {
    let (_, engine) = engine();
    for id in 1..=5 {
        engine.write(&target(id, id), 0, b"x").expect("write");
    }
    let (page, more) = engine.list(ChunkId(0), 2).expect("list");
    assert_eq!(page.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(more);
    let (page, more) = engine.list(ChunkId(3), 2).expect("list");
    assert_eq!(page.iter().map(|(id, m)| (id.0, m.version.0)).collect::<Vec<_>>(), vec![(4, 4), (5, 5)]);
    assert!(!more);
}

#[test]
fn install_replaces_a_chunk_atomically() {
    let (store, engine) = engine();
    engine.write(&target(1, 1), 0, &pattern(10_000, 1)).expect("old copy");
    let new = {
        let mut data = pattern(3 * BLOCK as usize + 10, 2);
        data[BLOCK as usize..2 * BLOCK as usize].fill(0);
        data
    };
    let mut installer = engine.begin_install(ChunkId(1), CHUNK_SIZE_DEFAULT_BYTES).expect("begin");
    // Invisible and unwritable while installing.
    assert!(matches!(engine.read(ChunkId(1), None, 0, 1), Err(ChunkError::NotFound { .. })));
    assert!(matches!(engine.write(&target(1, 1), 0, b"x"), Err(ChunkError::Busy { .. })));
    assert!(matches!(engine.begin_install(ChunkId(1), CHUNK_SIZE_DEFAULT_BYTES), Err(ChunkError::Busy { .. })));
    for piece in new.chunks(1000) {
        installer.push(piece).expect("push");
    }
    let meta = installer.finish(ChunkVersion(4)).expect("finish");
    assert_eq!(meta.version, ChunkVersion(4));
    assert_eq!(read_all(&engine, 1), new);
    // The all-zero block was not stored.
    assert_eq!(store.block_indices(ChunkId(1)).expect("indices"), vec![0, 2, 3]);
    assert_eq!(engine.space().stored_bytes(), new.len() as u64);

    // An abandoned install leaves nothing behind.
    let mut installer = engine.begin_install(ChunkId(2), CHUNK_SIZE_DEFAULT_BYTES).expect("begin");
    installer.push(&pattern(3 * BLOCK as usize, 3)).expect("push");
    drop(installer);
    assert!(store.block_indices(ChunkId(2)).expect("indices").is_empty());
    assert_eq!(store.meta(ChunkId(2)).expect("meta"), None);
    assert_eq!(engine.space().stored_bytes(), new.len() as u64);
}

#[test]
fn reopening_removes_interrupted_installs() {
    let store = Arc::new(MemoryStore::new());
    let space = Arc::new(Space::fixed(u64::MAX / 2, 0, None));
    let engine = Arc::new(ChunkEngine::open(store.clone(), space.clone(), BLOCK).expect("open"));
    engine.write(&target(1, 1), 0, b"keep").expect("write");
    let mut installer = engine.begin_install(ChunkId(2), CHUNK_SIZE_DEFAULT_BYTES).expect("begin");
    installer.push(&pattern(2 * BLOCK as usize, 3)).expect("push");
    // Simulate a crash: the installer never runs its cleanup.
    std::mem::forget(installer);
    let engine = ChunkEngine::open(store.clone(), space, BLOCK).expect("reopen");
    assert_eq!(store.meta(ChunkId(2)).expect("meta"), None);
    assert!(store.block_indices(ChunkId(2)).expect("indices").is_empty());
    assert_eq!(engine.space().stored_bytes(), 4);
}

/// Random writes and truncates against a flat model of the chunk. Prints the seed on failure.
#[test]
fn randomized_against_a_model() {
    let seed: u64 = std::env::var("CAIRN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("randomized_against_a_model: CAIRN_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (_, engine) = engine();
    // Keep the model small so that ranges overlap often: 64 blocks.
    let span = 64 * BLOCK as usize;
    let mut model: Vec<u8> = Vec::new();
    // A zero-length write creates the chunk (length 0), so truncates apply from the first step.
    engine.write(&target(1, 1), 0, &[]).expect("create");
    for step in 0..400 {
        if rng.gen_bool(0.15) {
            let len = rng.gen_range(0..=span);
            engine.truncate(ChunkId(1), ChunkVersion(1), len as u64).expect("truncate");
            model.resize(len, 0);
        } else {
            let offset = rng.gen_range(0..span);
            let len = rng.gen_range(0..=(span - offset).min(3 * BLOCK as usize));
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            engine.write(&target(1, 1), offset as u64, &data).expect("write");
            if len > 0 {
                if model.len() < offset + len {
                    model.resize(offset + len, 0);
                }
                model[offset..offset + len].copy_from_slice(&data);
            }
        }
        if step % 20 == 0 || step == 399 {
            assert_eq!(read_all(&engine, 1), model, "seed {seed} step {step}");
            let offset = rng.gen_range(0..span as u64);
            let len = rng.gen_range(0..span as u64 - offset);
            let (_, got) = engine.read(ChunkId(1), None, offset, len).expect("read");
            let end = ((offset + len) as usize).min(model.len());
            let want = if (offset as usize) < end { &model[offset as usize..end] } else { &[][..] };
            assert_eq!(got, want, "seed {seed} step {step} range {offset}+{len}");
        }
    }
}

#[test]
fn grouped_writes_apply_in_order_in_one_commit_or_not_at_all() {
    let (_, engine) = engine();
    let whole = pattern(BLOCK as usize, 3);
    let (a, b, c) = (pattern(100, 5), pattern(50, 9), pattern(BLOCK as usize + 10, 11));
    // Overlapping pieces in one group: later bytes win, including over a whole block.
    let pieces: Vec<(u64, &[u8])> = vec![(0, &whole), (10, &a), (60, &b), (BLOCK as u64 - 5, &c)];
    let meta = engine.write_many(&target(1, 1), &pieces, Logging::Logged).expect("write group");
    let mut model = vec![0u8; BLOCK as usize - 5 + c.len()];
    for (offset, data) in &pieces {
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    assert_eq!(meta.length_bytes, model.len() as u64);
    assert_eq!(read_all(&engine, 1), model);

    // One piece out of range: nothing of the group is written.
    let chunk_end = CHUNK_SIZE_DEFAULT_BYTES;
    let bad: Vec<(u64, &[u8])> = vec![(0, &b), (chunk_end - 10, &a)];
    assert!(matches!(engine.write_many(&target(1, 1), &bad, Logging::Logged), Err(ChunkError::OutOfRange { .. })));
    assert_eq!(read_all(&engine, 1), model);
}

#[test]
fn blocks_that_become_all_zeros_are_holes() {
    let (store, engine) = engine();
    let b = BLOCK as usize;
    let data = pattern(4 * b, 3);
    engine.write(&target(1, 1), 0, &data).expect("write");
    // Zeros over block 1 whole, over the tail of block 2 only, and over all of block 3 in two
    // partial writes: blocks 1 and 3 become holes, block 2 keeps its head.
    engine.write(&target(1, 1), b as u64, &vec![0; b]).expect("zero block 1");
    engine.write(&target(1, 1), 2 * b as u64 + 100, &vec![0; b - 100]).expect("zero the tail of block 2");
    engine.write(&target(1, 1), 3 * b as u64, &[0; 10]).expect("zero the head of block 3");
    engine.write(&target(1, 1), 3 * b as u64 + 10, &vec![0; b - 10]).expect("zero the rest of block 3");
    let present: Vec<bool> = (0..4).map(|i| store.block(ChunkId(1), i).expect("block").is_some()).collect();
    assert_eq!(present, vec![true, false, true, false]);
    // The length and the bytes are as if the zeros were stored.
    let mut want = data.clone();
    want[b..2 * b].fill(0);
    want[2 * b + 100..].fill(0);
    assert_eq!(engine.stat(ChunkId(1), false).expect("stat").meta.length_bytes, 4 * BLOCK as u64);
    assert_eq!(read_all(&engine, 1), want);
    // The digest is of the logical bytes, holes included.
    let digest = engine.stat(ChunkId(1), true).expect("digest").blake3.expect("blake3");
    assert_eq!(digest, *blake3::hash(&want).as_bytes());
    // Zeros written where nothing was store nothing, but still extend the chunk.
    engine.write(&target(2, 1), 0, &vec![0; 3 * b]).expect("zeros");
    assert!((0..3).all(|i| store.block(ChunkId(2), i).expect("block").is_none()));
    assert_eq!(read_all(&engine, 2), vec![0; 3 * b]);
}

/// The CRC a read returns is the CRC of the bytes it returns, whether it comes from whole
/// stored blocks (combined checksums), parts of blocks, short last blocks or holes.
#[test]
fn read_crc_matches_the_bytes_for_every_shape_of_range() {
    let (_, engine) = engine();
    let data = pattern(5 * BLOCK as usize + 300, 3);
    engine.write(&target(1, 1), 2 * u64::from(BLOCK), &data).expect("write");
    engine.write(&target(1, 1), 20 * u64::from(BLOCK) + 17, b"after a hole").expect("write");
    let block = u64::from(BLOCK);
    let ranges = [
        (0, 21 * block),             // hole, whole blocks, short block, hole, tail
        (2 * block, 3 * block),      // whole blocks only
        (2 * block + 5, block),      // across a block boundary, partial at both ends
        (7 * block, 100),            // the short last block of the first write
        (9 * block, 4 * block),      // a hole only
        (20 * block, 2 * block),     // a block that starts with a hole
        (20 * block + 29, 10 * MIB), // cut at the chunk's length
    ];
    for (offset, len) in ranges {
        let piece = engine.read_with_crc(ChunkId(1), None, offset, len).expect("read");
        assert_eq!(piece.crc32, crc32fast::hash(&piece.data), "range {offset}+{len}");
        let (_, plain) = engine.read(ChunkId(1), None, offset, len).expect("read");
        assert_eq!(piece.data, plain);
    }
    let empty = engine.read_with_crc(ChunkId(1), None, 30 * block, block).expect("read past the end");
    assert!(empty.data.is_empty());
    assert_eq!(empty.crc32, crc32fast::hash(&[]));
}

/// A read from memory answers what a read from the store would (data, CRC, refusals), and
/// steps aside (None) while a writer holds the chunk instead of waiting for it.
#[test]
fn memory_reads_match_store_reads_and_never_wait_for_a_writer() {
    let (_, engine) = engine();
    let data = pattern(3 * BLOCK as usize + 11, 5);
    engine.write(&target(4, 2), 100, &data).expect("write");
    for (offset, len) in [(0, 2 * u64::from(BLOCK)), (100, 4096), (3 * u64::from(BLOCK), MIB)] {
        let from_memory = engine.read_from_memory(ChunkId(4), Some(ChunkVersion(2)), offset, len).expect("read");
        let piece = from_memory.expect("a memory store holds everything");
        let stored = engine.read_with_crc(ChunkId(4), Some(ChunkVersion(2)), offset, len).expect("read");
        assert_eq!((piece.data, piece.crc32, piece.meta), (stored.data, stored.crc32, stored.meta));
    }
    let stale = engine.read_from_memory(ChunkId(4), Some(ChunkVersion(1)), 0, 10).expect_err("stale version");
    assert!(matches!(stale, ChunkError::StaleVersion { .. }), "{stale}");
    let missing = engine.read_from_memory(ChunkId(8), None, 0, 10).expect_err("no such chunk");
    assert!(matches!(missing, ChunkError::NotFound { .. }), "{missing}");

    let _writer = engine.write_guard(ChunkId(4));
    assert!(engine.read_from_memory(ChunkId(4), None, 0, 10).expect("no error").is_none());
}
