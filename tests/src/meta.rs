//! A metaserver group for the metaserver tests (`tests/metaserver_*.rs`): three coordinators and
//! three metaservers started by the dev launcher, no chunkservers, Raft timings calm enough for
//! a loaded 2-core machine, and gRPC clients for each metaserver.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;

use anyhow::bail;
use cairn_fs_client::dev::{Cluster, ClusterSpec, NodeId, NodeRef};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_service_client::MetaServiceClient;
use tonic::transport::Channel;

use crate::limits::{META_CONVERGE_TIMEOUT, META_READY_TIMEOUT, META_RPC_TIMEOUT};
use crate::{keep_for_diagnosis, poll_until};

pub type MetaClient = MetaServiceClient<Channel>;

/// A client of the metaserver at `addr` whose calls time out after `timeout`.
pub fn meta_client(addr: &str, timeout: Duration) -> anyhow::Result<MetaClient> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy();
    Ok(MetaServiceClient::new(channel))
}

/// Root's credentials.
pub fn root() -> Option<pb::Credentials> {
    Some(pb::Credentials { uid: 0, gid: 0, groups: Vec::new() })
}

/// Three metaservers (and three coordinators) in a temporary directory. A cluster whose test
/// did not reach [`MetaCluster::finish`] keeps its directory (logs and metadata) and says where.
pub struct MetaCluster {
    pub cluster: Cluster,
    dir: Option<tempfile::TempDir>,
}

impl MetaCluster {
    pub async fn start(name: &str) -> anyhow::Result<MetaCluster> {
        let dir = tempfile::Builder::new().prefix(&format!("cairn-{name}-")).tempdir()?;
        let mut spec = ClusterSpec::new(dir.path());
        spec.chunkservers = 0;
        spec.metaservers = 3;
        spec.ready_timeout = META_READY_TIMEOUT;
        let calm: Vec<OsString> =
            ["--heartbeat-interval", "100ms", "--election-timeout", "1s"].iter().map(OsString::from).collect();
        spec.coordinator_args = calm.clone();
        spec.metaserver_args = calm;
        match Cluster::start(spec).await {
            Ok(cluster) => Ok(MetaCluster { cluster, dir: Some(dir) }),
            Err(e) => Err(anyhow::Error::new(e).context(format!("start cluster (kept {})", keep_for_diagnosis(dir)))),
        }
    }

    pub fn ms(id: u64) -> NodeRef {
        NodeRef::metaserver(NodeId(id))
    }

    pub fn client_with(&self, id: u64, timeout: Duration) -> anyhow::Result<MetaClient> {
        meta_client(&self.cluster.node(Self::ms(id))?.addrs.client.to_string(), timeout)
    }

    pub fn client(&self, id: u64) -> anyhow::Result<MetaClient> {
        self.client_with(id, META_RPC_TIMEOUT)
    }

    /// A metaserver's `/status` document.
    pub async fn status(&self, id: u64) -> anyhow::Result<serde_json::Value> {
        let addr = self.cluster.node(Self::ms(id))?.addrs.http;
        let response = cairn_fs_client::http::get(addr, "/status", Duration::from_secs(5)).await?;
        Ok(serde_json::from_slice(&response.body)?)
    }

    /// The metaserver leader, as the leader itself confirms (never `not`).
    pub async fn leader(&self, not: Option<u64>) -> anyhow::Result<u64> {
        poll_until("a metaserver leader", META_CONVERGE_TIMEOUT, || async {
            for id in self.cluster.metaserver_ids() {
                if Some(id.0) == not || !self.cluster.is_running(Self::ms(id.0)) {
                    continue;
                }
                let Ok(status) = self.status(id.0).await else { continue };
                if status["state"] == "Leader" {
                    return Ok(id.0);
                }
            }
            Err("no node says it leads")
        })
        .await
    }

    /// Digests of every running metaserver, once they agree.
    pub async fn converged_digest(&self) -> anyhow::Result<Vec<u8>> {
        poll_until("identical namespaces on every metaserver", META_CONVERGE_TIMEOUT, || async {
            let mut digests = BTreeSet::new();
            let mut report = Vec::new();
            for id in self.cluster.metaserver_ids() {
                let mut c = self.client(id.0).map_err(|e| e.to_string())?;
                let d = c.digest(pb::DigestRequest {}).await.map_err(|e| e.to_string())?.into_inner();
                report.push(format!("node {} applied {} rows {}", d.node_id, d.applied_index, d.rows));
                digests.insert(d.digest);
            }
            if digests.len() == 1 {
                Ok(digests.into_iter().next().unwrap_or_default())
            } else {
                Err(report.join("; "))
            }
        })
        .await
    }

    /// Ends the test: fails on ERROR lines in the server logs that contain none of `allowed`;
    /// otherwise the directory is removed.
    pub fn finish(mut self, allowed: &[&str]) -> anyhow::Result<()> {
        let found = self.cluster.unexpected_errors(allowed)?;
        if !found.is_empty() {
            let lines: Vec<String> = found.iter().take(20).map(ToString::to_string).collect();
            bail!("unexpected ERROR lines:\n{}", lines.join("\n"));
        }
        self.dir.take();
        Ok(())
    }
}

impl Drop for MetaCluster {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            eprintln!("test did not finish: cluster kept in {}", keep_for_diagnosis(dir));
        }
    }
}
