//! etcd `Election` service (v3electionpb): translate and delegate to [`Elections`].

use std::pin::Pin;

use cairn_proto::v3electionpb::election_server::Election;
use cairn_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest,
    ResignResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::election::Elections;
use crate::limits;

pub struct ElectionApi {
    pub elections: Elections,
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Election for ElectionApi {
    /// Dropped by tonic when the client cancels; [`Elections::campaign`] then withdraws its key.
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        Ok(Response::new(self.elections.campaign(request.into_inner()).await?))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        Ok(Response::new(self.elections.proclaim(request.into_inner()).await?))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        Ok(Response::new(self.elections.leader(request.into_inner()).await?))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let observer = self.elections.observer(request.into_inner())?;
        let (tx, rx) = mpsc::channel(limits::ELECTION_OBSERVE_BUFFER);
        // The observer ends when the client drops the stream (the receiver goes with it).
        tokio::spawn(observer.run(tx));
        let stream = ReceiverStream::new(rx).map(|item| item.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        Ok(Response::new(self.elections.resign(request.into_inner()).await?))
    }
}
