//! Unit tests of the namespace state machine on the in-memory store: every operation and its
//! errors, permission rules, rename edge cases, link counts, open-unlinked files and readdir
//! cookies under concurrent changes.

use cairn_coordinator::rsm::store::{MemStore, StateRead, StateStore, WriteSet};

use super::command::{encode_command, Command, Op, OpenFlags, RenameFlags, Reply, SetAttr, TimeSet, XattrMode};
use super::read;
use super::types::{Caller, FileKind, Inode, InodeId, SessionId, Timespec, S_ISGID, S_ISUID, S_ISVTX};
use super::{apply_command, keys, Errno, Fail};

mod chunks;

const ROOT: InodeId = InodeId::ROOT;
const S1: SessionId = SessionId(1);

fn root() -> Caller {
    Caller::root()
}

fn alice() -> Caller {
    Caller::user(1000, 1000)
}

fn bob() -> Caller {
    Caller::user(1001, 1001)
}

fn errno<T: std::fmt::Debug>(r: Result<T, Fail>) -> Errno {
    match r {
        Err(Fail::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

/// A formatted namespace on a `MemStore`, applying commands as the runtime would.
struct Fs {
    store: MemStore,
    index: u64,
    clock: i64,
}

impl Fs {
    fn new() -> Fs {
        let mut fs = Fs { store: MemStore::new(keys::TABLES), index: 0, clock: 1_000 };
        let r = fs.exec(&root(), Op::Format { chunk_size_bytes: 64 << 20, replication_factor: 3 });
        assert!(matches!(r, Ok(Reply::Formatted(_))), "{r:?}");
        // Sessions 1 and 2, which the tests open handles in.
        for want in [SessionId(1), SessionId(2)] {
            assert_eq!(fs.open_session(), want);
        }
        fs
    }

    fn open_session(&mut self) -> SessionId {
        let op = Op::OpenSession { client_name: "test".into(), host: "h".into(), pid: 1, ttl_ms: 5_000 };
        match self.exec(&root(), op) {
            Ok(Reply::Session { id, .. }) => id,
            other => panic!("open session: {other:?}"),
        }
    }

    fn exec(&mut self, caller: &Caller, op: Op) -> Result<Reply, Errno> {
        self.index += 1;
        self.clock += 1;
        let command = Command { caller: caller.clone(), now: Timespec::new(self.clock, 0), op };
        let mut writes = WriteSet::new();
        let outcome =
            apply_command(&self.store, &mut writes, self.index, &encode_command(&command)).expect("apply (storage)");
        if outcome.is_err() {
            assert!(writes.is_empty(), "a failed command wrote {writes:?}");
        }
        self.store.write(writes).expect("write");
        outcome
    }

    fn attr(&mut self, caller: &Caller, op: Op) -> Result<Inode, Errno> {
        match self.exec(caller, op)? {
            Reply::Attr(a) => Ok(a),
            Reply::Created { attr, .. } => Ok(attr),
            other => panic!("expected attributes, got {other:?}"),
        }
    }

    fn mkdir(&mut self, c: &Caller, parent: InodeId, name: &str, mode: u32) -> Result<Inode, Errno> {
        self.attr(c, Op::Mkdir { parent, name: name.into(), mode, umask: 0 })
    }

    fn mknod(&mut self, c: &Caller, parent: InodeId, name: &str, mode: u32) -> Result<Inode, Errno> {
        self.attr(c, Op::Mknod { parent, name: name.into(), kind: FileKind::Regular, mode, umask: 0, rdev: 0 })
    }

    fn unlink(&mut self, c: &Caller, parent: InodeId, name: &str) -> Result<Reply, Errno> {
        self.exec(c, Op::Unlink { parent, name: name.into() })
    }

    fn rmdir(&mut self, c: &Caller, parent: InodeId, name: &str) -> Result<Reply, Errno> {
        self.exec(c, Op::Rmdir { parent, name: name.into() })
    }

    fn rename(&mut self, c: &Caller, p: InodeId, n: &str, np: InodeId, nn: &str) -> Result<Reply, Errno> {
        self.rename2(c, p, n, np, nn, RenameFlags::default())
    }

    fn rename2(
        &mut self,
        c: &Caller,
        p: InodeId,
        n: &str,
        np: InodeId,
        nn: &str,
        flags: RenameFlags,
    ) -> Result<Reply, Errno> {
        self.exec(c, Op::Rename { parent: p, name: n.into(), new_parent: np, new_name: nn.into(), flags })
    }

    fn setattr(&mut self, c: &Caller, ino: InodeId, attr: SetAttr) -> Result<Inode, Errno> {
        self.attr(c, Op::SetAttr { ino, attr })
    }

    fn get(&self, ino: InodeId) -> Inode {
        read::getattr(&self.store, ino).expect("getattr")
    }

    fn gone(&self, ino: InodeId) -> bool {
        matches!(read::getattr(&self.store, ino), Err(Fail::Errno(Errno::NoEnt)))
    }

    fn lookup(&self, c: &Caller, parent: InodeId, name: &str) -> Result<Inode, Fail> {
        read::lookup(&self.store, c, parent, name.as_bytes())
    }

    fn ino(&self, parent: InodeId, name: &str) -> InodeId {
        self.lookup(&root(), parent, name).expect("lookup").ino
    }

    fn names(&self, dir: InodeId) -> Vec<String> {
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let page = read::readdir(&self.store, &root(), dir, cookie, 7, false).expect("readdir");
            for e in &page.entries {
                names.push(String::from_utf8(e.name.clone()).expect("utf8"));
                cookie = e.cookie;
            }
            if page.eof {
                break;
            }
        }
        names.sort();
        names
    }
}

#[test]
fn format_creates_root_and_is_idempotent() {
    let mut fs = Fs::new();
    let root_inode = fs.get(ROOT);
    assert!(root_inode.is_dir());
    assert_eq!((root_inode.nlink, root_inode.mode, root_inode.parent), (2, 0o755, ROOT));
    let again = fs.exec(&root(), Op::Format { chunk_size_bytes: 128 << 20, replication_factor: 2 });
    match again {
        Ok(Reply::Formatted(p)) => assert_eq!((p.chunk_size_bytes, p.replication_factor), (64 << 20, 3)),
        other => panic!("{other:?}"),
    }
    let stat = read::statfs(&fs.store).expect("statfs");
    assert_eq!(stat.usage.inodes, 1);
    assert_eq!(stat.name_bytes_max, 255);
}

#[test]
fn format_rejects_bad_parameters_and_ops_need_a_format() {
    let mut fs = Fs { store: MemStore::new(keys::TABLES), index: 0, clock: 0 };
    assert_eq!(fs.mkdir(&root(), ROOT, "a", 0o755), Err(Errno::NotConn));
    let bad = fs.exec(&root(), Op::Format { chunk_size_bytes: 1 << 20, replication_factor: 3 });
    assert_eq!(bad, Err(Errno::Inval));
    let bad = fs.exec(&root(), Op::Format { chunk_size_bytes: 64 << 20, replication_factor: 0 });
    assert_eq!(bad, Err(Errno::Inval));
    assert!(fs.exec(&root(), Op::Format { chunk_size_bytes: 128 << 20, replication_factor: 1 }).is_ok());
}

#[test]
fn mkdir_lookup_and_link_counts() {
    let mut fs = Fs::new();
    let a = fs.mkdir(&root(), ROOT, "a", 0o755).expect("mkdir");
    assert_eq!((a.nlink, a.parent, a.kind), (2, ROOT, FileKind::Directory));
    assert_eq!(fs.get(ROOT).nlink, 3);
    assert_eq!(fs.get(ROOT).mtime, Timespec::new(fs.clock, 0));
    assert_eq!(fs.lookup(&root(), ROOT, "a").expect("lookup").ino, a.ino);
    assert_eq!(fs.lookup(&root(), a.ino, "..").expect("..").ino, ROOT);
    assert_eq!(fs.lookup(&root(), a.ino, ".").expect(".").ino, a.ino);
    assert_eq!(fs.mkdir(&root(), ROOT, "a", 0o755), Err(Errno::Exist));
    assert_eq!(fs.mkdir(&root(), ROOT, ".", 0o755), Err(Errno::Exist));
    assert_eq!(fs.mkdir(&root(), InodeId(999), "x", 0o755), Err(Errno::NoEnt));
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("mknod");
    assert_eq!(fs.mkdir(&root(), f.ino, "x", 0o755), Err(Errno::NotDir));
    assert_eq!(errno(fs.lookup(&root(), f.ino, "x")), Errno::NotDir);
    assert_eq!(errno(fs.lookup(&root(), ROOT, "missing")), Errno::NoEnt);
    let long = "x".repeat(256);
    assert_eq!(fs.mkdir(&root(), ROOT, &long, 0o755), Err(Errno::NameTooLong));
    assert_eq!(errno(fs.lookup(&root(), ROOT, &long)), Errno::NameTooLong);
    assert!(fs.mkdir(&root(), ROOT, &"y".repeat(255), 0o755).is_ok());
    assert_eq!(fs.mkdir(&root(), ROOT, "", 0o755), Err(Errno::NoEnt));
    assert_eq!(fs.mkdir(&root(), ROOT, "a/b", 0o755), Err(Errno::Inval));
}

#[test]
fn mknod_kinds_umask_and_devices() {
    let mut fs = Fs::new();
    let user = alice_in_root(&mut fs);
    for (name, kind) in [("fifo", FileKind::Fifo), ("sock", FileKind::Socket), ("reg", FileKind::Regular)] {
        let i = fs
            .attr(&user, Op::Mknod { parent: ROOT, name: name.into(), kind, mode: 0o666, umask: 0o022, rdev: 7 })
            .expect("mknod");
        assert_eq!((i.kind, i.mode, i.rdev, i.nlink), (kind, 0o644, 0, 1));
        assert_eq!((i.uid, i.gid), (1000, 1000));
    }
    let dev =
        Op::Mknod { parent: ROOT, name: "chr".into(), kind: FileKind::CharDevice, mode: 0o600, umask: 0, rdev: 0x0501 };
    assert_eq!(fs.attr(&alice(), dev.clone()), Err(Errno::Perm));
    assert_eq!(fs.attr(&root(), dev).expect("mknod chr").rdev, 0x0501);
    let blk =
        Op::Mknod { parent: ROOT, name: "blk".into(), kind: FileKind::BlockDevice, mode: 0o600, umask: 0, rdev: 8 };
    assert_eq!(fs.attr(&root(), blk).expect("blk").st_mode(), 0o060600);
    let dir = Op::Mknod { parent: ROOT, name: "d".into(), kind: FileKind::Directory, mode: 0o755, umask: 0, rdev: 0 };
    assert_eq!(fs.attr(&root(), dir), Err(Errno::Inval));
}

/// Makes the root world-writable so unprivileged callers can create in it; returns alice.
fn alice_in_root(fs: &mut Fs) -> Caller {
    fs.setattr(&root(), ROOT, SetAttr { mode: Some(0o777), ..Default::default() }).expect("chmod root");
    alice()
}

#[test]
fn create_exclusive_and_open_existing() {
    let mut fs = Fs::new();
    let create = |exclusive| Op::Create {
        parent: ROOT,
        name: "f".into(),
        mode: 0o644,
        umask: 0,
        exclusive,
        session: Some(S1),
        flags: OpenFlags { read: true, write: true, truncate: false },
    };
    match fs.exec(&root(), create(true)) {
        Ok(Reply::Created { attr, created: true }) => assert_eq!(attr.open_handles, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs.exec(&root(), create(true)), Err(Errno::Exist));
    match fs.exec(&root(), create(false)) {
        Ok(Reply::Created { attr, created: false }) => assert_eq!(attr.open_handles, 2),
        other => panic!("{other:?}"),
    }
    fs.mkdir(&root(), ROOT, "d", 0o755).expect("mkdir");
    let on_dir = Op::Create {
        parent: ROOT,
        name: "d".into(),
        mode: 0o644,
        umask: 0,
        exclusive: false,
        session: Some(S1),
        flags: OpenFlags::default(),
    };
    assert_eq!(fs.exec(&root(), on_dir), Err(Errno::IsDir));
    // Non-exclusive create of an existing file is an open: the mode is checked.
    let f = fs.ino(ROOT, "f");
    fs.setattr(&root(), ROOT, SetAttr { mode: Some(0o777), ..Default::default() }).expect("chmod");
    let by_alice = Op::Create {
        parent: ROOT,
        name: "f".into(),
        mode: 0o644,
        umask: 0,
        exclusive: false,
        session: Some(S1),
        flags: OpenFlags { read: false, write: true, truncate: false },
    };
    assert_eq!(fs.exec(&alice(), by_alice), Err(Errno::Acces));
    assert_eq!(fs.get(f).open_handles, 2);
}

#[test]
fn open_truncate_and_permissions() {
    let mut fs = Fs::new();
    let f = fs.mknod(&root(), ROOT, "f", 0o604).expect("mknod").ino;
    fs.setattr(&root(), f, SetAttr { size: Some(100), ..Default::default() }).expect("size");
    let open = |flags| Op::Open { ino: f, session: S1, flags };
    assert!(fs.attr(&alice(), open(OpenFlags { read: true, ..Default::default() })).is_ok());
    assert_eq!(fs.attr(&alice(), open(OpenFlags { write: true, ..Default::default() })), Err(Errno::Acces));
    assert_eq!(fs.attr(&alice(), open(OpenFlags { truncate: true, ..Default::default() })), Err(Errno::Acces));
    let t = fs.attr(&root(), open(OpenFlags { write: true, truncate: true, ..Default::default() })).expect("trunc");
    assert_eq!((t.size, t.open_handles, t.mtime), (0, 2, Timespec::new(fs.clock, 0)));
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("mkdir").ino;
    assert_eq!(
        fs.attr(&root(), Op::Open { ino: d, session: S1, flags: OpenFlags { write: true, ..Default::default() } }),
        Err(Errno::IsDir)
    );
    assert_eq!(fs.exec(&root(), Op::Close { ino: d, session: S1 }), Err(Errno::BadF));
    assert_eq!(fs.exec(&root(), Op::Close { ino: f, session: SessionId(9) }), Err(Errno::BadF));
}

#[test]
fn unlink_rmdir_and_errors() {
    let mut fs = Fs::new();
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("mkdir").ino;
    let f = fs.mknod(&root(), d, "f", 0o644).expect("mknod").ino;
    assert_eq!(fs.rmdir(&root(), ROOT, "d"), Err(Errno::NotEmpty));
    assert_eq!(fs.unlink(&root(), ROOT, "d"), Err(Errno::IsDir));
    assert_eq!(fs.rmdir(&root(), d, "f"), Err(Errno::NotDir));
    assert_eq!(fs.unlink(&root(), d, "nope"), Err(Errno::NoEnt));
    assert_eq!(fs.rmdir(&root(), d, "."), Err(Errno::Inval));
    assert_eq!(fs.rmdir(&root(), d, ".."), Err(Errno::NotEmpty));
    assert_eq!(fs.unlink(&root(), d, "."), Err(Errno::IsDir));
    assert_eq!(fs.unlink(&root(), f, "x"), Err(Errno::NotDir));
    fs.unlink(&root(), d, "f").expect("unlink");
    assert!(fs.gone(f));
    assert_eq!(read::reclaim_queue(&fs.store, 10).expect("reclaim"), vec![f]);
    fs.rmdir(&root(), ROOT, "d").expect("rmdir");
    assert!(fs.gone(d));
    assert_eq!(fs.get(ROOT).nlink, 2);
    assert_eq!(read::statfs(&fs.store).expect("statfs").usage.inodes, 1);
    // Nothing is left behind of either inode.
    assert_eq!(fs.names(ROOT), Vec::<String>::new());
}

#[test]
fn hard_links_count_and_survive_unlink() {
    let mut fs = Fs::new();
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("mkdir").ino;
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("mknod").ino;
    let l = fs.attr(&root(), Op::Link { ino: f, new_parent: d, new_name: "g".into() }).expect("link");
    assert_eq!(l.nlink, 2);
    assert_eq!(fs.attr(&root(), Op::Link { ino: f, new_parent: d, new_name: "g".into() }), Err(Errno::Exist));
    assert_eq!(fs.attr(&root(), Op::Link { ino: d, new_parent: ROOT, new_name: "d2".into() }), Err(Errno::Perm));
    assert_eq!(
        fs.attr(&root(), Op::Link { ino: InodeId(77), new_parent: ROOT, new_name: "x".into() }),
        Err(Errno::NoEnt)
    );
    fs.attr(&root(), Op::Link { ino: f, new_parent: ROOT, new_name: "h".into() }).expect("link");
    assert_eq!(fs.get(f).nlink, 3);
    fs.unlink(&root(), ROOT, "f").expect("unlink");
    assert_eq!(fs.get(f).nlink, 2);
    fs.unlink(&root(), d, "g").expect("unlink");
    assert_eq!(fs.get(f).nlink, 1);
    assert_eq!(fs.lookup(&root(), ROOT, "h").expect("h").ino, f);
    fs.unlink(&root(), ROOT, "h").expect("unlink");
    assert!(fs.gone(f));
}

#[test]
fn open_unlinked_files_live_until_last_close() {
    let mut fs = Fs::new();
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("mknod").ino;
    let rw = OpenFlags { read: true, write: true, truncate: false };
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: rw }).expect("open");
    fs.attr(&root(), Op::Open { ino: f, session: SessionId(2), flags: rw }).expect("open");
    fs.unlink(&root(), ROOT, "f").expect("unlink");
    let orphan = fs.get(f);
    assert_eq!((orphan.nlink, orphan.open_handles), (0, 2));
    assert_eq!(errno(fs.lookup(&root(), ROOT, "f")), Errno::NoEnt);
    // Still usable through its handles: attributes change, size grows.
    fs.setattr(&root(), f, SetAttr { size: Some(4096), through_write_handle: true, ..Default::default() })
        .expect("ftruncate");
    // But it cannot be linked back (ENOENT, as linkat on an unlinked file).
    assert_eq!(fs.attr(&root(), Op::Link { ino: f, new_parent: ROOT, new_name: "back".into() }), Err(Errno::NoEnt));
    assert!(read::reclaim_queue(&fs.store, 10).expect("reclaim").is_empty());
    fs.exec(&root(), Op::Close { ino: f, session: S1 }).expect("close");
    assert_eq!(fs.get(f).open_handles, 1);
    fs.exec(&root(), Op::Close { ino: f, session: SessionId(2) }).expect("close");
    assert!(fs.gone(f));
    assert_eq!(read::reclaim_queue(&fs.store, 10).expect("reclaim"), vec![f]);
    assert_eq!(read::statfs(&fs.store).expect("statfs").usage, super::types::Usage { inodes: 1, bytes: 0 });
    // A closed, still-linked file stays.
    let g = fs.mknod(&root(), ROOT, "g", 0o644).expect("mknod").ino;
    fs.attr(&root(), Op::Open { ino: g, session: S1, flags: rw }).expect("open");
    fs.exec(&root(), Op::Close { ino: g, session: S1 }).expect("close");
    assert_eq!(fs.get(g).open_handles, 0);
}

#[test]
fn close_handles_closes_each_and_skips_the_ones_already_gone() {
    let mut fs = Fs::new();
    let rw = OpenFlags { read: true, write: true, truncate: false };
    let ro = OpenFlags { read: true, write: false, truncate: false };
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("mknod").ino;
    let g = fs.mknod(&root(), ROOT, "g", 0o644).expect("mknod").ino;
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: rw }).expect("open");
    fs.attr(&root(), Op::Open { ino: f, session: S1, flags: ro }).expect("open");
    fs.attr(&root(), Op::Open { ino: g, session: S1, flags: rw }).expect("open");
    fs.unlink(&root(), ROOT, "f").expect("unlink");
    // g is closed twice (the second is not counted any more) and an inode that never existed
    // is named: both are skipped, the rest still applies.
    let handles = vec![(g, true), (InodeId(9999), false), (f, true), (g, true), (f, false)];
    assert_eq!(fs.exec(&root(), Op::CloseHandles { session: S1, handles }), Ok(Reply::Done));
    assert!(fs.gone(f), "the unlinked file went with its last handle");
    assert_eq!(read::reclaim_queue(&fs.store, 10).expect("reclaim"), vec![f]);
    assert_eq!(fs.get(g).open_handles, 0);
    // Another session's handles are not touched.
    fs.attr(&root(), Op::Open { ino: g, session: SessionId(2), flags: ro }).expect("open");
    fs.exec(&root(), Op::CloseHandles { session: S1, handles: vec![(g, false)] }).expect("close many");
    assert_eq!(fs.get(g).open_handles, 1);
}

