//! Corruption on one replica: a byte of a stored block value is flipped through RocksDB while
//! the chunkserver is stopped (`cairn_chunkserver::debug::corrupt_block` opens the stopped
//! server's database directly). The scrubber reports the chunk, a read from that replica fails
//! with a checksum error naming the block, a read with failover returns the right bytes, and a
//! copy from a healthy peer repairs the replica.

mod chunkserver_common;

use std::time::Duration;

use cairn_chunkserver::client::{corrupt_block, is_checksum_error, read_with_failover};
use cairn_chunkserver::ids::ChunkId;
use cairn_proto::chunk::WriteHeader;
use chunkserver_common::{cs, poll, random_bytes, ChunkCluster, MIB};
use tonic::Code;

const CHUNK: u64 = 42;
const BAD_BLOCK: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_replica_is_detected_reported_and_bypassed() -> anyhow::Result<()> {
    let mut cluster =
        ChunkCluster::start("cs-corruption", &["--scrub-interval", "1s", "--scrub-rate", "256MiB"]).await?;
    let chain = vec![cluster.addr(2), cluster.addr(3)];
    let data = random_bytes(3 * MIB + 1234, 42);
    let header = WriteHeader { chunk_id: CHUNK, version: 1, create: true, chain, sync: true, ..Default::default() };
    assert_eq!(cluster.client(1).write(header, 0, &data, MIB).await?.replicas, 3);

    // Damage block 5 on chunkserver-2's disk.
    let status = cluster.cluster.stop(cs(2)).await?;
    assert!(status.success(), "{status}");
    cairn_chunkserver::debug::corrupt_block(&cluster.data_dir(2), ChunkId(CHUNK), BAD_BLOCK)?;
    cluster.cluster.restart(cs(2)).await?;
    cluster.cluster.wait_node_ready(cs(2), Duration::from_secs(30)).await?;

    // The scrubber finds it (before any client read touches it).
    let report = poll("the scrubber reports the corrupt chunk", Duration::from_secs(30), || async {
        let status = cluster.status(2).await.map_err(|e| e.to_string())?;
        let corrupt = status["corrupt_chunks"].as_array().cloned().unwrap_or_default();
        corrupt.into_iter().find(|c| c["chunk_id"] == CHUNK).ok_or_else(|| format!("status: {status}"))
    })
    .await?;
    assert_eq!(report["found_by"], "scrub", "{report}");
    assert_eq!(report["block"], BAD_BLOCK, "{report}");
    assert!(cluster.metric(2, "cairn_chunkserver_scrub_corrupt_chunks_total").await? >= 1.0);
    let listed = cluster.client(2).list(0, 0).await?;
    assert!(listed.chunks.iter().any(|c| c.chunk_id == CHUNK && c.corrupt), "{listed:?}");
    // The healthy replicas report nothing.
    for n in [1, 3] {
        assert_eq!(cluster.status(n).await?["corrupt_chunks"], serde_json::json!([]));
    }

    // A read from the bad replica fails with a checksum error naming chunk and block ...
    let err = cluster.client(2).read(CHUNK, 1, 0, 64 * MIB as u64).await.expect_err("checksum error");
    let status = err.status().expect("a server status");
    assert_eq!(status.code(), Code::DataLoss, "{err}");
    assert!(is_checksum_error(status), "{err}");
    assert_eq!(corrupt_block(status), Some(BAD_BLOCK));
    assert!(status.message().contains(&format!("block {BAD_BLOCK}")), "{err}");
    // ... while ranges that avoid the bad block still read fine there.
    let block_size = u64::from(cluster.client(2).stat(CHUNK, false).await?.block_size_bytes);
    let head = cluster.client(2).read(CHUNK, 1, 0, block_size).await?;
    assert!(head == data[..block_size as usize]);

    // Failover: the bad replica first, the read still returns the right bytes.
    let replicas = [cluster.client(2), cluster.client(1), cluster.client(3)];
    let read = read_with_failover(&replicas, CHUNK, 1, 0, 64 * MIB as u64).await?;
    assert!(read.data == data, "failover returned wrong bytes");
    assert_eq!(read.served_by, cluster.addr(1));
    assert_eq!(read.failures.len(), 1);
    assert!(read.failures[0].1.status().is_some_and(is_checksum_error), "{:?}", read.failures);

    // Repair from a healthy peer; the replica is clean again.
    cluster.client(2).copy_from_peer(CHUNK, 1, &cluster.addr(3)).await?;
    let back = cluster.client(2).read(CHUNK, 1, 0, 64 * MIB as u64).await?;
    assert!(back == data, "the repaired replica returns wrong bytes");
    let stat = cluster.client(2).stat(CHUNK, true).await?;
    assert!(!stat.corrupt);
    assert_eq!(stat.blake3, blake3::hash(&data).as_bytes().to_vec());
    assert_eq!(cluster.status(2).await?["corrupt_chunks"], serde_json::json!([]));

    // The only ERROR lines are the corruption reports of chunkserver-2 (someone must act).
    cluster.finish(&["corrupt chunk replica"])
}
