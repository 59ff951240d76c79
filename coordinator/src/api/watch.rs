//! etcd `Watch` service: one [`WatchSession`] per bidirectional stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::etcdserverpb::{WatchRequest, WatchResponse};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Backend;
use crate::limits;
use crate::watch::WatchSession;

pub struct WatchApi {
    pub backend: Arc<Backend>,
    pub progress_interval: Duration,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchApi {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(limits::WATCH_STREAM_BUFFER);
        let mut session = WatchSession::new(self.backend.clone(), tx, self.progress_interval);
        tokio::spawn(async move {
            while let Some(item) = incoming.next().await {
                match item {
                    Ok(req) => {
                        if !session.handle(req).await {
                            return;
                        }
                    }
                    Err(status) => {
                        tracing::debug!(%status, "watch stream ended");
                        return;
                    }
                }
            }
            // The session (and its watchers) end with the client's half of the stream.
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
