//! Unit tests of the chunk map in the state machine: allocation, commits, write handles,
//! truncation (deletion queue and pending truncations), reclaim of removed files, replica
//! changes proposed by the leader, and their errors.

use super::*;
use crate::namespace::chunks as map;
use crate::namespace::types::{ChunkId, ChunkserverId, PendingTruncate, Replica};

const MIB64: u64 = 64 << 20;

fn replicas(ids: &[u64]) -> Vec<Replica> {
    ids.iter().map(|&id| Replica { server: ChunkserverId(id), addr: format!("127.0.0.1:{}", 7000 + id) }).collect()
}

fn rw() -> OpenFlags {
    OpenFlags { read: true, write: true, truncate: false }
}

fn ro() -> OpenFlags {
    OpenFlags { read: true, write: false, truncate: false }
}

impl Fs {
    /// A regular file `name` in the root, open for writing in session 1.
    fn writable(&mut self, name: &str) -> InodeId {
        let op = Op::Create {
            parent: ROOT,
            name: name.into(),
            mode: 0o666,
            umask: 0,
            exclusive: true,
            session: Some(S1),
            flags: rw(),
        };
        self.attr(&root(), op).expect("create").ino
    }

    fn allocate(&mut self, ino: InodeId, session: SessionId, index: u64, on: &[u64]) -> Result<(u64, Chunk), Errno> {
        match self.exec(&root(), Op::AllocateChunk { ino, session, index, placement: replicas(on) })? {
            Reply::Chunk { index, chunk } => Ok((index, chunk)),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    fn commit(&mut self, c: &Caller, ino: InodeId, size: u64, indexes: &[u64]) -> Result<Inode, Errno> {
        self.attr(c, Op::CommitWrite { ino, session: S1, size, chunk_indexes: indexes.to_vec() })
    }

    fn chunk_at(&self, ino: InodeId, index: u64) -> Option<Chunk> {
        map::chunk(&self.store, ino, index).expect("chunk")
    }

    fn gc_ids(&self) -> Vec<u64> {
        map::gc_queue(&self.store, 1000).expect("gc").into_iter().map(|(id, _)| id.0).collect()
    }
}

use crate::namespace::Chunk;

#[test]
fn allocate_places_once_per_index() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    let (index, c) = fs.allocate(f, S1, 0, &[1, 2, 3]).expect("allocate");
    assert_eq!((index, c.id, c.version, c.fresh), (0, ChunkId(1), 1, true));
    assert_eq!(c.replicas, replicas(&[1, 2, 3]));
    // The index is allocated: the same chunk comes back whatever placement the proposer chose.
    let (_, again) = fs.allocate(f, S1, 0, &[4]).expect("again");
    assert_eq!(again, c);
    let (_, next) = fs.allocate(f, S1, 5, &[2]).expect("hole before");
    assert_eq!(next.id, ChunkId(2));
    assert_eq!(map::place(&fs.store, ChunkId(2)).expect("place").map(|p| (p.ino, p.index)), Some((f, 5)));
    assert_eq!(map::next_chunk_id(&fs.store).expect("next"), ChunkId(3));
    let m = map::chunk_map(&fs.store, f, 0, 0).expect("map");
    assert_eq!((m.chunk_size_bytes, m.size, m.chunks.len()), (MIB64, 0, 2));
    let m = map::chunk_map(&fs.store, f, 1, 4).expect("map");
    assert!(m.chunks.is_empty(), "indexes 1..5 are holes");
    let m = map::chunk_map(&fs.store, f, 5, 1).expect("map");
    assert_eq!(m.chunks[0].0, 5);
}

#[test]
fn allocate_errors() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    assert_eq!(fs.allocate(f, S1, 0, &[]), Err(Errno::NoSpc));
    assert_eq!(fs.allocate(f, S1, 0, &[1, 1]), Err(Errno::Inval));
    assert_eq!(fs.allocate(f, SessionId(2), 0, &[1]), Err(Errno::BadF), "no handle in session 2");
    assert_eq!(fs.allocate(f, SessionId(9), 0, &[1]), Err(Errno::BadF), "no such session");
    assert_eq!(fs.allocate(InodeId(999), S1, 0, &[1]), Err(Errno::NoEnt));
    assert_eq!(fs.allocate(ROOT, S1, 0, &[1]), Err(Errno::IsDir));
    assert_eq!(fs.allocate(f, S1, u64::MAX / 2, &[1]), Err(Errno::FBig));
    // A read-only handle is not enough.
    fs.attr(&root(), Op::Open { ino: f, session: SessionId(2), flags: ro() }).expect("open ro");
    assert_eq!(fs.allocate(f, SessionId(2), 0, &[1]), Err(Errno::BadF));
    assert_eq!(errno(map::chunk_map(&fs.store, ROOT, 0, 0)), Errno::IsDir);
    assert_eq!(errno(map::chunk_map(&fs.store, InodeId(999), 0, 0)), Errno::NoEnt);
    assert!(map::chunk_map(&fs.store, f, 0, 0).expect("map").chunks.is_empty(), "failed commands left nothing");
}

