//! Changing keys: puts and deletions at a revision, with their history, lease attachments and
//! watch events.
//!
//! A [`Writer`] holds one command's staged changes. Changes accumulate at revision
//! `begin + 1`, numbered by sub-revision in the order they happen (etcd's (main, sub)
//! revisions); [`Writer::end_revision`] closes that revision, so a command can produce several
//! (`LeaseExpire` revokes each lease at its own revision). A revision with no change is never
//! recorded: the store revision only moves when something changed.

use std::collections::HashMap;

use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::{Event, KeyValue};

use super::error::KvError;
use super::keys::{self, META_REVISION, REVLOG_DELETE, REVLOG_PUT};
use super::range::{self, KeySpan};
use super::staged::Staged;
use super::watch::EventBatch;
use super::{KV_HISTORY, KV_LATEST, KV_META, KV_REVLOG, LEASE_KEYS};
use crate::rsm::store::{StateRead, WriteSet};

pub(crate) struct Writer<'a> {
    staged: Staged<'a>,
    /// The store revision before the open revision.
    begin: i64,
    /// Changes made at the open revision so far: the next sub-revision.
    sub: i64,
    /// Events of the open revision, in sub-revision order.
    events: Vec<Event>,
    /// For each key changed at the open revision, its value before that revision: what watchers
    /// get as `prev_kv` (etcd reads it at revision - 1).
    before: HashMap<Vec<u8>, Option<KeyValue>>,
    /// Closed revisions' events.
    batches: Vec<EventBatch>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(base: &'a dyn StateRead) -> Result<Self, KvError> {
        let begin = range::current_revision(base)?;
        Ok(Self {
            staged: Staged::new(base),
            begin,
            sub: 0,
            events: Vec::new(),
            before: HashMap::new(),
            batches: Vec::new(),
        })
    }

    /// The state including everything staged so far.
    pub(crate) fn view(&self) -> &dyn StateRead {
        &self.staged
    }

    pub(crate) fn staged_mut(&mut self) -> &mut Staged<'a> {
        &mut self.staged
    }

    /// The revision a read sees now: the open revision once it changed something.
    pub(crate) fn revision(&self) -> i64 {
        if self.sub > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn remember_before(&mut self, key: &[u8], prev: &Option<KeyValue>) {
        if !self.before.contains_key(key) {
            self.before.insert(key.to_vec(), prev.clone());
        }
    }

    /// Writes `key` at the open revision and returns the new key-value. The caller has checked
    /// that `lease` (if not 0) exists.
    pub(crate) fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<KeyValue, KvError> {
        let main = self.begin + 1;
        let sub = self.sub;
        let prev = range::latest(&self.staged, key)?;
        self.remember_before(key, &prev);
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (main, 1),
        };
        let kv = KeyValue { key: key.to_vec(), create_revision, mod_revision: main, version, value, lease };
        self.staged.put(KV_LATEST, key, keys::encode_kv(&kv));
        self.staged.put(KV_HISTORY, keys::history_key(key, main, sub), keys::encode_history_put(&kv));
        self.staged.put(KV_REVLOG, keys::revision_key(main, sub), keys::encode_revlog(REVLOG_PUT, key));
        if let Some(p) = &prev {
            if p.lease != 0 {
                self.staged.delete(LEASE_KEYS, keys::lease_key_entry(p.lease, key));
            }
        }
        if lease != 0 {
            self.staged.put(LEASE_KEYS, keys::lease_key_entry(lease, key), Vec::new());
        }
        // Like etcd's watch server: a creation carries no previous value.
        let prev_kv = if version == 1 { None } else { self.before.get(key).cloned().flatten() };
        self.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv.clone()), prev_kv });
        self.sub += 1;
        Ok(kv)
    }

    /// Deletes the live key `prev` at the open revision.
    fn delete(&mut self, prev: &KeyValue) {
        let main = self.begin + 1;
        let sub = self.sub;
        let key = prev.key.as_slice();
        self.remember_before(key, &Some(prev.clone()));
        self.staged.delete(KV_LATEST, key);
        self.staged.put(KV_HISTORY, keys::history_key(key, main, sub), keys::encode_history_tombstone());
        self.staged.put(KV_REVLOG, keys::revision_key(main, sub), keys::encode_revlog(REVLOG_DELETE, key));
        if prev.lease != 0 {
            self.staged.delete(LEASE_KEYS, keys::lease_key_entry(prev.lease, key));
        }
        let kv = KeyValue { key: key.to_vec(), mod_revision: main, ..Default::default() };
        let prev_kv = self.before.get(key).cloned().flatten();
        self.events.push(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv });
        self.sub += 1;
    }

    /// Deletes every live key in `span`, in key order; returns what was deleted.
    pub(crate) fn delete_range(&mut self, span: KeySpan<'_>) -> Result<Vec<KeyValue>, KvError> {
        let doomed = range::latest_in(&self.staged, span)?;
        for kv in &doomed {
            self.delete(kv);
        }
        Ok(doomed)
    }

    /// Closes the open revision: if it changed anything, records it as the store revision and
    /// stages its events for watchers.
    pub(crate) fn end_revision(&mut self) {
        if self.sub == 0 {
            return;
        }
        let revision = self.begin + 1;
        self.staged.put(KV_META, META_REVISION, keys::i64_bytes(revision).to_vec());
        self.batches.push(EventBatch { revision, events: std::mem::take(&mut self.events) });
        self.before.clear();
        self.begin = revision;
        self.sub = 0;
    }

    /// Closes the open revision and moves every staged change into `writes`; returns the event
    /// batches to publish once the writes are visible.
    pub(crate) fn finish(mut self, writes: &mut WriteSet) -> Vec<EventBatch> {
        self.end_revision();
        self.staged.flush(writes);
        self.batches
    }
}