#[test]
fn rename_replaces_and_moves() {
    let mut fs = Fs::new();
    let a = fs.mkdir(&root(), ROOT, "a", 0o755).expect("a").ino;
    let b = fs.mkdir(&root(), ROOT, "b", 0o755).expect("b").ino;
    let f = fs.mknod(&root(), a, "f", 0o644).expect("f").ino;
    let g = fs.mknod(&root(), b, "g", 0o644).expect("g").ino;
    // File over file: the target loses a link and, unlinked and closed, is removed.
    fs.rename(&root(), a, "f", b, "g").expect("rename");
    assert_eq!(fs.ino(b, "g"), f);
    assert!(fs.gone(g));
    assert_eq!(errno(fs.lookup(&root(), a, "f")), Errno::NoEnt);
    // Directory move: `..` and both parents' link counts follow.
    let sub = fs.mkdir(&root(), a, "sub", 0o755).expect("sub").ino;
    assert_eq!(fs.get(a).nlink, 3);
    fs.rename(&root(), a, "sub", b, "sub2").expect("move dir");
    assert_eq!(fs.get(a).nlink, 2);
    assert_eq!(fs.get(b).nlink, 3);
    assert_eq!(fs.get(sub).parent, b);
    assert_eq!(fs.lookup(&root(), sub, "..").expect("..").ino, b);
    // Directory over an empty directory.
    let empty = fs.mkdir(&root(), a, "empty", 0o755).expect("empty").ino;
    fs.rename(&root(), b, "sub2", a, "empty").expect("dir over empty dir");
    assert!(fs.gone(empty));
    assert_eq!((fs.get(a).nlink, fs.get(b).nlink), (3, 2));
    assert_eq!(fs.get(sub).parent, a);
    // Same inode: nothing happens.
    fs.attr(&root(), Op::Link { ino: f, new_parent: b, new_name: "f2".into() }).expect("link");
    fs.rename(&root(), b, "g", b, "f2").expect("same inode");
    assert_eq!(fs.get(f).nlink, 2);
    assert_eq!(fs.ino(b, "g"), f);
    // In place (same name) is a no-op too.
    fs.rename(&root(), b, "g", b, "g").expect("same entry");
    assert_eq!(fs.ino(b, "g"), f);
}