#[test]
fn write_handles_follow_open_and_close() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: ro() }).expect("open ro");
    // Closing the write handle, said explicitly: no writer left.
    fs.exec(&root(), Op::CloseHandle { ino: f, session: S1, write: true }).expect("close");
    assert_eq!(fs.allocate(f, S1, 0, &[1]), Err(Errno::BadF));
    assert!(!map::has_writers(&fs.store, f).expect("writers"));
    // Without the flag, a close counts as a writer's only when every handle is a writer's.
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: rw() }).expect("open rw");
    fs.exec(&root(), Op::Close { ino: f, session: S1 }).expect("close ?");
    assert!(map::has_writers(&fs.store, f).expect("writers"), "might have been the read handle");
    fs.exec(&root(), Op::Close { ino: f, session: S1 }).expect("last close");
    assert!(!map::has_writers(&fs.store, f).expect("writers"), "the last close forgets everything");
    // O_TRUNC counts as writing; session expiry forgets the writers.
    let trunc = OpenFlags { read: false, write: false, truncate: true };
    fs.attr(&root(), Op::Open { ino: f, session: SessionId(2), flags: trunc }).expect("open trunc");
    assert!(fs.allocate(f, SessionId(2), 0, &[1]).is_ok());
    fs.exec(&root(), Op::ExpireSessions { ids: vec![SessionId(2)] }).expect("expire");
    assert!(!map::has_writers(&fs.store, f).expect("writers"));
}

#[test]
fn commit_write_grows_the_file_and_clears_fresh() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.allocate(f, S1, 0, &[1, 2]).expect("allocate");
    fs.allocate(f, S1, 1, &[1, 2]).expect("allocate");
    let a = fs.commit(&root(), f, MIB64 + 10, &[0]).expect("commit");
    assert_eq!((a.size, a.mtime, a.ctime), (MIB64 + 10, Timespec::new(fs.clock, 0), Timespec::new(fs.clock, 0)));
    assert!(!fs.chunk_at(f, 0).expect("chunk 0").fresh);
    assert!(fs.chunk_at(f, 1).expect("chunk 1").fresh, "not listed");
    // Size is a maximum: a commit of an earlier range does not shrink the file.
    assert_eq!(fs.commit(&root(), f, 5, &[1, 7]).expect("commit").size, MIB64 + 10);
    assert!(!fs.chunk_at(f, 1).expect("chunk 1").fresh);
    assert_eq!(read::statfs(&fs.store).expect("statfs").usage.bytes, MIB64 + 10);
    assert_eq!(fs.commit(&root(), f, u64::MAX, &[]), Err(Errno::FBig));
    assert_eq!(
        fs.attr(&root(), Op::CommitWrite { ino: f, session: SessionId(2), size: 1, chunk_indexes: vec![] }),
        Err(Errno::BadF)
    );
}

#[test]
fn commit_then_setattr_is_one_change_all_or_nothing() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.allocate(f, S1, 0, &[1, 2]).expect("allocate");
    let at = Timespec::new(1_000_000, 7);
    let attr = SetAttr { mode: Some(0o640), mtime: Some(TimeSet::At(at)), ..SetAttr::default() };
    let op = |size, attr: SetAttr| Op::CommitWriteSetAttr { ino: f, session: S1, size, chunk_indexes: vec![0], attr };
    let a = fs.attr(&root(), op(100, attr.clone())).expect("commit and setattr");
    // The mtime set after the commit wins over the commit's own; the rest is the commit's.
    assert_eq!((a.size, a.mode & 0o7777, a.mtime), (100, 0o640, at));
    assert!(!fs.chunk_at(f, 0).expect("chunk 0").fresh);
    assert_eq!(fs.get(f), a);
    // A change that fails (bob may not chmod root's file) takes the commit with it.
    let before = fs.get(f);
    assert_eq!(fs.attr(&bob(), op(200, attr.clone())), Err(Errno::Perm));
    assert_eq!(fs.get(f), before, "nothing of the failed change applied");
    // Never a truncation: that has work to do beyond the namespace.
    assert_eq!(fs.attr(&root(), op(300, SetAttr { size: Some(1), ..SetAttr::default() })), Err(Errno::Inval));
}

