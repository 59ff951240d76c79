//! What watchers need: the changes of each revision, live and from history.
//!
//! Live: every revision that changed something is published once, as an [`EventBatch`], after
//! its writes are readable (see `KvStateMachine`). Revisions only move when something changes,
//! so consecutive batches have consecutive revisions; a subscriber that sees a gap (it lagged,
//! or the state machine dropped batches) re-reads the missing revisions with [`history`].
//!
//! History: `kv_revlog` lists every change by revision until compaction removes it; [`history`]
//! turns it back into etcd events, `prev_kv` included.

use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::{Event, KeyValue};

use super::error::KvError;
use super::keys::{self, REVLOG_DELETE};
use super::range::{self, KeySpan};
use super::{KV_HISTORY, KV_REVLOG};
use crate::rsm::store::StateRead;

/// The events of one revision, in the order they happened. Events carry `prev_kv` (the key's
/// value before this revision) except for creations, like etcd's watch server; the API layer
/// drops it for watchers that did not ask.
///
/// A batch with no events is never a change: it tells subscribers that the state was replaced
/// (a snapshot was installed) and `revision` is now current, so they must catch up with
/// [`history`] from where they were.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// A watch event: etcd's own `mvccpb::Event`, with `kv.mod_revision` its revision.
pub type WatchEvent = Event;

/// The events on keys in `[key, range_end)` (etcd's range rules: empty `range_end` means just
/// `key`, "\0" means every key >= `key`) from `start_revision` on, in revision order.
///
/// Returns whole revisions only: it stops at the first revision boundary after `max_events`
/// events, so it may return more than `max_events` when one revision holds many changes, and the
/// caller continues from the last event's revision + 1. Fails with [`KvError::Compacted`]
/// (carrying the compaction revision) if `start_revision` is below the compaction revision.
pub fn history(
    state: &dyn StateRead,
    start_revision: i64,
    key: &[u8],
    range_end: &[u8],
    max_events: usize,
) -> Result<Vec<WatchEvent>, KvError> {
    if let Some(c) = range::compacted(state)? {
        if start_revision < c {
            return Err(KvError::Compacted { compact_revision: c });
        }
    }
    let span = KeySpan::new(key, range_end);
    // First pick the changes (main, sub, tag, key) from the log, then read their values.
    let mut picked: Vec<(i64, i64, u8, Vec<u8>)> = Vec::new();
    let mut failure = None;
    let start = keys::revision_key(start_revision.max(1), 0);
    state.scan(KV_REVLOG, &start, None, false, &mut |k, v| {
        let entry = keys::decode_revision(k).and_then(|(main, sub)| Ok((main, sub, keys::decode_revlog(v)?)));
        let (main, sub, (tag, user)) = match entry {
            Ok(e) => e,
            Err(e) => {
                failure = Some(e);
                return false;
            }
        };
        if picked.len() >= max_events && picked.last().is_none_or(|last| last.0 != main) {
            return false;
        }
        if span.contains(user) {
            picked.push((main, sub, tag, user.to_vec()));
        }
        true
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    picked.into_iter().map(|(main, sub, tag, user)| event_at(state, main, sub, tag, user)).collect()
}

/// Rebuilds the event of change (main, sub) on `user`.
fn event_at(state: &dyn StateRead, main: i64, sub: i64, tag: u8, user: Vec<u8>) -> Result<WatchEvent, KvError> {
    if tag == REVLOG_DELETE {
        let prev_kv = range::version_at(state, &user, main - 1)?;
        let kv = KeyValue { key: user, mod_revision: main, ..Default::default() };
        return Ok(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv });
    }
    let Some(value) = state.get(KV_HISTORY, &keys::history_key(&user, main, sub))? else {
        return Err(KvError::corrupt(format!("revision {main}.{sub} is in the log but not in the history")));
    };
    let Some(kv) = keys::decode_history_value(&user, &value)? else {
        return Err(KvError::corrupt(format!("revision {main}.{sub} is a put in the log, a deletion in the history")));
    };
    let prev_kv = if kv.version == 1 { None } else { range::version_at(state, &user, main - 1)? };
    Ok(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv })
}
