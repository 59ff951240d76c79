//! The replicated state machine: decodes a command, applies it, and tells watchers afterwards.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_proto::coordinator::internal_request::Request;
use cairn_proto::coordinator::internal_response::Response;
use cairn_proto::coordinator::{ApplyError, InternalRequest, InternalResponse};
use prost::Message;
use tokio::sync::broadcast;

use super::error::KvError;
use super::staged::Pending;
use super::watch::EventBatch;
use super::writer::Writer;
use super::{compact, kv, lease, range, txn, TABLES};
use crate::limits::{KV_STAGED_EVENT_BATCHES_MAX, WATCH_BROADCAST_BATCHES};
use crate::rsm::app::App;
use crate::rsm::store::{StateRead, StoreError, WriteSet};

/// The coordinator's etcd KV and lease state machine.
///
/// `apply` stages the events of each change; `applied` (called by the runtime once the writes
/// are readable) publishes them to the receivers of [`subscribe`](Self::subscribe). A receiver
/// that falls more than `WATCH_BROADCAST_BATCHES` batches behind gets `RecvError::Lagged`, and
/// one that sees a revision gap or an empty batch (see [`EventBatch`]) catches up from
/// [`history`](super::history).
pub struct KvStateMachine {
    events: broadcast::Sender<Arc<EventBatch>>,
    /// Batches applied but not yet known to be readable.
    staged: Mutex<VecDeque<EventBatch>>,
}

impl KvStateMachine {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(WATCH_BROADCAST_BATCHES);
        Self { events, staged: Mutex::new(VecDeque::new()) }
    }

    /// Receives every later revision's events, in revision order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.events.subscribe()
    }

    fn staged(&self) -> MutexGuard<'_, VecDeque<EventBatch>> {
        // The queue stays consistent even if a holder panicked: each push or drain is one step.
        self.staged.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stage(&self, batches: Vec<EventBatch>) {
        let mut staged = self.staged();
        for batch in batches {
            if staged.len() >= KV_STAGED_EVENT_BATCHES_MAX {
                // Only if the runtime stopped calling `applied`; subscribers see the revision gap
                // and catch up from history.
                if let Some(dropped) = staged.pop_front() {
                    tracing::warn!(revision = dropped.revision, "dropped unpublished watch events");
                }
            }
            staged.push_back(batch);
        }
    }

    fn publish(&self, batch: EventBatch) {
        // An error only means nobody is subscribed.
        let _ = self.events.send(Arc::new(batch));
    }
}

impl Default for KvStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl App for KvStateMachine {
    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    fn apply(
        &self,
        state: &dyn StateRead,
        writes: &mut WriteSet,
        _log_index: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let response = match execute(state, writes, command) {
            Ok((response, batches)) => {
                self.stage(batches);
                response
            }
            Err(KvError::Store(e)) => return Err(e),
            Err(e) => Response::Error(ApplyError { code: e.code(), message: e.to_string() }),
        };
        Ok(InternalResponse { response: Some(response) }.encode_to_vec())
    }

    fn applied(&self) {
        let batches: Vec<EventBatch> = self.staged().drain(..).collect();
        for batch in batches {
            self.publish(batch);
        }
    }

    fn snapshot_installed(&self, state: &dyn StateRead) {
        // Staged events belong to the replaced state. Tell subscribers to catch up instead.
        self.staged().clear();
        match range::current_revision(state) {
            Ok(revision) => self.publish(EventBatch { revision, events: Vec::new() }),
            Err(e) => tracing::error!(error = %e, "read revision of installed snapshot"),
        }
    }
}

/// Applies one command into `writes`; returns the response and the event batches to publish.
/// Deterministic failures leave `writes` untouched.
fn execute(
    state: &dyn StateRead,
    writes: &mut WriteSet,
    command: &[u8],
) -> Result<(Response, Vec<EventBatch>), KvError> {
    let request =
        InternalRequest::decode(command).map_err(|e| KvError::Malformed(format!("undecodable command: {e}")))?;
    let Some(request) = request.request else {
        return Err(KvError::Malformed("command without a request".into()));
    };
    let pending = Pending::new(state, writes)?;
    let mut w = Writer::new(&pending)?;
    let response = match &request {
        Request::Put(r) => Response::Put(kv::apply_put(&mut w, r)?),
        Request::DeleteRange(r) => Response::DeleteRange(kv::delete_range(&mut w, r)?),
        Request::Txn(r) => Response::Txn(txn::apply_txn(&mut w, r)?),
        Request::Compaction(r) => Response::Compaction(compact::apply_compaction(&mut w, r)?),
        Request::LeaseGrant(r) => Response::LeaseGrant(lease::apply_grant(&mut w, r)?),
        Request::LeaseRevoke(r) => Response::LeaseRevoke(lease::apply_revoke(&mut w, r)?),
        Request::LeaseExpire(r) => Response::LeaseExpire(lease::apply_expire(&mut w, r)?),
    };
    Ok((response, w.finish(writes)))
}

/// Encodes a command for proposal.
pub fn encode_command(request: Request) -> Vec<u8> {
    InternalRequest { request: Some(request) }.encode_to_vec()
}

/// Decodes what `apply` returned for a command: the response, or the deterministic error it
/// carried.
pub fn decode_response(bytes: &[u8]) -> Result<Response, KvError> {
    let response =
        InternalResponse::decode(bytes).map_err(|e| KvError::Malformed(format!("undecodable response: {e}")))?;
    match response.response {
        Some(Response::Error(e)) => Err(KvError::from_code(e.code, e.message)),
        Some(r) => Ok(r),
        None => Err(KvError::Malformed("response without a result".into())),
    }
}
