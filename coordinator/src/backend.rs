//! The coordinator's request handling, independent of gRPC: what each etcd call does against
//! the replicated MVCC store. The tonic adapters in `api/` translate and delegate here.
//!
//! Writes are proposed through the consensus runtime (any node; followers forward). Reads are
//! linearizable by default (a read barrier first) or serializable (this node's state as is).
//! Lease countdowns live on the leader ([`Lessor`]); followers ask the leader.

use std::sync::Arc;
use std::time::Instant;

use cairn_proto::coordinator::{internal_request, internal_response, InternalRequest, InternalResponse, LeaseExpire};
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, TxnRequest, TxnResponse,
};
use futures::future::BoxFuture;
use prost::Message;

use crate::alarm::Alarms;
use crate::api::error::ApiError;
use crate::lessor::Lessor;
use crate::limits;
use crate::mvcc::{self, KvError, KvStateMachine};
use crate::rsm::store::StateStore;
use crate::rsm::{AppRpcHandler, Rsm, RsmError};

/// Leader-only methods followers reach through the runtime's AppRpc.
const RPC_LEASE_RENEW: &str = "lease.renew";
const RPC_LEASE_REMAINING: &str = "lease.remaining";

/// The etcd semantics of one coordinator node.
pub struct Backend {
    rsm: Rsm<KvStateMachine>,
    alarms: Arc<Alarms>,
    lessor: Arc<Lessor>,
    cluster_id: u64,
    min_lease_ttl_secs: i64,
}

impl Backend {
    pub fn new(rsm: Rsm<KvStateMachine>, lessor: Arc<Lessor>, cluster_id: u64, election_timeout_ms: u64) -> Arc<Self> {
        // etcd's minimum lease TTL: long enough to survive a leader election.
        let min_lease_ttl_secs = ((3 * election_timeout_ms) / 2).div_ceil(1000).max(1) as i64;
        let backend = Arc::new(Self { rsm, alarms: Alarms::new(), lessor, cluster_id, min_lease_ttl_secs });
        backend.rsm.set_app_rpc_handler(Arc::new(LeaderCalls { backend: Arc::downgrade(&backend) }));
        backend
    }

