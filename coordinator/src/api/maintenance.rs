//! etcd `Maintenance` service: Status, Alarm (NOSPACE), Snapshot (a consistent copy of the
//! replicated state in Cairn's snapshot format, which `etcdctl snapshot save` stores but etcd's
//! `snapshot restore` cannot read), Defragment (full RocksDB compaction), Hash and
//! HashKV (CRC-32 consistency hashes). MoveLeader answers UNIMPLEMENTED.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use futures::Stream;
use sha2::Digest;
use tonic::{Request, Response, Status};

use crate::api::error::{kv_status, rsm_status};
use crate::backend::Backend;
use crate::limits;
use crate::mvcc;
use crate::rsm::store::StateStore;

/// The etcd protocol version this server speaks, as reported by `Status`.
pub const SERVER_VERSION: &str = "3.4.0";

pub struct MaintenanceApi {
    pub backend: Arc<Backend>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceApi {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        let me = self.backend.member_id();
        let concerns_me = req.member_id == 0 || req.member_id == me;
        let nospace = req.alarm == AlarmType::Nospace as i32 || req.alarm == AlarmType::None as i32;
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {}
            Ok(AlarmAction::Activate) if concerns_me && nospace => self.backend.alarms().set_nospace(true),
            Ok(AlarmAction::Deactivate) if concerns_me && nospace => self.backend.alarms().set_nospace(false),
            Ok(_) => {}
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
        let mut alarms = Vec::new();
        if self.backend.alarms().nospace() {
            alarms.push(AlarmMember { member_id: me, alarm: AlarmType::Nospace as i32 });
        }
        let revision = self.backend.current_revision()?;
        Ok(Response::new(AlarmResponse { header: Some(self.backend.header(revision)), alarms }))
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
            errors: if self.backend.alarms().nospace() {
                vec!["memberID:".to_string() + &rsm.node_id().to_string() + " alarm:NOSPACE"]
            } else {
                Vec::new()
            },
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        let store = self.backend.rsm().store().clone();
        tokio::task::spawn_blocking(move || store.compact_all(mvcc::TABLES))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let revision = self.backend.current_revision()?;
        Ok(Response::new(DefragmentResponse { header: Some(self.backend.header(revision)) }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let view = self.backend.rsm().store().read_view();
        let hash = mvcc::hash_all(&*view).map_err(|e| kv_status(&e))?;
        let revision = mvcc::current_revision(&*view).map_err(|e| kv_status(&e))?;
        Ok(Response::new(HashResponse { header: Some(self.backend.header(revision)), hash }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let view = self.backend.rsm().store().read_view();
        let (hash, compact_revision) =
            mvcc::hash_kv(&*view, request.into_inner().revision).map_err(|e| kv_status(&e))?;
        let revision = mvcc::current_revision(&*view).map_err(|e| kv_status(&e))?;
        Ok(Response::new(HashKvResponse { header: Some(self.backend.header(revision)), hash, compact_revision }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let mut data = self.backend.rsm().export_state().await.map_err(|e| rsm_status(&e))?;
        // etcd's snapshot is a bbolt file (a whole number of 512-byte pages) followed by the
        // SHA-256 of it, and etcdctl checks that shape when saving: pad with zeros (the format
        // ignores trailing bytes), then append the digest.
        data.resize(data.len().div_ceil(512) * 512, 0);
        let digest = sha2::Sha256::digest(&data);
        data.extend_from_slice(&digest);
        let header = Some(self.backend.header(self.backend.current_revision()?));
        let total = data.len();
        let chunks: Vec<Result<SnapshotResponse, Status>> = data
            .chunks(limits::SNAPSHOT_STREAM_CHUNK_BYTES)
            .scan(0usize, |sent, chunk| {
                *sent += chunk.len();
                Some(Ok(SnapshotResponse { header, remaining_bytes: (total - *sent) as u64, blob: chunk.to_vec() }))
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented("move-leader is not implemented yet"))
    }
}
