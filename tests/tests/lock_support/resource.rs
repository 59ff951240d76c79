//! The "resource" that lock holders of the lock tests update: a counter in a JSON file, standing
//! for any storage a lock protects (a database row, a file on a NAS, ...).
//!
//! Every access runs under an exclusive `flock` of a separate lock file, so each read or write
//! is atomic; what the distributed lock must provide is that a holder's read and its later write
//! are not interleaved with another holder's.
//!
//! A *fenced* resource does what docs/coordination.md asks of resources: it keeps the highest
//! fencing token it has seen, on reads and writes alike, and refuses any access with an older
//! one. (Checking reads too matters: a stale holder could otherwise write after the new holder
//! has read but before it has written, and one of the two increments would be lost.) An
//! *unfenced* resource accepts everything, like most storage.
//!
//! Whether fenced or not, the resource records what it saw, so a test can tell what went wrong:
//! every accepted write, every refusal, and every *overlap* — a read by one client while
//! another client's read-modify-write was still open, i.e. two clients acting as holders at once.
//!
//! This file is shared: the `lock_client` binary includes it to act on the resource, and the
//! tests include it to check the record.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// An accepted write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub client: String,
    pub token: i64,
    pub value: u64,
}

/// A refused access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub client: String,
    pub token: i64,
    /// `read` or `write`.
    pub op: String,
    /// The highest token seen when it was refused.
    pub highest_token: i64,
}

/// A read by `client` while `holder` had read and not yet written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    pub client: String,
    pub token: i64,
    pub holder: String,
    pub holder_token: i64,
}

/// Everything the resource holds and remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub counter: u64,
    pub highest_token: i64,
    /// The client between its read and its write, with its token.
    pub open: Option<(String, i64)>,
    pub writes: Vec<Write>,
    pub refusals: Vec<Refusal>,
    pub overlaps: Vec<Overlap>,
}

/// What an access got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<T> {
    Done(T),
    /// A fenced resource refused the token.
    Refused {
        highest_token: i64,
    },
}

/// A resource in a directory shared by the test and its client processes.
#[derive(Debug, Clone)]
pub struct Resource {
    dir: PathBuf,
    fenced: bool,
}

impl Resource {
    pub fn new(dir: &Path, fenced: bool) -> Resource {
        Resource { dir: dir.to_path_buf(), fenced }
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join("resource.json")
    }

    /// Runs `f` on the record under the exclusive lock, saving what it leaves.
    fn with_record<T>(&self, f: impl FnOnce(&mut Record) -> T) -> anyhow::Result<T> {
        let lock_path = self.dir.join("resource.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("open {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("lock {}", lock_path.display()))?;
        let mut record = self.read()?;
        let out = f(&mut record);
        // Write a new file and rename it over the old one: a reader never sees half a record.
        let tmp = self.dir.join("resource.json.tmp");
        let text = serde_json::to_vec_pretty(&record).context("encode the resource record")?;
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, self.data_path()).context("replace the resource record")?;
        drop(lock);
        Ok(out)
    }

    /// The record as last saved (empty before the first access).
    pub fn read(&self) -> anyhow::Result<Record> {
        let path = self.data_path();
        match File::open(&path) {
            Ok(file) => serde_json::from_reader(file).with_context(|| format!("parse {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("open {}", path.display()))),
        }
    }

    /// Checks `token` against the highest seen; on a fenced resource an older one is refused.
    fn admit(&self, record: &mut Record, client: &str, token: i64, op: &str) -> Result<(), i64> {
        if self.fenced && token < record.highest_token {
            record.refusals.push(Refusal {
                client: client.to_owned(),
                token,
                op: op.to_owned(),
                highest_token: record.highest_token,
            });
            return Err(record.highest_token);
        }
        record.highest_token = record.highest_token.max(token);
        Ok(())
    }

    /// The read of a read-modify-write: returns the counter.
    pub fn read_counter(&self, client: &str, token: i64) -> anyhow::Result<Access<u64>> {
        self.with_record(|record| {
            if let Err(highest_token) = self.admit(record, client, token, "read") {
                return Access::Refused { highest_token };
            }
            if let Some((holder, holder_token)) = record.open.clone() {
                if holder != client {
                    record.overlaps.push(Overlap { client: client.to_owned(), token, holder, holder_token });
                }
            }
            record.open = Some((client.to_owned(), token));
            Access::Done(record.counter)
        })
    }

    /// The write of a read-modify-write: sets the counter to `value`.
    pub fn write_counter(&self, client: &str, token: i64, value: u64) -> anyhow::Result<Access<()>> {
        self.with_record(|record| {
            if record.open.as_ref().is_some_and(|(holder, _)| holder == client) {
                record.open = None;
            }
            if let Err(highest_token) = self.admit(record, client, token, "write") {
                return Access::Refused { highest_token };
            }
            record.counter = value;
            record.writes.push(Write { client: client.to_owned(), token, value });
            Access::Done(())
        })
    }
}
