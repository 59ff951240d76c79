//! etcd `KV` service: translate and delegate to [`Backend`].

use std::sync::Arc;

use cairn_proto::etcdserverpb::kv_server::Kv;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use super::check_message_size;
use crate::backend::Backend;

pub struct KvApi {
    pub backend: Arc<Backend>,
}

#[tonic::async_trait]
impl Kv for KvApi {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        check_message_size(&req)?;
        Ok(Response::new(self.backend.range(req).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        check_message_size(&req)?;
        Ok(Response::new(self.backend.put(req).await?))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        check_message_size(&req)?;
        Ok(Response::new(self.backend.delete_range(req).await?))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        check_message_size(&req)?;
        Ok(Response::new(self.backend.txn(req).await?))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        check_message_size(&req)?;
        Ok(Response::new(self.backend.compact(req).await?))
    }
}