#[test]
fn rename_errors() {
    let mut fs = Fs::new();
    let a = fs.mkdir(&root(), ROOT, "a", 0o755).expect("a").ino;
    let sub = fs.mkdir(&root(), a, "sub", 0o755).expect("sub").ino;
    let deep = fs.mkdir(&root(), sub, "deep", 0o755).expect("deep").ino;
    fs.mknod(&root(), deep, "x", 0o644).expect("x");
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("f").ino;
    let full = fs.mkdir(&root(), ROOT, "full", 0o755).expect("full").ino;
    fs.mknod(&root(), full, "y", 0o644).expect("y");
    // Into itself or a descendant.
    assert_eq!(fs.rename(&root(), ROOT, "a", a, "a2"), Err(Errno::Inval));
    assert_eq!(fs.rename(&root(), ROOT, "a", deep, "a2"), Err(Errno::Inval));
    // Onto an ancestor of the source (rename(2)'s trap).
    assert_eq!(fs.rename(&root(), sub, "deep", ROOT, "a"), Err(Errno::NotEmpty));
    // Type mismatches and non-empty targets.
    assert_eq!(fs.rename(&root(), ROOT, "a", ROOT, "f"), Err(Errno::NotDir));
    assert_eq!(fs.rename(&root(), ROOT, "f", ROOT, "a"), Err(Errno::IsDir));
    assert_eq!(fs.rename(&root(), ROOT, "a", ROOT, "full"), Err(Errno::NotEmpty));
    assert_eq!(fs.rename(&root(), ROOT, "nope", ROOT, "x"), Err(Errno::NoEnt));
    assert_eq!(fs.rename(&root(), ROOT, "f", InodeId(99), "x"), Err(Errno::NoEnt));
    assert_eq!(fs.rename(&root(), ROOT, "f", f, "x"), Err(Errno::NotDir));
    assert_eq!(fs.rename(&root(), ROOT, ".", ROOT, "x"), Err(Errno::Busy));
    assert_eq!(fs.rename(&root(), ROOT, "f", ROOT, &"n".repeat(256)), Err(Errno::NameTooLong));
    // Flags.
    let noreplace = RenameFlags { noreplace: true, exchange: false };
    assert_eq!(fs.rename2(&root(), ROOT, "f", ROOT, "full", noreplace), Err(Errno::Exist));
    fs.rename2(&root(), ROOT, "f", ROOT, "f3", noreplace).expect("noreplace to a free name");
    let both = RenameFlags { noreplace: true, exchange: true };
    assert_eq!(fs.rename2(&root(), ROOT, "f3", ROOT, "full", both), Err(Errno::Inval));
    let exchange = RenameFlags { noreplace: false, exchange: true };
    assert_eq!(fs.rename2(&root(), ROOT, "f3", ROOT, "missing", exchange), Err(Errno::NoEnt));
    assert_eq!(fs.rename2(&root(), sub, "deep", ROOT, "a", exchange), Err(Errno::Inval));
    // Nothing above changed the tree.
    assert_eq!(fs.names(ROOT), ["a", "f3", "full"]);
    assert_eq!(fs.get(ROOT).nlink, 4);
    assert_eq!(fs.get(a).nlink, 3);
}