#[test]
fn chunks_never_written_go_with_the_last_writer() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.allocate(f, S1, 0, &[1, 2]).expect("allocate");
    fs.allocate(f, S1, 1, &[1, 2]).expect("allocate");
    fs.commit(&root(), f, 10, &[0]).expect("commit chunk 0");
    // Session 2 writes too: session 1's close leaves its fresh chunk alone.
    fs.attr(&root(), Op::Open { ino: f, session: SessionId(2), flags: rw() }).expect("open rw");
    fs.exec(&root(), Op::CloseHandle { ino: f, session: S1, write: true }).expect("close");
    assert!(fs.chunk_at(f, 1).expect("chunk 1 while session 2 writes").fresh);
    assert!(fs.gc_ids().is_empty());
    // The last writer goes (here by expiry): the chunk no commit reached is dropped and queued
    // for deletion; the written one stays.
    fs.exec(&root(), Op::ExpireSessions { ids: vec![SessionId(2)] }).expect("expire");
    assert!(fs.chunk_at(f, 1).is_none());
    assert!(map::place(&fs.store, ChunkId(2)).expect("place").is_none());
    assert_eq!(fs.gc_ids(), vec![2]);
    assert!(!fs.chunk_at(f, 0).expect("the written chunk").fresh);
    // A close that leaves a read handle in the session still ends its writing.
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: rw() }).expect("open rw");
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: ro() }).expect("open ro");
    fs.allocate(f, S1, 3, &[1]).expect("allocate");
    fs.exec(&root(), Op::CloseHandle { ino: f, session: S1, write: false }).expect("close ro");
    assert!(fs.chunk_at(f, 3).is_some(), "the writer is still open");
    fs.exec(&root(), Op::CloseHandle { ino: f, session: S1, write: true }).expect("close rw");
    assert!(fs.chunk_at(f, 3).is_none());
    assert_eq!(fs.gc_ids(), vec![2, 3]);
    assert!(fs.chunk_at(f, 0).is_some());
}

#[test]
fn commit_write_clears_setuid_for_non_root() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    let sgid_x = S_ISUID | S_ISGID | 0o777;
    fs.setattr(&root(), f, SetAttr { mode: Some(sgid_x), ..Default::default() }).expect("chmod");
    assert_eq!(fs.commit(&root(), f, 1, &[]).expect("root").mode, sgid_x, "root keeps them (CAP_FSETID)");
    assert_eq!(fs.commit(&alice(), f, 2, &[]).expect("alice").mode, 0o777);
    // setgid without group execute stays for a writer in the file's group, and goes for others.
    fs.setattr(&root(), f, SetAttr { mode: Some(S_ISGID | 0o666), ..Default::default() }).expect("chmod");
    assert_eq!(fs.commit(&alice(), f, 3, &[]).expect("alice").mode, 0o666, "alice is not in group 0");
    fs.setattr(&root(), f, SetAttr { gid: Some(alice().gid), ..Default::default() }).expect("chgrp");
    fs.setattr(&root(), f, SetAttr { mode: Some(S_ISGID | 0o666), ..Default::default() }).expect("chmod");
    assert_eq!(fs.commit(&alice(), f, 4, &[]).expect("alice").mode, S_ISGID | 0o666, "alice is in her group");
}

