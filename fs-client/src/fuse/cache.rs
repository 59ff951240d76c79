//! What the mount answers without a metaserver round trip, never longer than the attribute TTL
//! after it was fetched (the staleness the kernel's own attribute cache already allows), and
//! always reflecting this client's own changes:
//!
//! * A directory's attributes, fetched in the background right after this client changed the
//!   directory. The kernel drops a directory's cached attributes after every entry change made
//!   through it (create, unlink, rename, ...) and, with default_permissions, asks for them again
//!   at the next permission check of a path through the directory: without this, every
//!   namespace operation in a directory costs one GETATTR round trip before the next one.
//! * The absence of `security.capability` on a file: the kernel asks for it before every
//!   write(2) (to drop file capabilities on write). A file this client created has no xattrs;
//!   an ENODATA answer is remembered too.
//!
//! Any change through this client forgets what it may have made stale. A rename or rmdir of a
//! directory forgets every directory's attributes: the FUSE request names the entry, not its
//! inode, whose ctime, nlink or ".." changed. Whether a name is a directory is known from the
//! names the kernel learnt directories under (every one came through a lookup, readdirplus or
//! mkdir answer of this client, or a rename by it), so renames of files keep the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::meta::Attr;
use tokio::sync::watch;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The outcome of a background fetch of a directory's attributes (`None` while in flight).
pub type DirFetch = watch::Receiver<Option<Option<Attr>>>;
/// Where the background fetch puts its outcome (`Some(None)`: it failed).
pub type DirFetchSender = watch::Sender<Option<Option<Attr>>>;

struct Prefetch {
    /// When the fetch was sent: the attributes are at least this recent.
    sent: Instant,
    attr: DirFetch,
}

/// The names under which the kernel may know a directory. A superset: stale names only cost a
/// needless forgetting.
#[derive(Default)]
struct DirNames {
    by_name: HashMap<(u64, Vec<u8>), u64>,
    by_ino: HashMap<u64, Vec<(u64, Vec<u8>)>>,
}

pub struct LocalCache {
    ttl: Duration,
    dir_names: Mutex<DirNames>,
    /// Directory inode → its attributes fetched after this client's last change of it. A
    /// change removes the entry (and starts a new fetch), so an entry is never older than the
    /// directory's last change through this client.
    dirs: Mutex<HashMap<u64, Prefetch>>,
    /// File inode → when it was last known to have no `security.capability` xattr.
    no_caps: Mutex<HashMap<u64, Instant>>,
    /// Bumped by every xattr change through this client, so an ENODATA answer that raced one
    /// is not remembered.
    xattr_changes: AtomicU64,
}

pub const CAPABILITY_XATTR: &[u8] = b"security.capability";

