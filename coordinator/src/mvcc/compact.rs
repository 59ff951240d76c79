//! Compaction: forgetting history below a revision.
//!
//! Compacting at revision C removes every version of every key that no read at C or later can
//! see: for each key, all history entries at or below C except the newest one, which stays if it
//! is a put (so reads at exactly C still work) and goes if it is a deletion. Change-log entries
//! below C go too, so watches must start at C or later. Only keys changed since the previous
//! compaction can have anything to remove, and the change log names exactly those, so the work
//! is proportional to the changes since then, not to the store's size.

use std::collections::BTreeSet;

use cairn_proto::etcdserverpb::{CompactionRequest, CompactionResponse};

use super::error::KvError;
use super::keys::{self, META_COMPACTED};
use super::range::{self, header};
use super::writer::Writer;
use super::{KV_HISTORY, KV_META, KV_REVLOG};

pub(crate) fn apply_compaction(w: &mut Writer<'_>, req: &CompactionRequest) -> Result<CompactionResponse, KvError> {
    let target = req.revision;
    let previous = range::compacted(w.view())?;
    // etcd's compaction revision is -1 until the first compaction.
    if target <= previous.unwrap_or(-1) {
        return Err(KvError::Compacted { compact_revision: previous.unwrap_or(0).max(0) });
    }
    if target > w.revision() {
        return Err(KvError::FutureRev);
    }

    // Changes in [previous, target]: the keys to compact, and the log entries below target.
    let from = keys::revision_key(previous.unwrap_or(0).max(0), 0);
    let until = keys::revision_key(target.saturating_add(1), 0);
    let mut changed = BTreeSet::new();
    let mut log_doomed = Vec::new();
    let mut failure = None;
    w.view().scan(KV_REVLOG, &from, Some(&until), false, &mut |k, v| {
        let entry = keys::decode_revision(k).and_then(|(main, _)| Ok((main, keys::decode_revlog(v)?.1.to_vec())));
        match entry {
            Ok((main, user)) => {
                if main < target {
                    log_doomed.push(k.to_vec());
                }
                changed.insert(user);
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }

    let mut history_doomed = Vec::new();
    for user in &changed {
        let start = keys::history_prefix(user);
        let end = keys::history_key(user, target.saturating_add(1), 0);
        let mut entries: Vec<(Vec<u8>, bool)> = Vec::new();
        let mut failure = None;
        w.view().scan(KV_HISTORY, &start, Some(&end), false, &mut |k, v| match keys::history_value_is_put(v) {
            Ok(is_put) => {
                entries.push((k.to_vec(), is_put));
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let keep_newest = entries.last().is_some_and(|(_, is_put)| *is_put);
        let doomed = if keep_newest { entries.len() - 1 } else { entries.len() };
        history_doomed.extend(entries.into_iter().take(doomed).map(|(k, _)| k));
    }

    let staged = w.staged_mut();
    for k in history_doomed {
        staged.delete(KV_HISTORY, k);
    }
    for k in log_doomed {
        staged.delete(KV_REVLOG, k);
    }
    staged.put(KV_META, META_COMPACTED, keys::i64_bytes(target).to_vec());
    Ok(CompactionResponse { header: Some(header(w.revision())) })
}
