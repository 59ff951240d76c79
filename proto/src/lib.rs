//! Cairn's protobuf definitions and the Rust code generated from them (prost messages, tonic
//! clients and servers).
//!
//! * The etcd v3.4 gRPC protocol, wire-compatible with etcd clients: [`etcdserverpb`] (services
//!   `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth`), [`mvccpb`] (`KeyValue`,
//!   `Event`), [`authpb`] (`User`, `Permission`, `Role`), [`v3lockpb`] (service `Lock`) and
//!   [`v3electionpb`] (service `Election`). The module names equal the proto package names so
//!   that generated cross-package references (`super::mvccpb::KeyValue`, ...) resolve.
//! * Cairn's own protocols: [`raft`] (`cairn.raft.v1`, the Raft transport between coordinator
//!   replicas), [`coordinator`] (`cairn.coordinator.v1`, the coordinator's replicated command
//!   log format) and [`chunk`] (`cairn.chunk.v1`, the chunkserver API).
//!
//! Every generated service encodes with [`codec::ReservingCodec`] (prost's codec, reserving each
//! outgoing message's space whole first).
//!
//! The `.proto` sources live in this crate's `proto/` directory; [`FILE_DESCRIPTOR_SET`] holds
//! their encoded descriptors (e.g. for gRPC server reflection).

/// Generated code from the etcd v3.4 package `etcdserverpb` (`rpc.proto`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Generated code from the etcd v3.4 package `mvccpb` (`kv.proto`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Generated code from the etcd v3.4 package `authpb` (`auth.proto`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// Generated code from the etcd v3.4 package `v3lockpb` (`v3lock.proto`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// Generated code from the etcd v3.4 package `v3electionpb` (`v3election.proto`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Cairn's own packages, nested as in their proto package names (`cairn.raft.v1`, ...).
/// Prefer the re-exports [`raft`], [`coordinator`] and [`chunk`].
pub mod cairn {
    /// Package `cairn.raft`.
    pub mod raft {
        /// Generated code from package `cairn.raft.v1` (`raft.proto`).
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("cairn.raft.v1");
        }
    }

    /// Package `cairn.coordinator`.
    pub mod coordinator {
        /// Generated code from package `cairn.coordinator.v1` (`coordinator.proto`).
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("cairn.coordinator.v1");
        }
    }

    /// Package `cairn.meta`.
    pub mod meta {
        /// Generated code from package `cairn.meta.v1` (`meta.proto`): the metaserver API.
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("cairn.meta.v1");
        }
    }

    /// Package `cairn.chunk`.
    pub mod chunk {
        /// Generated code from package `cairn.chunk.v1` (`chunk.proto`): the chunkserver API.
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v1 {
            tonic::include_proto!("cairn.chunk.v1");
        }
    }
}

pub mod codec;

pub use cairn::chunk::v1 as chunk;
pub use cairn::coordinator::v1 as coordinator;
pub use cairn::meta::v1 as meta;
pub use cairn::raft::v1 as raft;

/// gRPC response metadata a metaserver follower adds to every answer: the client address of the
/// leader it knows. A client that follows it sends its next calls to the leader directly,
/// saving the follower's forwarding hop on changes and its read-index round on reads.
pub const META_LEADER_HEADER: &str = "cairn-meta-leader";

/// gRPC request metadata that makes a metaserver change apply once: `SESSION:SEQ:DONE_BELOW`
/// in decimal — the client's session, the request's number within it (the same on every retry)
/// and the lowest number still waiting for its answer. A retry of a change that was applied
/// gets the first reply instead of applying again.
pub const META_REQUEST_HEADER: &str = "cairn-request";

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cairn_descriptor");

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn put_request_round_trips() {
        let req = etcdserverpb::PutRequest {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            lease: 42,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: false,
        };
        let bytes = req.encode_to_vec();
        let decoded = etcdserverpb::PutRequest::decode(bytes.as_slice()).expect("decode");
        assert_eq!(decoded, req);
    }

    #[test]
    fn internal_request_wraps_etcd_messages() {
        let req = coordinator::InternalRequest {
            request: Some(coordinator::internal_request::Request::Put(etcdserverpb::PutRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        };
        let decoded = coordinator::InternalRequest::decode(req.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(decoded, req);
    }

    #[test]
    fn generated_services_exist() {
        // Compile-time checks that the tonic server and client types were generated.
        fn assert_type<T>() {}
        assert_type::<etcdserverpb::kv_server::KvServer<DummyKv>>();
        assert_type::<raft::raft_service_client::RaftServiceClient<tonic::transport::Channel>>();
        assert_type::<v3lockpb::lock_client::LockClient<tonic::transport::Channel>>();
        assert_type::<v3electionpb::election_client::ElectionClient<tonic::transport::Channel>>();
        assert!(!FILE_DESCRIPTOR_SET.is_empty());
    }

    struct DummyKv;

    #[tonic::async_trait]
    impl etcdserverpb::kv_server::Kv for DummyKv {
        async fn range(
            &self,
            _: tonic::Request<etcdserverpb::RangeRequest>,
        ) -> Result<tonic::Response<etcdserverpb::RangeResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("range"))
        }
        async fn put(
            &self,
            _: tonic::Request<etcdserverpb::PutRequest>,
        ) -> Result<tonic::Response<etcdserverpb::PutResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("put"))
        }
        async fn delete_range(
            &self,
            _: tonic::Request<etcdserverpb::DeleteRangeRequest>,
        ) -> Result<tonic::Response<etcdserverpb::DeleteRangeResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("delete_range"))
        }
        async fn txn(
            &self,
            _: tonic::Request<etcdserverpb::TxnRequest>,
        ) -> Result<tonic::Response<etcdserverpb::TxnResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("txn"))
        }
        async fn compact(
            &self,
            _: tonic::Request<etcdserverpb::CompactionRequest>,
        ) -> Result<tonic::Response<etcdserverpb::CompactionResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("compact"))
        }
    }
}
