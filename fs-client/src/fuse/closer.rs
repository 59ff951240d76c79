//! Handle closes, sent to the metaserver together and a little late.
//!
//! A released handle only tells the metaserver to stop counting it: nothing the application
//! sees waits for that (the kernel does not wait for RELEASE, and the data and size were
//! committed at flush). Sent one by one, the closes of a small-file workload are a third of its
//! Raft writes, and each one queues in the log in front of the next create. So a release is
//! queued here and the queue goes out as one `CloseMany` [`CLOSE_BATCH_WINDOW`] after its
//! first entry.
//!
//! What the delay changes: an unlinked file's inode (and its chunks) is reclaimed that much
//! later, and the metaserver counts the file as open by this session that much longer. Locks
//! do not wait for it: flush and release free them with their own calls first.

use std::sync::Mutex;

use cairn_proto::meta::ClosedHandle;

use crate::limits::CLOSE_BATCH_HANDLES_MAX;

#[derive(Debug, Default)]
pub struct Closer {
    pending: Mutex<Vec<ClosedHandle>>,
}

impl Closer {
    /// Queues a close; true when the queue was empty, so the caller schedules a send.
    pub fn push(&self, handle: ClosedHandle) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.push(handle);
        pending.len() == 1
    }

    /// The oldest queued closes, at most [`CLOSE_BATCH_HANDLES_MAX`] of them, and whether more
    /// stay queued. The sender that took a batch sends the rest only if more stayed: a close
    /// queued after the queue was emptied started a batch (and a send) of its own, and taking
    /// it early would send it alone.
    pub fn take(&self) -> (Vec<ClosedHandle>, bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = pending.len().min(CLOSE_BATCH_HANDLES_MAX);
        let batch = pending.drain(..n).collect();
        (batch, !pending.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(ino: u64) -> ClosedHandle {
        ClosedHandle { ino, open: None }
    }

    #[test]
    fn only_the_first_close_of_a_batch_asks_for_a_send() {
        let closer = Closer::default();
        assert!(closer.push(handle(1)));
        assert!(!closer.push(handle(2)));
        let (batch, more) = closer.take();
        assert_eq!(batch.iter().map(|h| h.ino).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!more);
        assert!(closer.take().0.is_empty());
        assert!(closer.push(handle(3)), "an emptied queue starts a new batch");
    }

    #[test]
    fn a_batch_is_bounded_and_the_rest_stays_queued_in_order() {
        let closer = Closer::default();
        let total = CLOSE_BATCH_HANDLES_MAX as u64 + 5;
        for ino in 0..total {
            closer.push(handle(ino));
        }
        let (first, more) = closer.take();
        assert_eq!(first.len(), CLOSE_BATCH_HANDLES_MAX);
        assert_eq!(first[0].ino, 0);
        assert!(more, "the sender must come back for the rest");
        let (rest, more) = closer.take();
        let rest: Vec<u64> = rest.iter().map(|h| h.ino).collect();
        assert_eq!(rest, (CLOSE_BATCH_HANDLES_MAX as u64..total).collect::<Vec<_>>());
        assert!(!more);
    }
}
