//! Where the leader is, for clients that reached a follower. A follower forwards every change to
//! the leader and asks it for a read index before every read, so a client that keeps calling a
//! follower pays a second round trip per call and makes two servers work for it. Every answer a
//! follower gives carries the leader's client address in [`META_LEADER_HEADER`]; clients that
//! know that address move their next calls there.

use cairn_coordinator::rsm::Rsm;
use cairn_proto::META_LEADER_HEADER;
use tonic::codegen::http;
use tower::util::MapResponseLayer;

use crate::namespace::Namespace;

/// A layer for the client-facing gRPC server that adds the hint to every response of a node
/// that knows a leader other than itself.
pub fn layer<B>(rsm: Rsm<Namespace>) -> MapResponseLayer<impl Fn(http::Response<B>) -> http::Response<B> + Clone> {
    MapResponseLayer::new(move |mut response: http::Response<B>| {
        if let Some(value) = rsm.leader_client_addr().and_then(|a| http::HeaderValue::try_from(a).ok()) {
            response.headers_mut().insert(META_LEADER_HEADER, value);
        }
        response
    })
}
