//! etcd `Lease` service: translate and delegate to [`Backend`]. Keep-alives are renewed on the
//! leader (followers forward each one).

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb::lease_server::Lease;
use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Backend;
use crate::limits;

pub struct LeaseApi {
    pub backend: Arc<Backend>,
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseApi {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        Ok(Response::new(self.backend.lease_grant(request.into_inner()).await?))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(self.backend.lease_revoke(request.into_inner()).await?))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(limits::KEEPALIVE_STREAM_BUFFER);
        let backend = self.backend.clone();
        tokio::spawn(async move {
            while let Some(item) = incoming.next().await {
                let req = match item {
                    Ok(r) => r,
                    Err(status) => {
                        tracing::debug!(%status, "keep-alive stream ended");
                        return;
                    }
                };
                let reply = match backend.lease_renew(req.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: Some(backend.header(backend.current_revision().unwrap_or(0))),
                        id: req.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(self.backend.lease_time_to_live(request.into_inner()).await?))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.backend.lease_leases().await?))
    }
}