#[test]
fn rename_exchange_swaps_and_fixes_parents() {
    let mut fs = Fs::new();
    let a = fs.mkdir(&root(), ROOT, "a", 0o755).expect("a").ino;
    let b = fs.mkdir(&root(), ROOT, "b", 0o755).expect("b").ino;
    let dir = fs.mkdir(&root(), a, "dir", 0o755).expect("dir").ino;
    fs.mknod(&root(), dir, "inside", 0o644).expect("inside");
    let file = fs.mknod(&root(), b, "file", 0o644).expect("file").ino;
    let exchange = RenameFlags { noreplace: false, exchange: true };
    // A non-empty directory and a file swap places: allowed with RENAME_EXCHANGE.
    fs.rename2(&root(), a, "dir", b, "file", exchange).expect("exchange");
    assert_eq!(fs.ino(a, "dir"), file);
    assert_eq!(fs.ino(b, "file"), dir);
    assert_eq!(fs.get(dir).parent, b);
    assert_eq!((fs.get(a).nlink, fs.get(b).nlink), (2, 3));
    assert_eq!(fs.get(file).nlink, 1);
    assert_eq!(fs.get(dir).nlink, 2);
}

#[test]
fn rename_over_open_file_keeps_it_until_close() {
    let mut fs = Fs::new();
    let victim = fs.mknod(&root(), ROOT, "victim", 0o644).expect("victim").ino;
    fs.mknod(&root(), ROOT, "new", 0o644).expect("new");
    fs.attr(&root(), Op::Open { ino: victim, session: S1, flags: OpenFlags { read: true, ..Default::default() } })
        .expect("open");
    fs.rename(&root(), ROOT, "new", ROOT, "victim").expect("rename");
    assert_eq!(fs.get(victim).nlink, 0);
    fs.exec(&root(), Op::Close { ino: victim, session: S1 }).expect("close");
    assert!(fs.gone(victim));
}

#[test]
fn symlinks() {
    let mut fs = Fs::new();
    let s = fs
        .attr(&root(), Op::Symlink { parent: ROOT, name: "s".into(), target: b"/etc/passwd".to_vec() })
        .expect("symlink");
    assert_eq!((s.kind, s.size, s.mode), (FileKind::Symlink, 11, 0o777));
    assert_eq!(read::readlink(&fs.store, s.ino).expect("readlink"), b"/etc/passwd");
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("f").ino;
    assert_eq!(errno(read::readlink(&fs.store, f)), Errno::Inval);
    let sym = |name: &str, target: Vec<u8>| Op::Symlink { parent: ROOT, name: name.into(), target };
    assert_eq!(fs.attr(&root(), sym("e", Vec::new())), Err(Errno::NoEnt));
    assert_eq!(fs.attr(&root(), sym("long", vec![b'a'; 4096])), Err(Errno::NameTooLong));
    assert!(fs.attr(&root(), sym("max", vec![b'a'; 4095])).is_ok());
    assert_eq!(fs.attr(&root(), sym("s", b"x".to_vec())), Err(Errno::Exist));
    // Symlinks can be hard-linked and renamed like files.
    fs.attr(&root(), Op::Link { ino: s.ino, new_parent: ROOT, new_name: "s2".into() }).expect("link symlink");
    fs.unlink(&root(), ROOT, "s").expect("unlink");
    assert_eq!(read::readlink(&fs.store, fs.ino(ROOT, "s2")).expect("readlink"), b"/etc/passwd");
}

#[test]
fn search_and_write_permission_on_directories() {
    let mut fs = Fs::new();
    let private = fs.mkdir(&root(), ROOT, "private", 0o700).expect("private").ino;
    fs.mknod(&root(), private, "f", 0o644).expect("f");
    assert_eq!(errno(fs.lookup(&alice(), private, "f")), Errno::Acces);
    assert_eq!(errno(read::readdir(&fs.store, &alice(), private, 0, 10, false)), Errno::Acces);
    assert_eq!(fs.mknod(&alice(), private, "g", 0o644), Err(Errno::Acces));
    assert_eq!(fs.unlink(&alice(), private, "f"), Err(Errno::Acces));
    assert_eq!(fs.mkdir(&alice(), ROOT, "x", 0o755), Err(Errno::Acces));
    // Execute-only: lookups work, listing does not.
    let xonly = fs.mkdir(&root(), ROOT, "xonly", 0o711).expect("xonly").ino;
    fs.mknod(&root(), xonly, "f", 0o644).expect("f");
    assert!(fs.lookup(&alice(), xonly, "f").is_ok());
    assert_eq!(errno(read::readdir(&fs.store, &alice(), xonly, 0, 10, false)), Errno::Acces);
    // Group permission through a supplementary group.
    let shared = fs.mkdir(&root(), ROOT, "shared", 0o770).expect("shared").ino;
    fs.setattr(&root(), shared, SetAttr { gid: Some(50), ..Default::default() }).expect("chgrp");
    let member = Caller { uid: 1000, gid: 1000, groups: vec![50] };
    assert!(fs.mknod(&member, shared, "mine", 0o644).is_ok());
    assert_eq!(fs.mknod(&alice(), shared, "no", 0o644), Err(Errno::Acces));
    // Owner bits take precedence even when they deny more than group bits.
    let odd = fs.mkdir(&root(), ROOT, "odd", 0o077).expect("odd").ino;
    fs.setattr(&root(), odd, SetAttr { uid: Some(1000), ..Default::default() }).expect("chown");
    assert_eq!(errno(fs.lookup(&alice(), odd, "x")), Errno::Acces);
    assert_eq!(errno(read::access(&fs.store, &alice(), odd, 1)), Errno::Acces);
    assert!(read::access(&fs.store, &bob(), odd, 7).is_ok());
    // Root bypasses read/write but needs an x bit to execute a file.
    let f = fs.mknod(&root(), ROOT, "nox", 0o600).expect("nox").ino;
    assert_eq!(errno(read::access(&fs.store, &root(), f, 1)), Errno::Acces);
    assert!(read::access(&fs.store, &root(), f, 6).is_ok());
}

#[test]
fn sticky_directories() {
    let mut fs = Fs::new();
    let tmp = fs.mkdir(&root(), ROOT, "tmp", 0o1777).expect("tmp").ino;
    assert_eq!(fs.get(tmp).mode, 0o1777);
    fs.mknod(&alice(), tmp, "alice", 0o644).expect("alice's file");
    fs.mknod(&bob(), tmp, "bob", 0o644).expect("bob's file");
    assert_eq!(fs.unlink(&bob(), tmp, "alice"), Err(Errno::Perm));
    assert_eq!(fs.rename(&bob(), tmp, "alice", tmp, "stolen"), Err(Errno::Perm));
    assert_eq!(fs.rename(&bob(), tmp, "bob", tmp, "alice"), Err(Errno::Perm), "replacing another's file");
    fs.rename(&bob(), tmp, "bob", tmp, "bob2").expect("own file");
    fs.unlink(&alice(), tmp, "alice").expect("own file");
    // The directory's owner may remove anything in it.
    fs.setattr(&root(), tmp, SetAttr { uid: Some(1000), ..Default::default() }).expect("chown");
    fs.unlink(&alice(), tmp, "bob2").expect("dir owner");
}

#[test]
fn setgid_directories_inherit() {
    let mut fs = Fs::new();
    let g = fs.mkdir(&root(), ROOT, "g", 0o777).expect("g").ino;
    fs.setattr(&root(), g, SetAttr { gid: Some(50), mode: Some(0o2777), ..Default::default() }).expect("setgid");
    assert_eq!(fs.get(g).mode, 0o2777);
    let f = fs.mknod(&alice(), g, "f", 0o644).expect("f");
    assert_eq!(f.gid, 50);
    let sub = fs.mkdir(&alice(), g, "sub", 0o755).expect("sub");
    assert_eq!((sub.gid, sub.mode), (50, 0o2755));
    // A non-member creating a setgid, group-executable file loses the setgid bit.
    let sg = fs.mknod(&alice(), g, "sg", 0o2755).expect("sg");
    assert_eq!(sg.mode, 0o755);
    let member = Caller { uid: 1000, gid: 1000, groups: vec![50] };
    assert_eq!(fs.mknod(&member, g, "sg2", 0o2755).expect("sg2").mode, 0o2755);
    // Outside a setgid directory the creator's primary group is used.
    let plain = fs.mkdir(&root(), ROOT, "plain", 0o777).expect("plain").ino;
    assert_eq!(fs.mknod(&member, plain, "x", 0o644).expect("x").gid, 1000);
    assert_eq!(fs.mkdir(&root(), ROOT, "m", 0o7777).expect("m").mode, 0o1777, "mkdir drops setuid/setgid");
}

