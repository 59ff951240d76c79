//! Raft transport, client side: openraft's RPCs carried over tonic to a peer's `RaftService`.
//!
//! Every RPC has a deadline (openraft's per-call TTL). A peer that cannot be reached is reported
//! as `Unreachable` so openraft backs off instead of spinning; a remote Raft error comes back as
//! `RemoteError` so openraft can react to it (e.g. a higher term).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::raft::raft_service_client::RaftServiceClient;
use cairn_proto::raft::RaftPayload;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::types::{decode, encode, Member, NodeId, TypeConfig};
use crate::limits;

/// Opens a lazily-connected channel to a peer's Raft service.
pub(crate) fn peer_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if addr.starts_with("http://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(limits::PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

pub(crate) fn peer_client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel)
        .max_decoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::RAFT_MESSAGE_BYTES_MAX)
}

/// Creates [`PeerNetwork`] clients for openraft's replication tasks and leadership checks.
///
/// Channels are cached per address: openraft asks for a new client for every read-index
/// round, and a fresh HTTP/2 connection each time would cost a handshake per linearizable read.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().map_err(|_| "peer channel cache poisoned".to_string())?;
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = peer_channel(addr).map_err(|e| e.to_string())?;
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        let client = self.channel(&node.peer_addr).map(peer_client);
        PeerNetwork { target, client }
    }
}

/// The connection to one peer.
pub struct PeerNetwork {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

enum CallError {
    Unreachable(TransportError),
    Network(TransportError),
}

impl PeerNetwork {
    /// Sends one serialized request and returns the serialized reply, within `ttl`.
    async fn call<Req: serde::Serialize>(
        &mut self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(CallError::Unreachable(TransportError(e.clone()))),
        };
        let data = encode(req).map_err(|e| CallError::Network(TransportError(e.to_string())))?;
        let mut client = client;
        let request = tonic::Request::new(RaftPayload { data });
        let fut = async {
            match method {
                Method::Append => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::Snapshot => client.install_snapshot(request).await,
            }
        };
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(CallError::Network(TransportError(format!(
                "{method:?} to node {}: timeout after {ttl:?}",
                self.target
            )))),
            Ok(Err(status)) => {
                let e = TransportError(format!("{method:?} to node {}: {status}", self.target));
                if status.code() == tonic::Code::Unavailable {
                    Err(CallError::Unreachable(e))
                } else {
                    Err(CallError::Network(e))
                }
            }
            Ok(Ok(resp)) => Ok(resp.into_inner().data),
        }
    }

    fn finish<Resp, E>(
        &self,
        reply: Result<Vec<u8>, CallError>,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let bytes = reply.map_err(|e| match e {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        // openraft's deadline is the heartbeat interval, right for heartbeats; entries need time
        // to travel and be fsynced, and a deadline shorter than that would retry them forever.
        let ttl = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(limits::APPEND_ENTRIES_TIMEOUT_MIN)
        };
        let reply = self.call(Method::Append, &rpc, ttl).await;
        self.finish(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        let reply = self.call(Method::Snapshot, &rpc, option.hard_ttl()).await;
        self.finish(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let reply = self.call(Method::Vote, &rpc, option.hard_ttl()).await;
        self.finish(reply)
    }
}

/// Accepted connections of `listener`, with Nagle's algorithm off. gRPC writes small frames;
/// with Nagle on, a response can wait ~40 ms for the peer's delayed ACK.
pub fn incoming_nodelay(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}