    pub fn rsm(&self) -> &Rsm<KvStateMachine> {
        &self.rsm
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn member_id(&self) -> u64 {
        self.rsm.node_id()
    }

    /// A response header as etcd fills it.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.rsm.node_id(),
            revision,
            raft_term: self.rsm.metrics().borrow().current_term,
        }
    }

    fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map(|h| h.revision).unwrap_or(0);
        *header = Some(self.header(revision));
    }

    /// The store's current revision as this node has applied it.
    pub fn current_revision(&self) -> Result<i64, ApiError> {
        Ok(mvcc::current_revision(&*self.rsm.store().read_view())?)
    }

    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    async fn propose(&self, request: internal_request::Request) -> Result<internal_response::Response, ApiError> {
        if self.alarms.nospace() && adds_data(&request) {
            return Err(ApiError::NoSpace);
        }
        use internal_request::Request;
        let timeout = match &request {
            // These may touch any number of keys; their apply time grows with them.
            Request::DeleteRange(_) | Request::Txn(_) | Request::Compaction(_) => limits::PROPOSE_LONG_TIMEOUT,
            _ => limits::PROPOSE_TIMEOUT,
        };
        let command = InternalRequest { request: Some(request) }.encode_to_vec();
        if command.len() > limits::REQUEST_BYTES_MAX {
            return Err(KvError::RequestTooLarge.into());
        }
        let bytes = self.rsm.propose_within(command, timeout).await?;
        let response = InternalResponse::decode(bytes.as_slice())
            .map_err(|e| RsmError::Internal(format!("undecodable apply result: {e}")))?;
        match response.response {
            Some(internal_response::Response::Error(e)) => Err(KvError::from_code(e.code, e.message).into()),
            Some(r) => Ok(r),
            None => Err(RsmError::Internal("empty apply result".into()).into()),
        }
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, ApiError> {
        mvcc::validate_range(&req)?;
        if !req.serializable {
            self.rsm.read_barrier().await?;
        }
        let mut resp = mvcc::range(&*self.rsm.store().read_view(), &req)?;
        self.fill_header(&mut resp.header);
        Ok(resp)
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, ApiError> {
        mvcc::validate_put(&req)?;
        match self.propose(internal_request::Request::Put(req)).await? {
            internal_response::Response::Put(mut r) => {
                self.fill_header(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, ApiError> {
        mvcc::validate_delete_range(&req)?;
        match self.propose(internal_request::Request::DeleteRange(req)).await? {
            internal_response::Response::DeleteRange(mut r) => {
                self.fill_header(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, ApiError> {
        mvcc::validate_txn(&req)?;
        if mvcc::is_read_only(&req) {
            // Like etcd: a read-only txn is a linearizable read, not a proposal.
            self.rsm.read_barrier().await?;
            let mut resp = mvcc::read_txn(&*self.rsm.store().read_view(), &req)?;
            self.fill_header(&mut resp.header);
            return Ok(resp);
        }
        match self.propose(internal_request::Request::Txn(req)).await? {
            internal_response::Response::Txn(mut r) => {
                self.fill_header(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, ApiError> {
        match self.propose(internal_request::Request::Compaction(req)).await? {
            internal_response::Response::Compaction(mut r) => {
                self.fill_header(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_grant(&self, mut req: LeaseGrantRequest) -> Result<LeaseGrantResponse, ApiError> {
        if req.ttl > limits::LEASE_TTL_SECS_MAX {
            return Err(KvError::LeaseTtlTooLarge.into());
        }
        req.ttl = req.ttl.max(self.min_lease_ttl_secs);
        // The id is chosen before proposing so that apply stays deterministic.
        let chosen = req.id == 0;
        for _ in 0..4 {
            if chosen {
                req.id = (rand::random::<u64>() >> 1).max(1) as i64;
            }
            match self.propose(internal_request::Request::LeaseGrant(req)).await {
                Ok(internal_response::Response::LeaseGrant(mut r)) => {
                    self.fill_header(&mut r.header);
                    return Ok(r);
                }
                Ok(other) => return Err(unexpected(other)),
                Err(ApiError::Kv(KvError::LeaseExist)) if chosen => continue,
                Err(e) => return Err(e),
            }
        }
        Err(KvError::LeaseExist.into())
    }

    pub async fn lease_revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse, ApiError> {
        match self.propose(internal_request::Request::LeaseRevoke(req)).await? {
            internal_response::Response::LeaseRevoke(mut r) => {
                self.fill_header(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Renews a lease on the leader; returns its TTL, or 0 when it does not exist (etcd's answer
    /// on the keep-alive stream).
    pub async fn lease_renew(&self, id: i64) -> Result<i64, ApiError> {
        let body = self.rsm.call_leader(RPC_LEASE_RENEW, id.to_be_bytes().to_vec()).await?;
        decode_i64(&body).map_err(ApiError::from)
    }

    fn renew_here(&self, id: i64) -> Result<i64, ApiError> {
        let view = self.rsm.store().read_view();
        match mvcc::lease_get(&*view, id)? {
            None => Ok(0),
            Some(info) => {
                self.lessor.renew(id, info.ttl_secs, Instant::now());
                Ok(info.ttl_secs)
            }
        }
    }

    fn remaining_here(&self, id: i64) -> Result<i64, ApiError> {
        let view = self.rsm.store().read_view();
        match mvcc::lease_get(&*view, id)? {
            None => Ok(-1),
            Some(info) => Ok(self.lessor.remaining(id, info.ttl_secs, Instant::now()).as_secs_f64().ceil() as i64),
        }
    }

    pub async fn lease_time_to_live(&self, req: LeaseTimeToLiveRequest) -> Result<LeaseTimeToLiveResponse, ApiError> {
        let body = self.rsm.call_leader(RPC_LEASE_REMAINING, req.id.to_be_bytes().to_vec()).await?;
        let remaining = decode_i64(&body)?;
        self.rsm.read_barrier().await?;
        let view = self.rsm.store().read_view();
        let revision = mvcc::current_revision(&*view)?;
        let Some(info) = mvcc::lease_get(&*view, req.id)? else {
            // etcd answers an unknown lease with TTL -1 rather than an error.
            return Ok(LeaseTimeToLiveResponse {
                header: Some(self.header(revision)),
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let keys = if req.keys { mvcc::lease_keys(&*view, req.id)? } else { Vec::new() };
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.header(revision)),
            id: req.id,
            ttl: remaining.max(0),
            granted_ttl: info.ttl_secs,
            keys,
        })
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, ApiError> {
        self.rsm.read_barrier().await?;
        let view = self.rsm.store().read_view();
        let revision = mvcc::current_revision(&*view)?;
        let leases = mvcc::lease_ids(&*view)?.into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(LeaseLeasesResponse { header: Some(self.header(revision)), leases })
    }

    /// One round of the leader's expiry check: proposes the expiry of overdue leases.
    pub async fn expire_leases(&self) -> Result<usize, ApiError> {
        let live: Vec<(i64, i64)> = {
            let view = self.rsm.store().read_view();
            let mut live = Vec::new();
            for id in mvcc::lease_ids(&*view)? {
                if let Some(info) = mvcc::lease_get(&*view, id)? {
                    live.push((id, info.ttl_secs));
                }
            }
            live
        };
        let mut expired = self.lessor.expired(&live, Instant::now());
        if expired.is_empty() {
            return Ok(0);
        }
        expired.truncate(limits::LEASE_EXPIRE_BATCH_MAX);
        let n = expired.len();
        tracing::debug!(leases = ?expired, "expiring leases");
        match self.propose(internal_request::Request::LeaseExpire(LeaseExpire { ids: expired })).await? {
            internal_response::Response::LeaseExpire(_) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }
}

/// Whether a request can grow the store (refused under the NOSPACE alarm, as etcd does).
fn adds_data(request: &internal_request::Request) -> bool {
    use internal_request::Request;
    match request {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::Txn(t) => !mvcc::is_read_only(t),
        Request::DeleteRange(_) | Request::Compaction(_) | Request::LeaseRevoke(_) | Request::LeaseExpire(_) => false,
    }
}

fn decode_i64(body: &[u8]) -> Result<i64, RsmError> {
    let bytes: [u8; 8] = body.try_into().map_err(|_| RsmError::Internal("malformed lease reply".into()))?;
    Ok(i64::from_be_bytes(bytes))
}

fn unexpected(r: internal_response::Response) -> ApiError {
    RsmError::Internal(format!("unexpected apply result {r:?}")).into()
}

/// Leader-side answers to the lease calls followers forward.
struct LeaderCalls {
    backend: std::sync::Weak<Backend>,
}

impl AppRpcHandler for LeaderCalls {
    fn call(&self, method: String, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, RsmError>> {
        let backend = self.backend.upgrade();
        Box::pin(async move {
            let backend = backend.ok_or(RsmError::ShuttingDown)?;
            let id = decode_i64(&body)?;
            let result = match method.as_str() {
                RPC_LEASE_RENEW => backend.renew_here(id),
                RPC_LEASE_REMAINING => backend.remaining_here(id),
                other => return Err(RsmError::Internal(format!("unknown leader call {other:?}"))),
            };
            match result {
                Ok(v) => Ok(v.to_be_bytes().to_vec()),
                Err(ApiError::Rsm(e)) => Err(e),
                Err(e @ (ApiError::Kv(_) | ApiError::Member(_) | ApiError::NoSpace)) => {
                    Err(RsmError::Internal(e.to_string()))
                }
            }
        })
    }
}
