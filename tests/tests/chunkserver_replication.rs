//! Three chunkservers on loopback (with a coordinator cluster for their registration), started
//! by the dev launcher: writes through a 3-replica chain read back byte-identical from every
//! replica; overwrites, truncates, version bumps, bad requests, copy-from-peer and a clean
//! shutdown behave as promised.

mod chunkserver_common;

use cairn_chunkserver::client::{failed_replica, write_messages};
use cairn_proto::chunk::{DeleteChunkRequest, TruncateChunkRequest, WriteChunkRequest, WriteHeader};
use chunkserver_common::{cs, poll, random_bytes, ChunkCluster, MIB};
use std::time::Duration;
use tonic::Code;

fn header(chunk_id: u64, version: u64, chain: Vec<String>) -> WriteHeader {
    WriteHeader { chunk_id, version, create: true, chunk_size_bytes: 0, chain, sync: true, stream_bytes: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_write_reads_back_identical_from_every_replica() -> anyhow::Result<()> {
    let mut cluster = ChunkCluster::start("cs-replication", &[]).await?;
    let entries = cluster.registry().await?;
    assert!(entries.iter().all(|e| e.capacity_bytes > 0 && e.free_bytes > 0), "{entries:?}");
    let (c1, c2, c3) = (cluster.client(1), cluster.client(2), cluster.client(3));
    let chain = vec![cluster.addr(2), cluster.addr(3)];

    // 10 MiB plus a ragged tail, at an unaligned offset, in 1 MiB messages.
    let mut model = vec![0u8; 777];
    let data = random_bytes(10 * MIB + 12_345, 1);
    model.extend_from_slice(&data);
    let response = c1.write(header(1, 1, chain.clone()), 777, &data, MIB).await?;
    assert_eq!(response.replicas, 3);
    assert_eq!(response.length_bytes, model.len() as u64);
    let digest = blake3::hash(&model);
    for client in [&c1, &c2, &c3] {
        let back = client.read(1, 1, 0, 64 * MIB as u64).await?;
        assert!(back == model, "replica {} returned different bytes", client.addr());
        let stat = client.stat(1, true).await?;
        assert_eq!((stat.version, stat.length_bytes, stat.corrupt), (1, model.len() as u64, false));
        assert_eq!(stat.blake3, digest.as_bytes().to_vec(), "digest on {}", client.addr());
    }

    // A partial overwrite straddling blocks, a write past a hole, then a truncate down.
    let patch = random_bytes(100_000, 2);
    c1.write(header(1, 1, chain.clone()), 5_000_000, &patch, MIB).await?;
    model[5_000_000..5_100_000].copy_from_slice(&patch);
    c1.write(header(1, 1, chain.clone()), 40 * MIB as u64, b"after a hole", MIB).await?;
    model.resize(40 * MIB, 0);
    model.extend_from_slice(b"after a hole");
    let truncated = c1
        .truncate(TruncateChunkRequest {
            chunk_id: 1,
            version: 1,
            length_bytes: 30 * MIB as u64 + 3,
            chain: chain.clone(),
            sync: true,
        })
        .await?;
    assert_eq!(truncated.replicas, 3);
    model.truncate(30 * MIB + 3);
    for client in [&c1, &c2, &c3] {
        let back = client.read(1, 1, 0, 64 * MIB as u64).await?;
        assert!(back == model, "replica {} diverged after overwrite/truncate", client.addr());
    }

    // Bad requests get clear statuses and change nothing.
    let stale = WriteHeader { create: false, ..header(1, 0, chain.clone()) };
    let err = c1.write(stale, 0, b"x", MIB).await.expect_err("stale version");
    assert_eq!(err.status().map(|s| s.code()), Some(Code::FailedPrecondition), "{err}");
    let err = c1.write(header(1, 1, chain.clone()), 64 * MIB as u64 - 1, b"xy", MIB).await.expect_err("range");
    assert_eq!(err.status().map(|s| s.code()), Some(Code::OutOfRange), "{err}");
    let mut messages = write_messages(header(1, 1, chain.clone()), 0, b"corrupted on the wire", MIB);
    messages[0].crc32 ^= 1;
    let err = c1.raw().write_chunk(futures::stream::iter(messages)).await.expect_err("wire crc");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("CRC mismatch"), "{err:?}");
    let oversized = vec![WriteChunkRequest {
        header: Some(header(1, 1, chain.clone())),
        offset: 0,
        data: vec![1; 4 * MIB + 1].into(),
        crc32: cairn_chunkserver::block::crc32(&vec![1; 4 * MIB + 1]),
    }];
    let err = c1.raw().write_chunk(futures::stream::iter(oversized)).await.expect_err("oversized");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    for client in [&c1, &c2, &c3] {
        assert!(client.read(1, 1, 0, 64 * MIB as u64).await? == model, "a refused write changed {}", client.addr());
    }

    // A replica with an older version refuses, and the error names it.
    c1.update_version(1, 1, 2).await?;
    c2.update_version(1, 1, 2).await?;
    let err = c1.write(header(1, 2, chain.clone()), 0, b"v2", MIB).await.expect_err("c3 is stale");
    let status = err.status().expect("status");
    assert_eq!(status.code(), Code::Unavailable, "{err}");
    assert_eq!(failed_replica(status), Some(cluster.addr(3)), "{err}");
    assert!(status.message().contains("stale replica"), "{err}");

    // Heal the stale replica by copying from a peer, then the chain works again.
    let copied = c3.copy_from_peer(1, 2, &cluster.addr(1)).await?;
    assert_eq!(copied.version, 2);
    model[..2].copy_from_slice(b"v2");
    c1.write(header(1, 2, chain.clone()), 0, b"v2", MIB).await?;
    let digest = blake3::hash(&model);
    for client in [&c1, &c2, &c3] {
        let stat = client.stat(1, true).await?;
        assert_eq!((stat.version, stat.blake3.as_slice()), (2, digest.as_bytes().as_slice()), "{}", client.addr());
        let listed = client.list(0, 0).await?;
        assert_eq!(listed.chunks.iter().map(|c| (c.chunk_id, c.version)).collect::<Vec<_>>(), vec![(1, 2)]);
    }

    // Delete along the chain.
    let deleted = c1.delete(DeleteChunkRequest { chunk_id: 1, version: 2, chain: chain.clone(), sync: true }).await?;
    assert_eq!((deleted.existed, deleted.replicas), (true, 3));
    for client in [&c1, &c2, &c3] {
        let err = client.stat(1, false).await.expect_err("deleted");
        assert_eq!(err.status().map(|s| s.code()), Some(Code::NotFound));
    }

    // A clean SIGTERM: the process exits 0 and its registry entry goes at once (lease revoked).
    let status = cluster.cluster.stop(cs(3)).await?;
    assert!(status.success(), "chunkserver-3 exited with {status}");
    cluster.wait_registered(&[1, 2]).await?;
    cluster.cluster.restart(cs(3)).await?;
    cluster.cluster.wait_node_ready(cs(3), Duration::from_secs(30)).await?;
    cluster.wait_registered(&[1, 2, 3]).await?;
    let registered = poll("metric", Duration::from_secs(5), || async {
        cluster.metric(3, "cairn_chunkserver_registered").await.map_err(|e| e.to_string())
    })
    .await?;
    assert_eq!(registered, 1.0);
    cluster.finish(&[])
}