#[test]
fn chmod_and_chown_rules() {
    let mut fs = Fs::new();
    alice_in_root(&mut fs);
    let f = fs.mknod(&alice(), ROOT, "f", 0o644).expect("f").ino;
    assert_eq!(fs.setattr(&bob(), f, SetAttr { mode: Some(0o777), ..Default::default() }), Err(Errno::Perm));
    let a = fs.setattr(&alice(), f, SetAttr { mode: Some(0o6755), ..Default::default() }).expect("chmod");
    assert_eq!(a.mode, 0o6755);
    // chmod by a non-member clears setgid.
    fs.setattr(&root(), f, SetAttr { gid: Some(50), ..Default::default() }).expect("chgrp");
    fs.setattr(&root(), f, SetAttr { mode: Some(0o6755), ..Default::default() }).expect("chmod");
    let a = fs.setattr(&alice(), f, SetAttr { mode: Some(0o6755), ..Default::default() }).expect("chmod");
    assert_eq!(a.mode, 0o4755);
    // chown: only root gives away files; the owner may change the group to one of its groups.
    assert_eq!(fs.setattr(&alice(), f, SetAttr { uid: Some(1001), ..Default::default() }), Err(Errno::Perm));
    assert_eq!(fs.setattr(&alice(), f, SetAttr { gid: Some(60), ..Default::default() }), Err(Errno::Perm));
    assert_eq!(fs.setattr(&bob(), f, SetAttr { gid: Some(1001), ..Default::default() }), Err(Errno::Perm));
    let member = Caller { uid: 1000, gid: 1000, groups: vec![60] };
    fs.setattr(&root(), f, SetAttr { mode: Some(0o6755), ..Default::default() }).expect("chmod");
    let a = fs.setattr(&member, f, SetAttr { gid: Some(60), ..Default::default() }).expect("chgrp");
    assert_eq!((a.gid, a.mode), (60, 0o755), "chown clears setuid and setgid (group-executable)");
    let a = fs.setattr(&alice(), f, SetAttr { uid: Some(1000), ..Default::default() }).expect("chown to self");
    assert_eq!(a.uid, 1000);
    // Root's chown of a file also clears setuid, as on Linux; setgid without group-exec stays.
    fs.setattr(&root(), f, SetAttr { mode: Some(0o6745), ..Default::default() }).expect("chmod");
    let a = fs.setattr(&root(), f, SetAttr { uid: Some(1001), gid: Some(1001), ..Default::default() }).expect("chown");
    assert_eq!((a.uid, a.gid, a.mode), (1001, 1001, 0o2745));
    // Directories keep their bits on chown.
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("d").ino;
    fs.setattr(&root(), d, SetAttr { mode: Some(0o3755), ..Default::default() }).expect("chmod");
    assert_eq!(fs.setattr(&root(), d, SetAttr { uid: Some(5), ..Default::default() }).expect("chown").mode, 0o3755);
    assert_eq!(fs.get(d).ctime, Timespec::new(fs.clock, 0));
}

#[test]
fn truncate_rules() {
    let mut fs = Fs::new();
    alice_in_root(&mut fs);
    let f = fs.mknod(&alice(), ROOT, "f", 0o6755).expect("f").ino;
    assert_eq!(fs.setattr(&bob(), f, SetAttr { size: Some(1), ..Default::default() }), Err(Errno::Acces));
    let a = fs.setattr(&alice(), f, SetAttr { size: Some(1 << 30), ..Default::default() }).expect("truncate");
    assert_eq!((a.size, a.mode), (1 << 30, 0o755), "a write by a non-root caller drops setuid/setgid");
    assert_eq!(read::statfs(&fs.store).expect("statfs").usage.bytes, 1 << 30);
    // Through a writable handle, no permission check (ftruncate).
    fs.setattr(&root(), f, SetAttr { mode: Some(0o444), ..Default::default() }).expect("chmod");
    fs.setattr(&alice(), f, SetAttr { size: Some(10), through_write_handle: true, ..Default::default() })
        .expect("ftruncate");
    assert_eq!(fs.get(f).size, 10);
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("d").ino;
    assert_eq!(fs.setattr(&root(), d, SetAttr { size: Some(0), ..Default::default() }), Err(Errno::IsDir));
    let s = fs.attr(&root(), Op::Symlink { parent: ROOT, name: "s".into(), target: b"x".to_vec() }).expect("s").ino;
    assert_eq!(fs.setattr(&root(), s, SetAttr { size: Some(0), ..Default::default() }), Err(Errno::Inval));
    assert_eq!(fs.setattr(&root(), f, SetAttr { size: Some(u64::MAX), ..Default::default() }), Err(Errno::FBig));
}

#[test]
fn utimens_rules() {
    let mut fs = Fs::new();
    alice_in_root(&mut fs);
    let f = fs.mknod(&alice(), ROOT, "f", 0o666).expect("f").ino;
    let at = Timespec::new(12345, 678);
    let explicit = SetAttr { atime: Some(TimeSet::At(at)), mtime: Some(TimeSet::At(at)), ..Default::default() };
    assert_eq!(fs.setattr(&bob(), f, explicit.clone()), Err(Errno::Perm));
    let a = fs.setattr(&alice(), f, explicit).expect("owner sets times");
    assert_eq!((a.atime, a.mtime), (at, at));
    assert_eq!(a.ctime, Timespec::new(fs.clock, 0), "ctime is the proposer's now");
    // UTIME_NOW: anyone with write permission.
    let now = SetAttr { atime: Some(TimeSet::Now), mtime: Some(TimeSet::Now), ..Default::default() };
    let a = fs.setattr(&bob(), f, now.clone()).expect("writer sets now");
    assert_eq!(a.mtime, Timespec::new(fs.clock, 0));
    let at = a.atime;
    fs.setattr(&alice(), f, SetAttr { mode: Some(0o644), ..Default::default() }).expect("chmod");
    assert_eq!(fs.setattr(&bob(), f, now), Err(Errno::Acces));
    // UTIME_OMIT for one of them leaves it alone.
    let only_m = SetAttr { mtime: Some(TimeSet::At(Timespec::new(1, 2))), ..Default::default() };
    let a = fs.setattr(&alice(), f, only_m).expect("mtime only");
    assert_eq!((a.atime, a.mtime), (at, Timespec::new(1, 2)));
    // Nothing to change: nothing changes, not even ctime.
    let before = fs.get(f);
    assert_eq!(fs.setattr(&bob(), f, SetAttr::default()).expect("noop"), before);
}

