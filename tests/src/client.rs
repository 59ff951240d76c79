//! Helpers around the Rust etcd-client.

use std::fmt::Debug;

use anyhow::{bail, Context as _};
use etcd_client::{Client, ConnectOptions, KeyValue, WatchResponse, WatchStream};
use tokio::time::timeout;

use crate::limits::{CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT, STREAM_MESSAGE_TIMEOUT};

/// An etcd-client connected to `endpoints` (`host:port`), with request deadlines.
pub async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    let options =
        ConnectOptions::new().with_connect_timeout(CLIENT_CONNECT_TIMEOUT).with_timeout(CLIENT_REQUEST_TIMEOUT);
    Client::connect(endpoints, Some(options)).await.with_context(|| format!("connect etcd-client to {endpoints:?}"))
}

/// Keys and values as text, for comparisons with literals.
pub fn kvs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned()))
        .collect()
}

/// Requires `result` to be a gRPC error with `code` and, if given, exactly `message` (etcd's
/// error strings are part of its API: clients match on them).
pub fn expect_grpc_error<T: Debug>(
    what: &str,
    result: Result<T, etcd_client::Error>,
    code: tonic::Code,
    message: Option<&str>,
) -> anyhow::Result<()> {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            if status.code() != code || message.is_some_and(|m| status.message() != m) {
                bail!("{what}: got {:?} {:?}, expected {code:?} {message:?}", status.code(), status.message());
            }
            Ok(())
        }
        Err(other) => bail!("{what}: got {other:?}, expected the gRPC error {code:?} {message:?}"),
        Ok(value) => bail!("{what}: succeeded with {value:?}, expected the gRPC error {code:?} {message:?}"),
    }
}

/// The next response on a watch stream, within [`STREAM_MESSAGE_TIMEOUT`].
pub async fn next_watch_response(stream: &mut WatchStream) -> anyhow::Result<WatchResponse> {
    match timeout(STREAM_MESSAGE_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(response))) => Ok(response),
        Ok(Ok(None)) => bail!("the watch stream ended"),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("read the watch stream")),
        Err(_) => bail!("no watch response within {STREAM_MESSAGE_TIMEOUT:?}"),
    }
}
