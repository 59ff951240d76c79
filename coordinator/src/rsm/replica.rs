//! Starting a replica inside a server process, the same way for every state machine: serve the
//! peer transport, found the cluster (only the lowest id of a new cluster does), and record this
//! member's addresses in the membership.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::app::App;
use super::error::RsmError;
use super::network::incoming_nodelay;
use super::node::Rsm;
use super::service::PeerService;
use super::types::{Member, NodeId};

impl<A: App> Rsm<A> {
    /// Serves the Raft transport on `listener` until `stop` is cancelled.
    pub async fn serve_peers(
        &self,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(PeerService::new(self.clone()))
            .serve_with_incoming_shutdown(incoming_nodelay(listener), stop.cancelled_owned())
            .await
    }

    /// Founds a new cluster from `initial_cluster` (id -> peer address) when this node has the
    /// lowest id in it and holds no state yet; every other node waits to be contacted by a
    /// leader. `me` describes this node in the founding membership.
    pub async fn found_if_first(
        &self,
        me: &Member,
        initial_cluster: &BTreeMap<NodeId, String>,
    ) -> Result<(), RsmError> {
        if initial_cluster.keys().next() != Some(&self.node_id()) {
            return Ok(());
        }
        let members = initial_cluster
            .iter()
            .map(|(id, peer)| (*id, if *id == self.node_id() { me.clone() } else { Member::new(peer.clone()) }))
            .collect();
        self.bootstrap(members).await
    }

    /// Records `me` (addresses and name) in the membership once this node is a member, retrying
    /// until it is done or `stop` is cancelled: members learn each other's client addresses
    /// from there, as etcd members publish their attributes.
    pub async fn publish_self_until_done(&self, me: Member, stop: CancellationToken) {
        loop {
            match self.publish_self(me.clone()).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}