#[test]
fn allocated_bytes_count_chunks_in_the_map_up_to_the_end() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    let allocated = |fs: &Fs| {
        let inode = crate::namespace::read::getattr(&fs.store, f).expect("getattr");
        map::allocated_bytes(&fs.store, &inode).expect("allocated")
    };
    assert_eq!(allocated(&fs), 0, "empty");
    // Extended by truncate: all hole.
    fs.setattr(&root(), f, SetAttr { size: Some(3 * MIB64 + 100), ..Default::default() }).expect("grow");
    assert_eq!(allocated(&fs), 0);
    // Allocated, nothing committed: still nothing.
    fs.allocate(f, S1, 1, &[1, 2, 3]).expect("allocate");
    fs.allocate(f, S1, 3, &[1, 2, 3]).expect("allocate");
    assert_eq!(allocated(&fs), 0);
    // Chunk 1 written: a whole chunk; then the last, partial chunk: up to the end.
    fs.commit(&root(), f, 0, &[1]).expect("commit");
    assert_eq!(allocated(&fs), MIB64);
    fs.commit(&root(), f, 0, &[3]).expect("commit");
    assert_eq!(allocated(&fs), MIB64 + 100);
    // A chunk past the end (written, the size not yet committed) counts nothing.
    fs.allocate(f, S1, 5, &[1, 2, 3]).expect("allocate");
    fs.commit(&root(), f, 0, &[5]).expect("commit");
    assert_eq!(allocated(&fs), MIB64 + 100);
    // Cut inside chunk 1: only its head is left.
    fs.setattr(&root(), f, SetAttr { size: Some(MIB64 + 10), ..Default::default() }).expect("truncate");
    assert_eq!(allocated(&fs), 10);
    // Directories have none.
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("mkdir");
    assert_eq!(map::allocated_bytes(&fs.store, &d).expect("allocated"), 0);
}

#[test]
fn truncation_queues_whole_chunks_and_cuts_the_last() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    for index in 0..3 {
        fs.allocate(f, S1, index, &[1, 2, 3]).expect("allocate");
    }
    fs.commit(&root(), f, 3 * MIB64, &[0, 1, 2]).expect("commit");
    // Cut inside chunk 1: chunk 2 is queued, chunk 1 gets version 2 and a pending truncation.
    let a = fs.setattr(&root(), f, SetAttr { size: Some(MIB64 + 100), ..Default::default() }).expect("truncate");
    assert_eq!(a.size, MIB64 + 100);
    assert_eq!(fs.gc_ids(), vec![3]);
    let gc = map::gc_queue(&fs.store, 10).expect("gc");
    assert_eq!((gc[0].1.version, gc[0].1.replicas.clone()), (1, replicas(&[1, 2, 3])));
    assert!(fs.chunk_at(f, 2).is_none() && map::place(&fs.store, ChunkId(3)).expect("place").is_none());
    assert_eq!(fs.chunk_at(f, 1).expect("chunk 1").version, 2);
    let p = map::pending_truncate(&fs.store, f, 1).expect("pending").expect("a pending truncation");
    assert_eq!(p, PendingTruncate { chunk: ChunkId(2), from_version: 1, to_version: 2, length_bytes: 100 });
    // A second cut before the first was carried out: from the first's version, shorter.
    fs.setattr(&root(), f, SetAttr { size: Some(MIB64 + 40), ..Default::default() }).expect("truncate");
    let p = map::pending_truncate(&fs.store, f, 1).expect("pending").expect("a pending truncation");
    assert_eq!(p, PendingTruncate { chunk: ChunkId(2), from_version: 1, to_version: 3, length_bytes: 40 });
    // Growing changes no chunk.
    fs.setattr(&root(), f, SetAttr { size: Some(5 * MIB64), ..Default::default() }).expect("grow");
    assert_eq!(fs.chunk_at(f, 1).expect("chunk 1").version, 3);
    // The leader reports it done: stale reports are refused; lost replicas leave the set.
    let done = |to_version, lost: Vec<u64>| Op::ChunkTruncated {
        ino: f,
        index: 1,
        chunk: ChunkId(2),
        to_version,
        lost: lost.into_iter().map(ChunkserverId).collect(),
    };
    assert_eq!(fs.exec(&root(), done(2, vec![])), Err(Errno::Stale));
    fs.exec(&root(), done(3, vec![2])).expect("done");
    assert!(map::pending_truncate(&fs.store, f, 1).expect("pending").is_none());
    assert_eq!(fs.chunk_at(f, 1).expect("chunk 1").replicas, replicas(&[1, 3]));
    assert_eq!(fs.exec(&root(), done(3, vec![])), Err(Errno::Stale), "nothing pending any more");
    // A cut on a chunk boundary queues the chunk that starts there; nothing pending.
    fs.setattr(&root(), f, SetAttr { size: Some(MIB64), ..Default::default() }).expect("truncate");
    assert_eq!(fs.gc_ids(), vec![2, 3]);
    assert!(map::pending_truncates(&fs.store, None, 10).expect("pending").is_empty());
    assert!(fs.chunk_at(f, 0).is_some());
}

