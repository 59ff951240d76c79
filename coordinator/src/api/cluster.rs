//! etcd `Cluster` service: translate and delegate to [`Backend`]'s membership calls.

use std::sync::Arc;

use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::backend::Backend;

pub struct ClusterApi {
    pub backend: Arc<Backend>,
}

impl ClusterApi {
    fn header(&self) -> Option<cairn_proto::etcdserverpb::ResponseHeader> {
        Some(self.backend.header(self.backend.current_revision().unwrap_or(0)))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        let member = self.backend.member_add(&req.peer_ur_ls, req.is_learner).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.backend.members_here(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.backend.member_remove(request.into_inner().id).await?;
        Ok(Response::new(MemberRemoveResponse { header: self.header(), members: self.backend.members_here() }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        self.backend.member_update(req.id, &req.peer_ur_ls).await?;
        Ok(Response::new(MemberUpdateResponse { header: self.header(), members: self.backend.members_here() }))
    }

    async fn member_list(&self, _request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse { header: self.header(), members: self.backend.member_list().await? }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.backend.member_promote(request.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse { header: self.header(), members: self.backend.members_here() }))
    }
}
