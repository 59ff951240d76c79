//! Raft transport, server side: the tonic `RaftService` every replica serves on its peer port.
//!
//! Thin: it decodes, hands the message to openraft or to the [`Rsm`], and encodes the answer.
//! Raft errors travel inside the payload (openraft needs them typed); runtime errors for the
//! forwarding calls map to gRPC codes in [`error_to_status`].

use cairn_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use cairn_proto::raft::{
    AppRpcRequest, AppRpcResponse, ForwardRequest, ForwardResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use super::app::App;
use super::error::RsmError;
use super::node::{Rsm, LEADER_HINT_HEADER};
use super::types::{decode, encode, NodeId, TypeConfig};
use crate::limits;

/// The peer-facing gRPC service of one replica.
pub struct PeerService<A: App> {
    rsm: Rsm<A>,
}

impl<A: App> PeerService<A> {
    pub fn new(rsm: Rsm<A>) -> RaftServiceServer<Self> {
        RaftServiceServer::new(Self { rsm })
            .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
    }
}

fn bad_payload(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("malformed raft payload: {e}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(format!("encode raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

/// The one table from runtime errors to gRPC status on the peer transport.
pub(crate) fn error_to_status(e: RsmError) -> Status {
    match e {
        RsmError::NotLeader { leader } => {
            let mut status = Status::failed_precondition("not leader");
            if let Some(id) = leader {
                if let Ok(v) = id.to_string().parse() {
                    status.metadata_mut().insert(LEADER_HINT_HEADER, v);
                }
            }
            status
        }
        RsmError::NoLeader => Status::unavailable("no leader"),
        RsmError::Timeout => Status::deadline_exceeded("request timed out"),
        RsmError::ShuttingDown => Status::unavailable("shutting down"),
        RsmError::Peer { peer, message } => Status::unavailable(format!("peer {peer}: {message}")),
        RsmError::Membership(m) => Status::failed_precondition(format!("membership: {m}")),
        RsmError::Internal(m) => Status::internal(m),
    }
}

#[tonic::async_trait]
impl<A: App> RaftService for PeerService<A> {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.rsm.raft().append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        if self.rsm.voting_paused() {
            // Answered like an unreachable node: the candidate counts no vote from here.
            return Err(Status::unavailable("restarted moments ago; not voting yet"));
        }
        let req: VoteRequest<NodeId> = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.rsm.raft().vote(req).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.rsm.raft().install_snapshot(req).await)
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardResponse>, Status> {
        if !self.rsm.is_leader() {
            let leader = self.rsm.leader().map(|(id, _)| id);
            return Err(error_to_status(RsmError::NotLeader { leader }));
        }
        let req = request.into_inner();
        let timeout = match req.timeout_ms {
            0 => limits::PROPOSE_TIMEOUT,
            ms => std::time::Duration::from_millis(ms),
        };
        let response = self.rsm.propose_local_within(req.command, timeout).await.map_err(error_to_status)?;
        Ok(Response::new(ForwardResponse { response }))
    }

    async fn read_index(&self, _request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let index = self.rsm.leader_read_index().await.map_err(error_to_status)?;
        let term = self.rsm.metrics().borrow().current_term;
        Ok(Response::new(ReadIndexResponse { index, term }))
    }

    async fn app_rpc(&self, request: Request<AppRpcRequest>) -> Result<Response<AppRpcResponse>, Status> {
        if !self.rsm.is_leader() {
            let leader = self.rsm.leader().map(|(id, _)| id);
            return Err(error_to_status(RsmError::NotLeader { leader }));
        }
        let req = request.into_inner();
        let body = self.rsm.call_leader(&req.method, req.body).await.map_err(error_to_status)?;
        Ok(Response::new(AppRpcResponse { body }))
    }
}