#[test]
fn open_truncate_queues_every_chunk() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.allocate(f, S1, 0, &[1]).expect("allocate");
    fs.allocate(f, S1, 1, &[1]).expect("allocate");
    fs.commit(&root(), f, MIB64 + 1, &[0, 1]).expect("commit");
    let trunc = OpenFlags { read: false, write: true, truncate: true };
    assert_eq!(fs.attr(&root(), Op::Open { ino: f, session: S1, flags: trunc }).expect("open").size, 0);
    assert_eq!(fs.gc_ids(), vec![1, 2]);
    assert!(map::chunk_map(&fs.store, f, 0, 0).expect("map").chunks.is_empty());
    // O_TRUNC in a session that is not open changes nothing.
    fs.allocate(f, S1, 0, &[1]).expect("allocate");
    fs.commit(&root(), f, 10, &[0]).expect("commit");
    assert_eq!(fs.attr(&root(), Op::Open { ino: f, session: SessionId(9), flags: trunc }), Err(Errno::BadF));
    assert!(fs.chunk_at(f, 0).is_some());
}

#[test]
fn removed_files_are_reclaimed_into_the_queue() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.allocate(f, S1, 0, &[1, 2]).expect("allocate");
    fs.allocate(f, S1, 3, &[2, 3]).expect("allocate");
    fs.unlink(&root(), ROOT, "f").expect("unlink");
    assert!(fs.chunk_at(f, 0).is_some(), "still open: the chunks stay");
    fs.exec(&root(), Op::CloseHandle { ino: f, session: S1, write: true }).expect("close");
    assert_eq!(read::reclaim_queue(&fs.store, 10).expect("reclaim"), vec![f]);
    fs.exec(&root(), Op::ReclaimInodes { inos: vec![f, InodeId(777)] }).expect("reclaim");
    assert!(read::reclaim_queue(&fs.store, 10).expect("reclaim").is_empty());
    assert_eq!(fs.gc_ids(), vec![1, 2]);
    assert!(map::map_page(&fs.store, None, 10).expect("map").is_empty());
    fs.exec(&root(), Op::ChunksDeleted { chunks: vec![ChunkId(1)] }).expect("deleted");
    assert_eq!(fs.gc_ids(), vec![2]);
}

#[test]
fn leader_replica_changes_check_the_version() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    fs.allocate(f, S1, 0, &[1, 2, 3]).expect("allocate");
    let set = |chunk, expect_version, version, on: &[u64]| Op::SetChunkReplicas {
        ino: f,
        index: 0,
        chunk: ChunkId(chunk),
        expect_version,
        version,
        replicas: replicas(on),
    };
    assert_eq!(fs.exec(&root(), set(1, 2, 3, &[1])), Err(Errno::Stale));
    assert_eq!(fs.exec(&root(), set(9, 1, 2, &[1])), Err(Errno::NoEnt));
    assert_eq!(fs.exec(&root(), set(1, 1, 2, &[])), Err(Errno::Inval));
    assert_eq!(fs.exec(&root(), set(1, 1, 2, &[1, 1])), Err(Errno::Inval));
    assert_eq!(fs.exec(&root(), set(1, 1, 0, &[1])), Err(Errno::Inval));
    match fs.exec(&root(), set(1, 1, 2, &[1, 4])).expect("set") {
        Reply::Chunk { chunk, .. } => assert_eq!((chunk.version, chunk.replicas), (2, replicas(&[1, 4]))),
        other => panic!("{other:?}"),
    }
    // While a truncation is pending, the leader must carry it out first.
    fs.commit(&root(), f, 1000, &[0]).expect("commit");
    fs.setattr(&root(), f, SetAttr { size: Some(10), ..Default::default() }).expect("truncate");
    assert_eq!(fs.exec(&root(), set(1, 3, 4, &[1])), Err(Errno::Again));
}

#[test]
fn digest_covers_the_chunk_map() {
    let mut fs = Fs::new();
    let f = fs.writable("f");
    let before = read::digest(&fs.store).expect("digest");
    fs.allocate(f, S1, 0, &[1]).expect("allocate");
    let after = read::digest(&fs.store).expect("digest");
    assert_ne!(before.0, after.0);
    assert!(after.1 > before.1);
}

