//! Key-value calls: reads (linearizable, retried anywhere) and writes (retried only when
//! provably not applied; see the module documentation of [`super`]).

use cairn_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

use super::error::ClientError;
use super::retry::Op;
use super::txn::{is_read_only, TxnOutcome};
use super::types::{prefix_range_end, Deleted, KeyValue, LeaseId, Range, Revision};
use super::{header_revision, kv_client, CoordinatorClient};

impl CoordinatorClient {
    /// The key's current value, or `None` if it does not exist.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, ClientError> {
        let range = self.range("get", RangeRequest { key: key.into(), ..Default::default() }).await?;
        Ok(range.kvs.into_iter().next())
    }

    /// Every key starting with `prefix`, in key order, with the revision they were read at
    /// (watch from `revision + 1` to see every later change).
    pub async fn get_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Range, ClientError> {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        self.range("get_prefix", RangeRequest { key, range_end, ..Default::default() }).await
    }

    /// Every key in `[start, end)`, in key order.
    pub async fn get_range(&self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Result<Range, ClientError> {
        self.range("get_range", RangeRequest { key: start.into(), range_end: end.into(), ..Default::default() }).await
    }

    async fn range(&self, operation: &'static str, request: RangeRequest) -> Result<Range, ClientError> {
        let (response, endpoint) = self
            .call(operation, Op::Read, |channel| {
                let request = self.request(request.clone());
                async move { kv_client(channel).range(request).await }
            })
            .await?;
        Ok(Range {
            revision: header_revision(response.header, operation, self.addr(endpoint))?,
            kvs: response.kvs.into_iter().map(KeyValue::from_proto).collect(),
            more: response.more,
            count: response.count,
        })
    }

    /// Sets `key` to `value`, attached to `lease` if given (the key is deleted when the lease
    /// ends). Returns the revision of the write.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, ClientError> {
        let request =
            PutRequest { key: key.into(), value: value.into(), lease: lease.map_or(0, |l| l.0), ..Default::default() };
        let (response, endpoint) = self
            .call("put", Op::Write, |channel| {
                let request = self.request(request.clone());
                async move { kv_client(channel).put(request).await }
            })
            .await
            .map_err(|e| lease_error(e, lease))?;
        header_revision(response.header, "put", self.addr(endpoint))
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Deleted, ClientError> {
        self.delete_range("delete", DeleteRangeRequest { key: key.into(), ..Default::default() }).await
    }

    /// Deletes every key starting with `prefix`.
    pub async fn delete_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<Deleted, ClientError> {
        let key = prefix.into();
        let range_end = prefix_range_end(&key);
        self.delete_range("delete_prefix", DeleteRangeRequest { key, range_end, ..Default::default() }).await
    }

    async fn delete_range(&self, operation: &'static str, request: DeleteRangeRequest) -> Result<Deleted, ClientError> {
        let (response, endpoint) = self
            .call(operation, Op::Write, |channel| {
                let request = self.request(request.clone());
                async move { kv_client(channel).delete_range(request).await }
            })
            .await?;
        Ok(Deleted {
            revision: header_revision(response.header, operation, self.addr(endpoint))?,
            count: response.deleted,
        })
    }

    /// Runs a transaction, built with [`super::Txn`] or given as a raw [`TxnRequest`]. A
    /// transaction that only reads is retried like a read; any other like a write.
    pub async fn txn(&self, txn: impl Into<TxnRequest>) -> Result<TxnOutcome, ClientError> {
        let request = txn.into();
        let op = if is_read_only(&request) { Op::Read } else { Op::Write };
        let (response, endpoint) = self
            .call("txn", op, |channel| {
                let request = self.request(request.clone());
                async move { kv_client(channel).txn(request).await }
            })
            .await?;
        let revision = header_revision(response.header, "txn", self.addr(endpoint))?;
        TxnOutcome::from_proto(response.succeeded, revision, response.responses)
            .map_err(|what| ClientError::Malformed { operation: "txn", endpoint: self.addr(endpoint).to_owned(), what })
    }

    /// Discards the history before `revision`: watches and reads can no longer start before
    /// it. Compacting again at or below an earlier compaction fails with etcd's "required
    /// revision has been compacted" ([`ClientError::Server`]).
    pub async fn compact(&self, revision: Revision) -> Result<(), ClientError> {
        let request = CompactionRequest { revision: revision.0, physical: false };
        self.call("compact", Op::Write, |channel| {
            let request = self.request(request);
            async move { kv_client(channel).compact(request).await }
        })
        .await?;
        Ok(())
    }
}

/// etcd's answer to a request naming a lease that does not exist.
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// Turns etcd's "lease not found" answer into [`ClientError::LeaseNotFound`].
pub(crate) fn lease_error(error: ClientError, lease: Option<LeaseId>) -> ClientError {
    match (error, lease) {
        (ClientError::Server { code: tonic::Code::NotFound, message, .. }, Some(lease))
            if message == LEASE_NOT_FOUND =>
        {
            ClientError::LeaseNotFound { lease }
        }
        (error, _) => error,
    }
}
