//! The replication chain, seen from one replica: forwarding a write stream (or a truncate or
//! delete) to the next replica and turning its failure into an error that names the replica.
//!
//! # What it promises
//! * A replica failure anywhere downstream surfaces as [`ChunkError::ReplicaFailed`] naming the
//!   first replica that failed (taken from the downstream's `cairn-failed-replica` metadata when
//!   the failure is further down, else the direct downstream).
//! * A downstream that stops accepting data for `FORWARD_STALL_TIMEOUT`, or does not
//!   acknowledge within `FORWARD_FINISH_TIMEOUT` of the last message, has failed.
//! * Dropping a [`Forwarder`] cancels the downstream call, so an aborted write is aborted along
//!   the whole chain (no replica acknowledges a stream its upstream gave up on).

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_proto::chunk::chunk_service_client::ChunkServiceClient;
use cairn_proto::chunk::{WriteChunkRequest, WriteChunkResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::{endpoint, failed_replica, raw_client};
use crate::error::ChunkError;
use crate::limits::{FORWARD_FINISH_TIMEOUT, FORWARD_QUEUE_MESSAGES_MAX, FORWARD_STALL_TIMEOUT, PEER_CHANNELS_MAX};

/// gRPC channels to other chunkservers, reused across requests. A channel reconnects by itself
/// after its peer restarts.
#[derive(Debug, Default)]
pub struct PeerPool {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerPool {
    pub fn new() -> PeerPool {
        PeerPool::default()
    }

    /// A client for the chunkserver at `addr` (host:port).
    pub fn client(&self, addr: &str) -> Result<ChunkServiceClient<Channel>, ChunkError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(raw_client(channel.clone()));
        }
        let channel = endpoint(addr)
            .map_err(|e| ChunkError::InvalidArgument(format!("replica address {addr:?}: {e}")))?
            .connect_lazy();
        if channels.len() >= PEER_CHANNELS_MAX {
            // Bounded: forgetting channels only costs reconnects.
            channels.clear();
        }
        channels.insert(addr.to_owned(), channel.clone());
        Ok(raw_client(channel))
    }
}

/// The error for a failed call to the downstream `replica`.
pub fn replica_failure(replica: &str, status: &Status) -> ChunkError {
    let no_space = status.code() == Code::ResourceExhausted;
    let (replica, message) = match failed_replica(status) {
        // Further down the chain: keep the name (and message) of the replica that failed.
        Some(deeper) => {
            let verb = if no_space { "is out of space" } else { "failed" };
            let prefix = format!("replica {deeper} {verb}: ");
            let message = status.message().strip_prefix(&prefix).unwrap_or(status.message()).to_owned();
            (deeper, message)
        }
        None => (replica.to_owned(), format!("{} ({:?})", status.message(), status.code())),
    };
    if no_space {
        ChunkError::ReplicaNoSpace { replica, message }
    } else {
        ChunkError::ReplicaFailed { replica, message }
    }
}

/// A write stream to the next replica of the chain.
#[derive(Debug)]
pub struct Forwarder {
    replica: String,
    tx: Option<mpsc::Sender<WriteChunkRequest>>,
    call: Option<JoinHandle<Result<WriteChunkResponse, Status>>>,
}

impl Forwarder {
    /// Opens the stream to `replica`; its first message must carry the header.
    pub fn start(pool: &PeerPool, replica: &str) -> Result<Forwarder, ChunkError> {
        let mut client = pool.client(replica)?;
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE_MESSAGES_MAX);
        let call = tokio::spawn(async move {
            client.write_chunk(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(tonic::Response::into_inner)
        });
        Ok(Forwarder { replica: replica.to_owned(), tx: Some(tx), call: Some(call) })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Queues one message for the downstream replica, waiting while its queue is full.
    pub async fn send(&mut self, message: WriteChunkRequest) -> Result<(), ChunkError> {
        let Some(tx) = &self.tx else {
            return Err(ChunkError::Internal("send after finish".into()));
        };
        match tokio::time::timeout(FORWARD_STALL_TIMEOUT, tx.send(message)).await {
            Ok(Ok(())) => Ok(()),
            // The call ended (the receiver is gone): find out why.
            Ok(Err(_)) => Err(self.failure().await),
            Err(_) => Err(ChunkError::ReplicaFailed {
                replica: self.replica.clone(),
                message: format!("accepted no data for {FORWARD_STALL_TIMEOUT:?}"),
            }),
        }
    }

    /// Ends the stream and waits for the downstream acknowledgement.
    pub async fn finish(mut self) -> Result<WriteChunkResponse, ChunkError> {
        self.tx = None;
        let Some(call) = self.call.as_mut() else {
            return Err(ChunkError::Internal("finish twice".into()));
        };
        let outcome = tokio::time::timeout(FORWARD_FINISH_TIMEOUT, call).await;
        self.call = None;
        match outcome {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(status))) => Err(replica_failure(&self.replica, &status)),
            Ok(Err(join)) => Err(ChunkError::Internal(format!("forwarding task: {join}"))),
            Err(_) => Err(ChunkError::ReplicaFailed {
                replica: self.replica.clone(),
                message: format!("did not acknowledge within {FORWARD_FINISH_TIMEOUT:?}"),
            }),
        }
    }

    async fn failure(&mut self) -> ChunkError {
        let Some(call) = self.call.take() else {
            return ChunkError::Internal("forwarding call already finished".into());
        };
        match tokio::time::timeout(FORWARD_FINISH_TIMEOUT, call).await {
            Ok(Ok(Err(status))) => replica_failure(&self.replica, &status),
            Ok(Ok(Ok(_))) => ChunkError::ReplicaFailed {
                replica: self.replica.clone(),
                message: "acknowledged before the stream ended".into(),
            },
            Ok(Err(join)) => ChunkError::Internal(format!("forwarding task: {join}")),
            Err(_) => ChunkError::ReplicaFailed { replica: self.replica.clone(), message: "stopped responding".into() },
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // An unfinished forward is abandoned: cancel the downstream call (resetting its stream).
        if let Some(call) = self.call.take() {
            call.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::FAILED_REPLICA_KEY;

    #[test]
    fn deeper_failures_keep_their_name() {
        let direct = replica_failure("a:1", &Status::unavailable("connection refused"));
        assert!(matches!(&direct, ChunkError::ReplicaFailed { replica, .. } if replica == "a:1"), "{direct}");
        let mut status = Status::unavailable("replica c:3 failed: disk full");
        status.metadata_mut().insert(FAILED_REPLICA_KEY, "c:3".parse().expect("ascii"));
        let deeper = replica_failure("b:2", &status);
        assert_eq!(deeper.to_string(), "replica c:3 failed: disk full");
    }

    #[test]
    fn lack_of_space_is_not_a_failed_replica() {
        let direct = replica_failure("a:1", &Status::resource_exhausted("not enough space"));
        assert!(matches!(&direct, ChunkError::ReplicaNoSpace { replica, .. } if replica == "a:1"), "{direct}");
        // A deeper replica's lack of space keeps both its name and its kind up the chain.
        let mut status = crate::api::status::to_status(&direct);
        let upstream = replica_failure("z:9", &status);
        assert!(matches!(&upstream, ChunkError::ReplicaNoSpace { replica, .. } if replica == "a:1"), "{upstream}");
        assert_eq!(upstream.to_string(), direct.to_string());
        status = crate::api::status::to_status(&upstream);
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}
