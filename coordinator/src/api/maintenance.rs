//! etcd `Maintenance` service. `Status` is served (etcdctl's `endpoint status` and client
//! libraries use it); the rest arrives with the coordinator-maintenance issue and answers
//! UNIMPLEMENTED until then.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::backend::Backend;

/// The etcd protocol version this server speaks, as reported by `Status`.
pub const SERVER_VERSION: &str = "3.4.0";

pub struct MaintenanceApi {
    pub backend: Arc<Backend>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceApi {
    async fn alarm(&self, _request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Err(Status::unimplemented("alarms are not implemented yet"))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let rsm = self.backend.rsm();
        let m = rsm.metrics().borrow().clone();
        let revision = self.backend.current_revision()?;
        let db_size = rsm.store().size_bytes() as i64;
        let is_learner = !m.membership_config.membership().voter_ids().any(|id| id == rsm.node_id());
        Ok(Response::new(StatusResponse {
            header: Some(self.backend.header(revision)),
            version: SERVER_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented("defragment is not implemented yet"))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("hash is not implemented yet"))
    }

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(Status::unimplemented("hashkv is not implemented yet"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("snapshot is not implemented yet"))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented("move-leader is not implemented yet"))
    }
}