#[test]
fn xattrs() {
    let mut fs = Fs::new();
    alice_in_root(&mut fs);
    let f = fs.mknod(&alice(), ROOT, "f", 0o644).expect("f").ino;
    let set = |name: &str, value: &[u8], mode| Op::SetXattr { ino: f, name: name.into(), value: value.to_vec(), mode };
    fs.exec(&alice(), set("user.a", b"1", XattrMode::Create)).expect("create");
    assert_eq!(fs.exec(&alice(), set("user.a", b"2", XattrMode::Create)), Err(Errno::Exist));
    assert_eq!(fs.exec(&alice(), set("user.b", b"2", XattrMode::Replace)), Err(Errno::NoData));
    fs.exec(&alice(), set("user.a", b"3", XattrMode::Replace)).expect("replace");
    fs.exec(&alice(), set("user.b", b"", XattrMode::Any)).expect("empty value");
    assert_eq!(read::getxattr(&fs.store, &alice(), f, b"user.a").expect("get"), b"3");
    assert_eq!(read::getxattr(&fs.store, &alice(), f, b"user.b").expect("get"), b"");
    assert_eq!(errno(read::getxattr(&fs.store, &alice(), f, b"user.zz")), Errno::NoData);
    assert_eq!(read::listxattr(&fs.store, &alice(), f).expect("list"), vec![b"user.a".to_vec(), b"user.b".to_vec()]);
    // Names and sizes.
    assert_eq!(fs.exec(&alice(), set("bogus.a", b"", XattrMode::Any)), Err(Errno::OpNotSupp));
    assert_eq!(fs.exec(&alice(), set("system.posix_acl_access", b"", XattrMode::Any)), Err(Errno::OpNotSupp));
    assert_eq!(fs.exec(&alice(), set("user.", b"", XattrMode::Any)), Err(Errno::Inval));
    assert_eq!(fs.exec(&alice(), set("", b"", XattrMode::Any)), Err(Errno::Range));
    assert_eq!(fs.exec(&alice(), set(&format!("user.{}", "n".repeat(251)), b"", XattrMode::Any)), Err(Errno::Range));
    assert_eq!(fs.exec(&alice(), set("user.big", &vec![0; 65537], XattrMode::Any)), Err(Errno::TooBig));
    fs.exec(&alice(), set("user.max", &vec![0; 65536], XattrMode::Any)).expect("64 KiB value");
    // Permissions: user.* needs write permission; trusted.* is root's and hidden from others.
    assert_eq!(fs.exec(&bob(), set("user.c", b"", XattrMode::Any)), Err(Errno::Acces));
    assert!(read::getxattr(&fs.store, &bob(), f, b"user.a").is_ok());
    assert_eq!(fs.exec(&alice(), set("trusted.t", b"", XattrMode::Any)), Err(Errno::Perm));
    fs.exec(&root(), set("trusted.t", b"secret", XattrMode::Any)).expect("trusted");
    assert_eq!(errno(read::getxattr(&fs.store, &alice(), f, b"trusted.t")), Errno::NoData);
    assert_eq!(read::listxattr(&fs.store, &alice(), f).expect("list").len(), 3);
    assert_eq!(read::listxattr(&fs.store, &root(), f).expect("list").len(), 4);
    // user.* on a symlink is refused (EPERM to set, ENODATA to get).
    let s = fs.attr(&root(), Op::Symlink { parent: ROOT, name: "s".into(), target: b"f".to_vec() }).expect("s").ino;
    let on_symlink = Op::SetXattr { ino: s, name: "user.x".into(), value: Vec::new(), mode: XattrMode::Any };
    assert_eq!(fs.exec(&root(), on_symlink), Err(Errno::Perm));
    assert_eq!(errno(read::getxattr(&fs.store, &root(), s, b"user.x")), Errno::NoData);
    // Remove.
    let remove = |name: &str| Op::RemoveXattr { ino: f, name: name.into() };
    fs.exec(&alice(), remove("user.a")).expect("remove");
    assert_eq!(fs.exec(&alice(), remove("user.a")), Err(Errno::NoData));
    // Per-inode total.
    for i in 0..14 {
        fs.exec(&root(), set(&format!("user.fill{i}"), &vec![0; 65536], XattrMode::Any)).expect("fill");
    }
    assert_eq!(fs.exec(&root(), set("user.fill14", &vec![0; 65536], XattrMode::Any)), Err(Errno::NoSpc));
    // Removing the inode removes its xattrs.
    fs.unlink(&root(), ROOT, "f").expect("unlink");
    let (start, end) = keys::id_range(f.0);
    let mut left = 0;
    use cairn_coordinator::rsm::store::StateRead as _;
    fs.store
        .scan(keys::XATTRS, &start, Some(&end), false, &mut |_, _| {
            left += 1;
            true
        })
        .expect("scan");
    assert_eq!(left, 0);
}

#[test]
fn readdir_pages_and_plus() {
    let mut fs = Fs::new();
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("d").ino;
    let mut expected = Vec::new();
    for i in 0..50 {
        let name = format!("e{i:02}");
        fs.mknod(&root(), d, &name, 0o644).expect("mknod");
        expected.push(name);
    }
    assert_eq!(fs.names(d), expected);
    let page = read::readdir(&fs.store, &root(), d, 0, 1000, true).expect("readdir");
    assert!(page.eof);
    assert_eq!(page.entries.len(), 50);
    assert!(page.entries.windows(2).all(|w| w[0].cookie < w[1].cookie));
    assert!(page.entries.iter().all(|e| e.attr.as_ref().is_some_and(|(a, _)| a.ino == e.ino)));
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("f").ino;
    assert_eq!(errno(read::readdir(&fs.store, &root(), f, 0, 10, false)), Errno::NotDir);
    let last = page.entries.last().expect("entries").cookie;
    assert!(read::readdir(&fs.store, &root(), d, last, 10, false).expect("after last").entries.is_empty());
    assert!(read::readdir(&fs.store, &root(), d, u64::MAX, 10, false).expect("max cookie").eof);
}

