//! SIGKILL a chunkserver in the middle of a chain write: the write fails cleanly with an error
//! naming the dead replica, no surviving replica reports data it does not have, and after a
//! restart the killed replica's data is intact.

mod chunkserver_common;

use std::time::{Duration, Instant};

use cairn_chunkserver::client::failed_replica;
use cairn_chunkserver::client::write_messages;
use cairn_fs_client::dev::Signal;
use cairn_proto::chunk::WriteHeader;
use chunkserver_common::{assert_truthful_prefix, cs, random_bytes, ChunkCluster, MIB};
use tokio_stream_shim::ReceiverStream;
use tonic::Code;

/// `tokio_stream` is not a dependency of the tests crate; a channel wrapped as a stream is all
/// that is needed.
mod tokio_stream_shim {
    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);
    impl<T> futures::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

fn header(chunk_id: u64, chain: Vec<String>) -> WriteHeader {
    WriteHeader { chunk_id, version: 1, create: true, chunk_size_bytes: 0, chain, sync: true, stream_bytes: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_fails_cleanly_and_keeps_data() -> anyhow::Result<()> {
    let mut cluster = ChunkCluster::start("cs-kill", &[]).await?;
    let chain = vec![cluster.addr(2), cluster.addr(3)];
    let primary = cluster.client(1);

    // Acknowledged writes first: they must survive the kill. Both are bulk streams (at least
    // 8 MiB, announced in the header), stored without the write-ahead log and persisted before
    // the answer, so even the one not asked to sync survives a killed process.
    let acknowledged = random_bytes(8 * MIB + 99, 7);
    assert_eq!(primary.write(header(1, chain.clone()), 0, &acknowledged, MIB).await?.replicas, 3);
    let unsynced = random_bytes(12 * MIB + 5, 9);
    let unsynced_header = WriteHeader { sync: false, ..header(4, chain.clone()) };
    assert_eq!(primary.write(unsynced_header, 0, &unsynced, MIB).await?.replicas, 3);
    assert_eq!(cluster.metric(3, "cairn_chunkserver_bulk_streams_total").await?, 2.0, "both went the bulk way");

    // A 48 MiB write, streamed slowly; chunkserver-3 (the tail) dies after 8 messages.
    let source = random_bytes(48 * MIB, 8);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut raw = primary.raw();
    let call = tokio::spawn(async move { raw.write_chunk(ReceiverStream(rx)).await });
    let started = Instant::now();
    for (i, message) in write_messages(header(2, chain.clone()), 0, &source, MIB).into_iter().enumerate() {
        if i == 8 {
            cluster.cluster.kill(cs(3), Signal::SIGKILL)?;
        }
        if tx.send(message).await.is_err() {
            break; // the primary gave up on the stream: expected after the kill
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tx);
    let err = call.await?.expect_err("a write with a dead replica must fail");
    assert!(started.elapsed() < Duration::from_secs(20), "the failure took {:?}", started.elapsed());
    eprintln!("the write failed after {:?}: {err:?}", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(failed_replica(&err), Some(cluster.addr(3)), "{err:?}");
    assert!(err.message().contains(&cluster.addr(3)), "the message names the replica: {err:?}");

    // Survivors: the acknowledged chunk is whole; the failed one is a truthful prefix.
    assert_truthful_prefix(&cluster, &[1, 2], 1, &acknowledged).await?;
    for n in [1, 2] {
        assert_eq!(cluster.client(n).stat(1, false).await?.length_bytes, acknowledged.len() as u64);
    }
    assert_truthful_prefix(&cluster, &[1, 2], 2, &source).await?;

    // The killed replica comes back with its data intact.
    cluster.cluster.restart(cs(3)).await?;
    cluster.cluster.wait_node_ready(cs(3), Duration::from_secs(30)).await?;
    cluster.wait_registered(&[1, 2, 3]).await?;
    let back = cluster.client(3).read(1, 1, 0, 64 * MIB as u64).await?;
    assert!(back == acknowledged, "chunkserver-3 lost acknowledged data");
    let back = cluster.client(3).read(4, 1, 0, 64 * MIB as u64).await?;
    assert!(back == unsynced, "chunkserver-3 lost an acknowledged bulk write");
    assert_truthful_prefix(&cluster, &[3], 2, &source).await?;

    // And the chain accepts writes again.
    assert_eq!(primary.write(header(3, chain), 0, b"after the restart", MIB).await?.replicas, 3);
    cluster.finish(&[])
}