impl Fs {
    /// `CreateWithChunk` of `name` in the root: (attributes, created, first chunk).
    fn create_with_chunk(
        &mut self,
        name: &str,
        exclusive: bool,
        flags: OpenFlags,
        on: &[u64],
    ) -> Result<(Inode, bool, Option<Chunk>), Errno> {
        let op = Op::CreateWithChunk {
            parent: ROOT,
            name: name.into(),
            mode: 0o644,
            umask: 0,
            exclusive,
            session: S1,
            flags,
            placement: replicas(on),
        };
        match self.exec(&root(), op)? {
            Reply::CreatedWithChunkIn { attr, created, first_chunk, parent } => {
                // The directory's attributes come back exactly when this call created the file.
                assert_eq!(parent.is_some(), created, "parent attributes: {parent:?}");
                if let Some(p) = parent {
                    assert_eq!(p, self.get(p.ino), "the directory as the create left it");
                }
                Ok((attr, created, first_chunk))
            }
            other => panic!("expected CreatedWithChunk, got {other:?}"),
        }
    }
}

#[test]
fn create_with_chunk_allocates_the_first_chunk() {
    let mut fs = Fs::new();
    let (attr, created, first) = fs.create_with_chunk("f", true, rw(), &[2, 3, 1]).expect("create");
    assert!(created);
    assert_eq!(attr.open_handles, 1);
    let first = first.expect("a first chunk");
    assert_eq!((first.id, first.version, first.fresh), (ChunkId(1), 1, true));
    assert_eq!(first.replicas, replicas(&[2, 3, 1]), "the proposer's placement, in its order");
    // Recorded in the chunk map and the chunk id index, exactly as AllocateChunk records it.
    assert_eq!(fs.chunk_at(attr.ino, 0), Some(first.clone()));
    assert_eq!(map::place(&fs.store, ChunkId(1)).expect("place").map(|p| (p.ino, p.index)), Some((attr.ino, 0)));
    assert_eq!(map::next_chunk_id(&fs.store).expect("next"), ChunkId(2));
    // The writer's AllocateChunk of index 0 finds it, whatever placement it brings.
    let (_, again) = fs.allocate(attr.ino, S1, 0, &[4]).expect("allocate");
    assert_eq!(again, first);
    // The first commit makes it no longer fresh.
    fs.commit(&root(), attr.ino, 4096, &[0]).expect("commit");
    assert!(!fs.chunk_at(attr.ino, 0).expect("chunk").fresh);
}

#[test]
fn create_with_chunk_allocates_only_for_new_files_opened_for_writing() {
    let mut fs = Fs::new();
    let (f, ..) = fs.create_with_chunk("f", true, rw(), &[1, 2, 3]).expect("create");
    // Exclusive create on an existing name: EEXIST and nothing allocated.
    assert_eq!(fs.create_with_chunk("f", true, rw(), &[1, 2, 3]), Err(Errno::Exist));
    assert_eq!(map::next_chunk_id(&fs.store).expect("next"), ChunkId(2));
    // Non-exclusive create of an existing file opens it: no chunk either.
    let (again, created, first) = fs.create_with_chunk("f", false, rw(), &[4, 5, 6]).expect("open");
    assert_eq!((again.ino, created, first), (f.ino, false, None));
    assert_eq!(fs.chunk_at(f.ino, 0).expect("chunk").replicas, replicas(&[1, 2, 3]));
    // Opened read-only: no chunk.
    let (ro_file, created, first) = fs.create_with_chunk("r", true, ro(), &[1, 2, 3]).expect("create ro");
    assert!(created);
    assert_eq!(first, None);
    assert_eq!(fs.chunk_at(ro_file.ino, 0), None);
    // No live chunkserver (empty placement): the file is created without the chunk.
    let (g, created, first) = fs.create_with_chunk("g", true, rw(), &[]).expect("create without servers");
    assert!(created);
    assert_eq!(first, None);
    assert_eq!(fs.chunk_at(g.ino, 0), None);
    assert_eq!(fs.lookup(&root(), ROOT, "g").expect("lookup").ino, g.ino);
    assert_eq!(map::next_chunk_id(&fs.store).expect("next"), ChunkId(2), "only f's chunk was allocated");
}
