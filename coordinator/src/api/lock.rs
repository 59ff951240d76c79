//! etcd `Lock` service (v3lockpb): translate and delegate to [`Locks`].

use cairn_proto::v3lockpb::lock_server::Lock;
use cairn_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use crate::lock::Locks;

pub struct LockApi {
    pub locks: Locks,
}

#[tonic::async_trait]
impl Lock for LockApi {
    /// Dropped by tonic when the client cancels; [`Locks::lock`] then withdraws its key.
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        Ok(Response::new(self.locks.lock(request.into_inner()).await?))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        Ok(Response::new(self.locks.unlock(request.into_inner()).await?))
    }
}