impl LocalCache {
    /// `ttl`: the attribute TTL; zero turns the cache off.
    pub fn new(ttl: Duration) -> LocalCache {
        LocalCache {
            ttl,
            dir_names: Mutex::new(DirNames::default()),
            dirs: Mutex::new(HashMap::new()),
            no_caps: Mutex::new(HashMap::new()),
            xattr_changes: AtomicU64::new(0),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Directory `ino` changed (or may have, `refetch` false: a failed change) through this
    /// client: its prefetched attributes are stale. With `refetch`, answers the sender the
    /// caller fills with the outcome of a GetAttr it sends now.
    pub fn dir_changed(&self, ino: u64, refetch: bool) -> Option<DirFetchSender> {
        let mut dirs = lock(&self.dirs);
        dirs.remove(&ino);
        if !refetch || self.ttl.is_zero() {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        dirs.insert(ino, Prefetch { sent: Instant::now(), attr: rx });
        Some(tx)
    }

    /// Directory `ino` changed through this client, which learnt its attributes as the change
    /// left them from the answer to a request sent at `sent`.
    pub fn dir_known(&self, ino: u64, attr: Attr, sent: Instant) {
        let mut dirs = lock(&self.dirs);
        dirs.remove(&ino);
        if self.ttl.is_zero() {
            return;
        }
        let (_, rx) = watch::channel(Some(Some(attr)));
        dirs.insert(ino, Prefetch { sent, attr: rx });
    }

    /// The kernel learnt (or may have) directory `ino` under `name` in `parent`.
    pub fn note_dir_name(&self, parent: u64, name: &[u8], ino: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut names = lock(&self.dir_names);
        let key = (parent, name.to_vec());
        if names.by_name.insert(key.clone(), ino) != Some(ino) {
            names.by_ino.entry(ino).or_default().push(key);
        }
    }

    /// The directory the kernel may know as `name` in `parent`.
    pub fn dir_named(&self, parent: u64, name: &[u8]) -> Option<u64> {
        lock(&self.dir_names).by_name.get(&(parent, name.to_vec())).copied()
    }

    /// Forgets every directory's prefetched attributes.
    pub fn all_dirs_changed(&self) {
        lock(&self.dirs).clear();
    }

    /// The prefetch of directory `ino`'s attributes, with when it was sent, if any is young
    /// enough to answer with.
    pub fn dir_attr(&self, ino: u64) -> Option<(Instant, DirFetch)> {
        let mut dirs = lock(&self.dirs);
        let p = dirs.get(&ino)?;
        if p.sent.elapsed() >= self.ttl {
            dirs.remove(&ino);
            return None;
        }
        Some((p.sent, p.attr.clone()))
    }

    /// What is left of the TTL for attributes fetched at `sent` (None: expired).
    pub fn remaining(&self, sent: Instant) -> Option<Duration> {
        self.ttl.checked_sub(sent.elapsed()).filter(|d| !d.is_zero())
    }

    /// File `ino` has no `security.capability` as of `since` (this client created it, or the
    /// metaserver answered ENODATA to a request sent then).
    pub fn note_no_caps(&self, ino: u64, since: Instant) {
        if !self.ttl.is_zero() {
            lock(&self.no_caps).insert(ino, since);
        }
    }

    /// Whether file `ino` is known, recently enough, to have no `security.capability`.
    pub fn knows_no_caps(&self, ino: u64) -> bool {
        let mut no_caps = lock(&self.no_caps);
        match no_caps.get(&ino) {
            Some(since) if since.elapsed() < self.ttl => true,
            Some(_) => {
                no_caps.remove(&ino);
                false
            }
            None => false,
        }
    }

    /// A count of xattr changes, to tell whether one happened while a getxattr was answered.
    pub fn xattr_changes(&self) -> u64 {
        self.xattr_changes.load(Ordering::SeqCst)
    }

    /// An xattr of `ino` changed (or may have) through this client.
    pub fn xattrs_changed(&self, ino: u64) {
        self.xattr_changes.fetch_add(1, Ordering::SeqCst);
        lock(&self.no_caps).remove(&ino);
    }

    /// The kernel forgot inode `ino`.
    pub fn forget(&self, ino: u64) {
        let mut names = lock(&self.dir_names);
        for key in names.by_ino.remove(&ino).unwrap_or_default() {
            if names.by_name.get(&key) == Some(&ino) {
                names.by_name.remove(&key);
            }
        }
        drop(names);
        lock(&self.dirs).remove(&ino);
        lock(&self.no_caps).remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_replaces_the_prefetch_and_a_failed_one_drops_it() {
        let cache = LocalCache::new(Duration::from_secs(60));
        assert!(cache.dir_attr(1).is_none());
        let tx = cache.dir_changed(1, true).expect("refetch");
        let (_, rx) = cache.dir_attr(1).expect("prefetch");
        tx.send(Some(Some(Attr { ino: 1, ..Default::default() }))).expect("send");
        assert_eq!((*rx.borrow()).flatten().map(|a| a.ino), Some(1));
        assert!(cache.dir_changed(1, false).is_none());
        assert!(cache.dir_attr(1).is_none(), "a failed change forgets the attributes");
        let _tx = cache.dir_changed(2, true);
        let _tx = cache.dir_changed(3, true);
        cache.all_dirs_changed();
        assert!(cache.dir_attr(2).is_none() && cache.dir_attr(3).is_none());
    }

    #[tokio::test]
    async fn attributes_a_change_answered_need_no_fetch() {
        let cache = LocalCache::new(Duration::from_secs(60));
        let sent = Instant::now();
        cache.dir_known(1, Attr { ino: 1, size: 7, ..Default::default() }, sent);
        let (since, mut rx) = cache.dir_attr(1).expect("known");
        assert_eq!(since, sent, "as old as the request that learnt them");
        let attr = *rx.wait_for(Option::is_some).await.expect("ready without a sender");
        assert_eq!(attr.flatten().map(|a| a.size), Some(7));
        // A later change through this client forgets them, as it forgets a prefetch.
        assert!(cache.dir_changed(1, false).is_none());
        assert!(cache.dir_attr(1).is_none());
        let off = LocalCache::new(Duration::ZERO);
        off.dir_known(1, Attr::default(), sent);
        assert!(off.dir_attr(1).is_none());
    }

    #[test]
    fn nothing_is_kept_past_the_ttl_or_with_a_zero_ttl() {
        let off = LocalCache::new(Duration::ZERO);
        assert!(off.dir_changed(1, true).is_none());
        off.note_no_caps(1, Instant::now());
        assert!(!off.knows_no_caps(1));

        let cache = LocalCache::new(Duration::from_millis(20));
        let _tx = cache.dir_changed(1, true);
        cache.note_no_caps(5, Instant::now());
        assert!(cache.knows_no_caps(5));
        assert!(cache.remaining(Instant::now()).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.dir_attr(1).is_none());
        assert!(!cache.knows_no_caps(5));
    }

    #[test]
    fn directory_names_are_known_until_the_inode_is_forgotten() {
        let cache = LocalCache::new(Duration::from_secs(60));
        cache.note_dir_name(1, b"a", 10);
        cache.note_dir_name(1, b"a", 10);
        cache.note_dir_name(2, b"b", 10);
        cache.note_dir_name(1, b"c", 11);
        assert_eq!((cache.dir_named(1, b"a"), cache.dir_named(2, b"b")), (Some(10), Some(10)));
        assert_eq!(cache.dir_named(1, b"b"), None);
        cache.note_dir_name(1, b"c", 12);
        cache.forget(10);
        assert_eq!((cache.dir_named(1, b"a"), cache.dir_named(2, b"b")), (None, None));
        cache.forget(11);
        assert_eq!(cache.dir_named(1, b"c"), Some(12), "the name now belongs to another inode");
        cache.forget(12);
        assert_eq!(cache.dir_named(1, b"c"), None);
    }

    #[test]
    fn xattr_changes_forget_the_absence_of_capabilities() {
        let cache = LocalCache::new(Duration::from_secs(60));
        cache.note_no_caps(7, Instant::now());
        let before = cache.xattr_changes();
        cache.xattrs_changed(7);
        assert!(!cache.knows_no_caps(7));
        assert_ne!(cache.xattr_changes(), before);
        cache.note_no_caps(8, Instant::now());
        cache.forget(8);
        assert!(!cache.knows_no_caps(8));
    }
}
