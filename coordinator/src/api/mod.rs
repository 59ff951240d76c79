//! gRPC adapters for the etcd v3 API. Each translates a request, delegates to
//! [`Backend`](crate::backend::Backend) or [`WatchSession`](crate::watch::WatchSession), and maps
//! errors through the single table in [`error`].

pub mod cluster;
pub mod election;
pub mod error;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

/// Refuses a request larger than the client port's gRPC limit the way grpc-go (and so etcd)
/// does: RESOURCE_EXHAUSTED, with grpc-go's message.
pub(crate) fn check_message_size<M: prost::Message>(request: &M) -> Result<(), tonic::Status> {
    let len = request.encoded_len();
    if len > crate::limits::GRPC_RECV_BYTES_MAX {
        return Err(tonic::Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {})",
            crate::limits::GRPC_RECV_BYTES_MAX
        )));
    }
    Ok(())
}
