//! etcd's Cluster API semantics over the runtime's membership: list, add (as learner or
//! voter), promote, remove, update. Member ids are the Raft node ids. A new member is added
//! first and started afterwards from an empty data dir (with an `--initial-cluster` that does
//! not make it the bootstrapper), as with `etcdctl member add`.

use cairn_proto::etcdserverpb::Member as EtcdMember;

use crate::api::error::ApiError;
use crate::backend::Backend;
use crate::rsm::{Member, MembershipChange, NodeId};

/// Errors of membership requests, with etcd's messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemberError {
    #[error("etcdserver: member not found")]
    NotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: bad peer URL {0:?}")]
    BadPeerUrl(String),
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    LastVoter,
}

fn url(addr: &str) -> Vec<String> {
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("http://{addr}")]
    }
}

/// `http://host:port` (or `host:port`) to `host:port`.
pub fn peer_addr_from_url(text: &str) -> Result<String, MemberError> {
    let addr = text.trim().trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(addr.to_string())
    } else {
        Err(MemberError::BadPeerUrl(text.to_string()))
    }
}

impl Backend {
    /// Every member as etcd describes it, as of a linearizable read point (so a member list
    /// read right after a change, from any node, shows the change).
    pub async fn member_list(&self) -> Result<Vec<EtcdMember>, ApiError> {
        self.rsm().read_barrier().await?;
        Ok(self.members_here())
    }

    /// Every member as this node knows it now. Used in the answers to membership changes: the
    /// node that handled a removal may be the removed member, which never reaches a later read
    /// point.
    pub fn members_here(&self) -> Vec<EtcdMember> {
        let (nodes, voters) = self.rsm().members();
        nodes
            .iter()
            .map(|(id, m)| EtcdMember {
                id: *id,
                name: m.name.clone(),
                peer_ur_ls: url(&m.peer_addr),
                // Without a scheme: etcdctl dials these as given ("passthrough:///http://..."),
                // which puts the scheme into HTTP/2's :authority, and hyper rightly refuses that.
                client_ur_ls: if m.client_addr.is_empty() { Vec::new() } else { vec![m.client_addr.clone()] },
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Adds a member; returns it. Its id is one more than the largest id in use.
    pub async fn member_add(&self, peer_urls: &[String], is_learner: bool) -> Result<EtcdMember, ApiError> {
        let first = peer_urls.first().ok_or_else(|| MemberError::BadPeerUrl(String::new()))?;
        let peer_addr = peer_addr_from_url(first)?;
        let (nodes, _) = self.rsm().members();
        if nodes.values().any(|m| m.peer_addr == peer_addr) {
            return Err(MemberError::PeerUrlExists.into());
        }
        let id: NodeId = nodes.keys().max().copied().unwrap_or(0) + 1;
        let member = Member { peer_addr, client_addr: String::new(), name: String::new() };
        self.rsm()
            .change_membership(MembershipChange::Add { id, member: member.clone(), as_learner: is_learner })
            .await?;
        Ok(EtcdMember {
            id,
            name: String::new(),
            peer_ur_ls: url(&member.peer_addr),
            client_ur_ls: Vec::new(),
            is_learner,
        })
    }

    pub async fn member_promote(&self, id: NodeId) -> Result<(), ApiError> {
        let (nodes, voters) = self.rsm().members();
        if !nodes.contains_key(&id) {
            return Err(MemberError::NotFound.into());
        }
        if voters.contains(&id) {
            return Err(MemberError::NotLearner.into());
        }
        Ok(self.rsm().change_membership(MembershipChange::Promote { id }).await?)
    }

    pub async fn member_remove(&self, id: NodeId) -> Result<(), ApiError> {
        let (nodes, voters) = self.rsm().members();
        if !nodes.contains_key(&id) {
            return Err(MemberError::NotFound.into());
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(MemberError::LastVoter.into());
        }
        Ok(self.rsm().change_membership(MembershipChange::Remove { id }).await?)
    }

    pub async fn member_update(&self, id: NodeId, peer_urls: &[String]) -> Result<(), ApiError> {
        let (nodes, _) = self.rsm().members();
        let Some(current) = nodes.get(&id) else { return Err(MemberError::NotFound.into()) };
        let first = peer_urls.first().ok_or_else(|| MemberError::BadPeerUrl(String::new()))?;
        let peer_addr = peer_addr_from_url(first)?;
        if nodes.iter().any(|(other, m)| *other != id && m.peer_addr == peer_addr) {
            return Err(MemberError::PeerUrlExists.into());
        }
        let member = Member { peer_addr, ..current.clone() };
        Ok(self.rsm().change_membership(MembershipChange::Update { id, member }).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_parse() {
        assert_eq!(peer_addr_from_url("http://127.0.0.1:2380").as_deref(), Ok("127.0.0.1:2380"));
        assert_eq!(peer_addr_from_url("127.0.0.1:2380/").as_deref(), Ok("127.0.0.1:2380"));
        assert!(peer_addr_from_url("http://nohost").is_err());
        assert!(peer_addr_from_url(":99").is_err());
    }
}