#[test]
fn readdir_cookies_survive_concurrent_changes() {
    // Entries present for the whole listing are returned exactly once, whatever is added or
    // removed between pages; removed entries are never returned after their removal.
    let mut fs = Fs::new();
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("d").ino;
    let stable: Vec<String> = (0..200).map(|i| format!("stable{i}")).collect();
    for name in &stable {
        fs.mknod(&root(), d, name, 0o644).expect("mknod");
    }
    let doomed: Vec<String> = (0..100).map(|i| format!("doomed{i}")).collect();
    for name in &doomed {
        fs.mknod(&root(), d, name, 0o644).expect("mknod");
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cookie = 0;
    let mut round = 0;
    loop {
        let page = read::readdir(&fs.store, &root(), d, cookie, 9, false).expect("readdir");
        for e in &page.entries {
            seen.push(String::from_utf8(e.name.clone()).expect("utf8"));
            cookie = e.cookie;
        }
        if page.eof {
            break;
        }
        // Between pages: add new entries, remove some doomed ones, rename one.
        for i in 0..5 {
            fs.mknod(&root(), d, &format!("new{round}_{i}"), 0o644).expect("add");
        }
        if let Some(name) = doomed.get(round) {
            fs.unlink(&root(), d, name).expect("remove");
        }
        round += 1;
    }
    let mut counts = std::collections::HashMap::new();
    for name in &seen {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    assert!(counts.values().all(|&c| c == 1), "an entry was returned twice");
    for name in &stable {
        assert_eq!(counts.get(name), Some(&1), "{name} was skipped");
    }
    for (i, name) in doomed.iter().enumerate() {
        if i < round && counts.contains_key(name) {
            // Seen before removal is fine; it must not have been re-listed (checked above).
        }
    }
}

#[test]
fn readdir_never_splits_a_cookie_collision() {
    // Force a collision by writing two entries under one cookie directly.
    let mut fs = Fs::new();
    let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("d").ino;
    let a = fs.mknod(&root(), d, "a", 0o644).expect("a");
    let cookie = keys::name_cookie(b"a");
    let mut writes = WriteSet::new();
    let mut key = keys::dentry_seek(d, cookie);
    key.extend_from_slice(b"zz-collides");
    let entry = super::types::Dentry { ino: a.ino, kind: FileKind::Regular };
    writes.put(keys::DENTRIES, key, bincode::serialize(&entry).expect("encode"));
    fs.store.write(writes).expect("write");
    for name in ["b", "c", "d", "e"] {
        fs.mknod(&root(), d, name, 0o644).expect("mknod");
    }
    let mut all = Vec::new();
    let mut cookie = 0;
    loop {
        let page = read::readdir(&fs.store, &root(), d, cookie, 1, false).expect("readdir");
        let cookies: Vec<u64> = page.entries.iter().map(|e| e.cookie).collect();
        if cookies.len() > 1 {
            assert!(cookies.iter().all(|c| *c == cookies[0]), "an extended page holds only the collision");
        }
        for e in page.entries {
            all.push(e.name);
            cookie = e.cookie;
        }
        if page.eof {
            break;
        }
    }
    assert_eq!(all.len(), 6);
    assert!(all.contains(&b"zz-collides".to_vec()) && all.contains(&b"a".to_vec()));
}

#[test]
fn failed_commands_change_nothing_and_replicas_agree() {
    // Two stores applying the same command stream end identical (digest), errors included.
    let mut one = Fs::new();
    let mut two = Fs::new();
    let ops = |fs: &mut Fs| {
        let d = fs.mkdir(&root(), ROOT, "d", 0o755).expect("d").ino;
        let _ = fs.mkdir(&root(), ROOT, "d", 0o755);
        let _ = fs.rename(&root(), ROOT, "d", d, "loop");
        fs.mknod(&root(), d, "f", 0o644).expect("f");
        fs.rename(&root(), d, "f", ROOT, "g").expect("rename");
        let _ = fs.rmdir(&root(), ROOT, "nope");
    };
    ops(&mut one);
    ops(&mut two);
    assert_eq!(read::digest(&one.store).expect("digest"), read::digest(&two.store).expect("digest"));
    let before = read::digest(&one.store).expect("digest");
    let _ = one.rmdir(&root(), ROOT, "d");
    let _ = one.rename(&root(), ROOT, "g", ROOT, "d");
    assert_ne!(read::digest(&one.store).expect("digest"), before, "usage counters and times moved");
}

#[test]
fn undecodable_commands_answer_einval() {
    let fs = Fs::new();
    let mut writes = WriteSet::new();
    let out = apply_command(&fs.store, &mut writes, 99, b"\xff\xff garbage").expect("apply");
    assert_eq!(out, Err(Errno::Inval));
    assert!(writes.is_empty());
}

#[test]
fn inode_ids_are_never_reused_and_generation_is_the_log_index() {
    let mut fs = Fs::new();
    let a = fs.mknod(&root(), ROOT, "a", 0o644).expect("a");
    assert_eq!(a.generation, fs.index);
    fs.unlink(&root(), ROOT, "a").expect("unlink");
    let b = fs.mknod(&root(), ROOT, "a", 0o644).expect("a again");
    assert!(b.ino > a.ino);
    let _ = (S_ISUID, S_ISGID, S_ISVTX);
}

// ---- sessions and file locks ----

use super::locks;
use super::types::{LockKind, LockOwner, LOCK_END_EOF};

const SH: LockKind = LockKind::Shared;
const EX: LockKind = LockKind::Exclusive;
const UN: LockKind = LockKind::Unlock;

fn own(session: SessionId, owner: u64) -> LockOwner {
    LockOwner { session, owner }
}

impl Fs {
    /// A regular file open in sessions 1 and 2.
    fn locked_file(&mut self, name: &str) -> InodeId {
        let f = self.mknod(&root(), ROOT, name, 0o644).expect("mknod").ino;
        for s in [S1, SessionId(2)] {
            self.attr(&root(), Op::Open { ino: f, session: s, flags: OpenFlags { read: true, ..Default::default() } })
                .expect("open");
        }
        f
    }

    fn setlk(&mut self, ino: InodeId, o: LockOwner, kind: LockKind, start: u64, len: u64) -> Result<u64, Errno> {
        let pid = o.owner as u32 + 100;
        match self.exec(&root(), Op::SetLock { ino, owner: o, pid, kind, start, len })? {
            Reply::Locked { token } => Ok(token),
            other => panic!("setlk: {other:?}"),
        }
    }

    fn flock(&mut self, ino: InodeId, o: LockOwner, kind: LockKind) -> Result<u64, Errno> {
        match self.exec(&root(), Op::Flock { ino, owner: o, pid: 7, kind })? {
            Reply::Locked { token } => Ok(token),
            other => panic!("flock: {other:?}"),
        }
    }

    fn getlk(
        &self,
        ino: InodeId,
        o: LockOwner,
        kind: LockKind,
        start: u64,
        len: u64,
    ) -> Option<(LockKind, u64, u64, u32)> {
        locks::get_lock(&self.store, ino, o, kind, start, len)
            .expect("getlk")
            .map(|l| (l.kind, l.start, locks::len_of(l.start, l.end), l.pid))
    }

    /// One owner's ranges as (start, end, kind).
    fn ranges(&self, ino: InodeId, o: LockOwner) -> Vec<(u64, u64, LockKind)> {
        locks::posix_locks(&self.store, ino)
            .expect("locks")
            .into_iter()
            .filter(|l| l.owner == o)
            .map(|l| (l.start, l.end, l.kind))
            .collect()
    }
}

#[test]
fn posix_locks_split_merge_and_unlock_sub_ranges() {
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let a = own(S1, 1);
    fs.setlk(f, a, SH, 0, 10).expect("lock");
    fs.setlk(f, a, SH, 10, 10).expect("adjacent lock");
    assert_eq!(fs.ranges(f, a), vec![(0, 20, SH)], "adjacent same-type ranges merge");
    fs.setlk(f, a, EX, 5, 5).expect("upgrade a middle part");
    assert_eq!(fs.ranges(f, a), vec![(0, 5, SH), (5, 10, EX), (10, 20, SH)]);
    fs.setlk(f, a, UN, 12, 3).expect("unlock a hole");
    assert_eq!(fs.ranges(f, a), vec![(0, 5, SH), (5, 10, EX), (10, 12, SH), (15, 20, SH)]);
    fs.setlk(f, a, SH, 0, 0).expect("downgrade all to EOF");
    assert_eq!(fs.ranges(f, a), vec![(0, LOCK_END_EOF, SH)]);
    fs.setlk(f, a, UN, 100, 0).expect("unlock the tail");
    assert_eq!(fs.ranges(f, a), vec![(0, 100, SH)]);
    fs.setlk(f, a, UN, 0, 0).expect("unlock all");
    assert!(fs.ranges(f, a).is_empty());
    assert_eq!(fs.setlk(f, a, UN, 0, 0), Ok(0), "unlocking nothing succeeds");
    assert_eq!(fs.setlk(f, a, SH, u64::MAX, 1), Err(Errno::Inval));
    assert_eq!(fs.setlk(f, a, SH, 1, i64::MAX as u64 + 1), Err(Errno::Inval));
}

#[test]
fn posix_conflicts_between_owners_and_getlk() {
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let (a, b, c) = (own(S1, 1), own(S1, 2), own(SessionId(2), 1));
    fs.setlk(f, a, SH, 0, 100).expect("shared");
    fs.setlk(f, b, SH, 50, 100).expect("shared + shared");
    assert_eq!(fs.setlk(f, c, EX, 99, 1), Err(Errno::Again), "exclusive vs shared");
    assert_eq!(fs.getlk(f, c, EX, 99, 1), Some((SH, 0, 100, 101)), "holder's pid reported");
    fs.setlk(f, c, EX, 150, 0).expect("adjacent to EOF is free");
    assert_eq!(fs.getlk(f, a, SH, 200, 1), Some((EX, 150, 0, 101)), "len 0 = to EOF");
    assert_eq!(fs.setlk(f, a, SH, 1 << 40, 1), Err(Errno::Again), "EOF lock covers far offsets");
    assert_eq!(fs.getlk(f, a, EX, 0, 50), None, "own locks never conflict");
    assert_eq!(fs.getlk(f, c, SH, 0, 150), None, "shared vs shared");
    assert_eq!(errno(locks::get_lock(&fs.store, f, a, UN, 0, 0)), Errno::Inval);
    // Upgrade refused: the owner keeps its shared lock.
    assert_eq!(fs.setlk(f, a, EX, 0, 100), Err(Errno::Again));
    assert_eq!(fs.ranges(f, a), vec![(0, 100, SH)]);
    fs.setlk(f, b, UN, 0, 0).expect("unlock b");
    fs.setlk(f, a, EX, 0, 100).expect("upgrade once alone");
    assert_eq!(fs.getlk(f, b, SH, 10, 1), Some((EX, 0, 100, 101)));
}

#[test]
fn flock_shared_exclusive_and_conversions() {
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let (a, b) = (own(S1, 1), own(SessionId(2), 9));
    fs.flock(f, a, SH).expect("sh");
    fs.flock(f, b, SH).expect("sh + sh");
    assert_eq!(fs.flock(f, b, EX), Err(Errno::Again), "upgrade blocked by another shared holder");
    fs.flock(f, a, UN).expect("un");
    fs.flock(f, b, EX).expect("upgrade");
    assert_eq!(fs.flock(f, a, SH), Err(Errno::Again));
    fs.flock(f, b, SH).expect("downgrade");
    fs.flock(f, a, SH).expect("now shared");
    // flock and POSIX locks are independent.
    fs.setlk(f, a, EX, 0, 0).expect("posix lock alongside flock");
    assert!(locks::flocks(&fs.store, f).expect("flocks").len() == 2);
}

#[test]
fn fencing_tokens_strictly_increase() {
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let g = fs.locked_file("g");
    let a = own(S1, 1);
    let mut last = 0;
    for t in [
        fs.setlk(f, a, SH, 0, 10),
        fs.setlk(g, a, EX, 0, 0),
        fs.flock(f, a, EX),
        fs.setlk(f, a, EX, 0, 10),
        fs.flock(g, own(SessionId(2), 1), SH),
    ] {
        let t = t.expect("grant");
        assert!(t > last, "token {t} after {last}");
        last = t;
    }
    assert_eq!(fs.setlk(f, a, UN, 0, 0), Ok(0), "an unlock grants nothing");
    assert!(fs.flock(f, a, SH).expect("grant") > last);
}

#[test]
fn locks_need_a_live_session_with_the_file_open() {
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let g = fs.mknod(&root(), ROOT, "g", 0o644).expect("mknod").ino;
    assert_eq!(fs.setlk(g, own(S1, 1), SH, 0, 0), Err(Errno::BadF), "not open in the session");
    assert_eq!(fs.setlk(f, own(SessionId(77), 1), SH, 0, 0), Err(Errno::BadF), "no such session");
    assert_eq!(fs.flock(InodeId(9999), own(S1, 1), SH), Err(Errno::BadF));
    let open = Op::Open { ino: g, session: SessionId(77), flags: OpenFlags { read: true, ..Default::default() } };
    assert_eq!(fs.attr(&root(), open).map(|_| ()), Err(Errno::BadF), "handles need a live session");
}

#[test]
fn release_owner_and_last_close_release_locks() {
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let (a, b) = (own(S1, 1), own(S1, 2));
    fs.setlk(f, a, EX, 0, 10).expect("lock");
    fs.flock(f, a, EX).expect("flock");
    fs.setlk(f, b, EX, 20, 10).expect("lock");
    fs.exec(&root(), Op::ReleaseOwner { ino: f, owner: a, posix: true, flock: false }).expect("release");
    assert!(fs.ranges(f, a).is_empty());
    assert_eq!(fs.flock(f, own(SessionId(2), 1), SH), Err(Errno::Again), "flock kept");
    fs.exec(&root(), Op::ReleaseOwner { ino: f, owner: a, posix: false, flock: true }).expect("release");
    fs.flock(f, own(SessionId(2), 1), SH).expect("flock free");
    // Session 1's last handle on f closes: b's lock goes too.
    fs.exec(&root(), Op::Close { ino: f, session: S1 }).expect("close");
    assert!(fs.ranges(f, b).is_empty());
}

#[test]
fn session_close_and_expiry_release_locks_and_close_handles() {
    let mut fs = Fs::new();
    let s3 = fs.open_session();
    let s4 = fs.open_session();
    assert_eq!((s3, s4), (SessionId(3), SessionId(4)), "ids come from a counter");
    let f = fs.mknod(&root(), ROOT, "f", 0o644).expect("mknod").ino;
    let rw = OpenFlags { read: true, write: true, truncate: false };
    for _ in 0..2 {
        fs.attr(&root(), Op::Open { ino: f, session: s3, flags: rw }).expect("open");
    }
    fs.attr(&root(), Op::Open { ino: f, session: s4, flags: rw }).expect("open");
    let t1 = fs.setlk(f, own(s3, 1), EX, 0, 0).expect("lock");
    fs.flock(f, own(s3, 2), EX).expect("flock");
    assert_eq!(fs.setlk(f, own(s4, 1), EX, 0, 0), Err(Errno::Again));
    // The file is unlinked while open in both sessions.
    fs.unlink(&root(), ROOT, "f").expect("unlink");

    // s3 expires (as the leader would propose); an unknown id in the batch is skipped.
    fs.exec(&root(), Op::ExpireSessions { ids: vec![s3, SessionId(999)] }).expect("expire");
    let inode = read::getattr(&fs.store, f).expect("still open in s4");
    assert_eq!(inode.open_handles, 1, "both of s3's handles closed");
    let t2 = fs.setlk(f, own(s4, 1), EX, 0, 0).expect("s3's lock released");
    assert!(t2 > t1);
    fs.flock(f, own(s4, 1), EX).expect("s3's flock released");
    assert_eq!(fs.setlk(f, own(s3, 1), SH, 0, 0), Err(Errno::BadF), "an expired session holds nothing");
    assert_eq!(fs.exec(&root(), Op::CloseSession { session: s3 }), Err(Errno::BadF));

    // s4 closes: its locks go, its handle closes, and the unlinked file is reclaimed.
    fs.exec(&root(), Op::CloseSession { session: s4 }).expect("close session");
    assert_eq!(errno(read::getattr(&fs.store, f)), Errno::NoEnt);
    assert!(fs.store.get(keys::RECLAIM, &keys::inode_key(f)).expect("get").is_some(), "queued for reclaim");
    for table in [keys::LOCKS, keys::FLOCKS, keys::SESSION_LOCKS, keys::SESSION_OPEN, keys::OPEN] {
        let mut rows = 0;
        fs.store
            .scan(table, &[], None, false, &mut |_, _| {
                rows += 1;
                true
            })
            .expect("scan");
        assert_eq!(rows, 0, "{table} left rows behind");
    }
    // Expiring an already-ended session is a no-op.
    fs.exec(&root(), Op::ExpireSessions { ids: vec![s4] }).expect("expire again");
}

#[test]
fn session_ttl_is_clamped() {
    let mut fs = Fs::new();
    let ask = |ttl_ms| Op::OpenSession { client_name: "c".into(), host: "h".into(), pid: 1, ttl_ms };
    assert!(matches!(fs.exec(&root(), ask(1)), Ok(Reply::Session { ttl_ms: 2_000, .. })));
    assert!(matches!(fs.exec(&root(), ask(u64::MAX)), Ok(Reply::Session { ttl_ms: 300_000, .. })));
    assert!(matches!(fs.exec(&root(), ask(10_000)), Ok(Reply::Session { ttl_ms: 10_000, .. })));
}

#[test]
fn lock_changes_are_reported_for_waiters() {
    use cairn_coordinator::rsm::App;
    let mut fs = Fs::new();
    let f = fs.locked_file("f");
    let ns = super::Namespace::new();
    let mut events = ns.lock_events();
    let command = Command {
        caller: root(),
        now: Timespec::new(5, 0),
        op: Op::SetLock { ino: f, owner: own(S1, 1), pid: 1, kind: EX, start: 0, len: 0 },
    };
    let mut writes = WriteSet::new();
    ns.apply(&fs.store, &mut writes, 100, &encode_command(&command)).expect("apply");
    assert!(events.try_recv().is_err(), "published only once applied");
    ns.applied();
    assert_eq!(events.try_recv().expect("event"), super::LockEvent::Inode(f));
}

// ---- Requests applied once ----

fn once(session: SessionId, seq: u64, done_below: u64, op: Op) -> Op {
    Op::Once { request: super::command::RequestId { session, seq, done_below }, op: Box::new(op) }
}

fn request_rows(fs: &Fs) -> usize {
    let mut rows = 0;
    fs.store
        .scan(keys::REQUESTS, &[], None, false, &mut |_, _| {
            rows += 1;
            true
        })
        .expect("scan");
    rows
}

#[test]
fn a_retried_request_gets_its_first_reply_and_changes_nothing() {
    let mut fs = Fs::new();
    let s = fs.open_session();
    let create = |name: &str| Op::Create {
        parent: ROOT,
        name: name.as_bytes().to_vec(),
        mode: 0o644,
        umask: 0,
        exclusive: true,
        session: Some(s),
        flags: OpenFlags { read: false, write: true, truncate: false },
    };

    // An exclusive create sent twice (its first answer lost): the same file, not EEXIST.
    let first = fs.exec(&root(), once(s, 1, 1, create("a"))).expect("create");
    assert_eq!(fs.exec(&root(), once(s, 1, 1, create("a"))), Ok(first.clone()));
    let Reply::Created { attr, created: true } = first else { panic!("{first:?}") };
    assert_eq!(read::getattr(&fs.store, attr.ino).expect("getattr").open_handles, 1, "opened once");
    // A new request for the same name is a new create.
    assert_eq!(fs.exec(&root(), once(s, 2, 1, create("a"))), Err(Errno::Exist));

    // A close retried closes one handle only; an unlink retried still succeeds.
    fs.attr(&root(), Op::Open { ino: attr.ino, session: s, flags: OpenFlags { read: true, ..Default::default() } })
        .expect("second open");
    let close = Op::Close { ino: attr.ino, session: s };
    fs.exec(&root(), once(s, 3, 3, close.clone())).expect("close");
    fs.exec(&root(), once(s, 3, 3, close)).expect("close again");
    assert_eq!(read::getattr(&fs.store, attr.ino).expect("getattr").open_handles, 1);
    let unlink = Op::Unlink { parent: ROOT, name: b"a".to_vec() };
    fs.exec(&root(), once(s, 4, 4, unlink.clone())).expect("unlink");
    fs.exec(&root(), once(s, 4, 4, unlink.clone())).expect("unlink again");
    assert_eq!(fs.exec(&root(), once(s, 5, 5, unlink)), Err(Errno::NoEnt));

    // Replies the client has had are forgotten: seq 1 and 3 were answered before seq 4 (the
    // other row is the session's "forgotten below" mark).
    assert_eq!(request_rows(&fs), 2, "only the newest reply is kept");
    assert_eq!(fs.exec(&root(), once(s, 1, 5, create("a"))).map(|r| matches!(r, Reply::Created { .. })), Ok(true));

    // Request 0 is not recorded; outside an open session nothing is recorded, and a closed
    // session's replies go.
    fs.exec(&root(), once(s, 0, 0, Op::Mkdir { parent: ROOT, name: b"d".to_vec(), mode: 0o755, umask: 0 }))
        .expect("mkdir");
    assert_eq!(
        fs.exec(&root(), once(s, 0, 0, Op::Mkdir { parent: ROOT, name: b"d".to_vec(), mode: 0o755, umask: 0 })),
        Err(Errno::Exist)
    );
    fs.exec(&root(), once(SessionId(999), 1, 1, create("b"))).expect("create without a session");
    fs.exec(&root(), Op::CloseSession { session: s }).expect("close session");
    assert_eq!(request_rows(&fs), 0);
}
