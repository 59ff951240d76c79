//! Benchmarks behind `cairn-chunkserver bench-blocks` (the engine on RocksDB, per block size:
//! how the block size was chosen) and `cairn-chunkserver bench` (running chunkservers over
//! gRPC: 1 MiB-message writes through a chain and reads from the primary).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use cairn_proto::chunk::{DeleteChunkRequest, WriteHeader};
use rand::{Rng, SeedableRng};

use crate::client::ChunkClient;
use crate::config::parse_size;
use crate::engine::{ChunkEngine, WriteTarget};
use crate::ids::{ChunkId, ChunkVersion};
use crate::limits::{BLOCK_CACHE_DEFAULT_BYTES, CHUNK_SIZE_DEFAULT_BYTES, MIB};
use crate::space::Space;
use crate::storage::{ChunkStore, IoMode, RocksStore};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchBlocksArgs {
    /// Scratch directory (one RocksDB per block size is created inside and removed after).
    #[arg(long)]
    pub dir: PathBuf,
    /// Block sizes to compare.
    #[arg(long, value_delimiter = ',', default_value = "16KiB,64KiB,256KiB,1MiB")]
    pub sizes: Vec<String>,
    /// Bytes written sequentially (in 64 MiB chunks, 1 MiB per write, fsync per chunk).
    #[arg(long, default_value = "512MiB")]
    pub total: String,
    /// Random 4 KiB overwrites and random 4 KiB reads, each.
    #[arg(long, default_value_t = 2000)]
    pub random_ops: usize,
    /// Drop the page cache (root) before each read phase, so reads come from the disk.
    #[arg(long)]
    pub drop_caches: bool,
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

fn mib_per_s(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

/// Compares block sizes on the engine over RocksDB in `args.dir`.
pub fn bench_blocks(args: &BenchBlocksArgs) -> anyhow::Result<()> {
    let total = parse_size(&args.total).map_err(anyhow::Error::msg)?;
    let chunks = (total / CHUNK_SIZE_DEFAULT_BYTES).max(1);
    let payload = pseudo_random(MIB as usize, 1);
    println!(
        "| block size | seq write MiB/s | seq read MiB/s | 4 KiB overwrite ops/s | 4 KiB read ops/s | disk bytes / data bytes |"
    );
    println!("|---|---|---|---|---|---|");
    for size in &args.sizes {
        let block = u32::try_from(parse_size(size).map_err(anyhow::Error::msg)?).context("block size")?;
        let dir = args.dir.join(format!("bs-{block}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(RocksStore::open(&dir, IoMode::Direct, BLOCK_CACHE_DEFAULT_BYTES as usize)?);
        let engine = ChunkEngine::open(store.clone(), Arc::new(Space::fixed(u64::MAX / 2, 0, None)), block)?;
        let target =
            |c: u64| WriteTarget { chunk: ChunkId(c), version: ChunkVersion(1), create: true, chunk_size_bytes: 0 };

        let started = Instant::now();
        for c in 1..=chunks {
            for offset in (0..CHUNK_SIZE_DEFAULT_BYTES).step_by(MIB as usize) {
                engine.write(&target(c), offset, &payload)?;
            }
            engine.sync()?;
        }
        let write = mib_per_s(chunks * CHUNK_SIZE_DEFAULT_BYTES, started);
        if args.drop_caches {
            drop_page_cache()?;
        }

        let started = Instant::now();
        for c in 1..=chunks {
            for offset in (0..CHUNK_SIZE_DEFAULT_BYTES).step_by(MIB as usize) {
                let (_, data) = engine.read(ChunkId(c), None, offset, MIB)?;
                anyhow::ensure!(data.len() == MIB as usize, "short read");
            }
        }
        let read = mib_per_s(chunks * CHUNK_SIZE_DEFAULT_BYTES, started);

        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let small = pseudo_random(4096, 3);
        let started = Instant::now();
        for _ in 0..args.random_ops {
            let c = rng.gen_range(1..=chunks);
            let offset = rng.gen_range(0..CHUNK_SIZE_DEFAULT_BYTES / 4096) * 4096;
            engine.write(&target(c), offset, &small)?;
        }
        engine.sync()?;
        let overwrite = args.random_ops as f64 / started.elapsed().as_secs_f64();
        if args.drop_caches {
            drop_page_cache()?;
        }

        let started = Instant::now();
        for _ in 0..args.random_ops {
            let c = rng.gen_range(1..=chunks);
            let offset = rng.gen_range(0..CHUNK_SIZE_DEFAULT_BYTES / 4096) * 4096;
            engine.read(ChunkId(c), None, offset, 4096)?;
        }
        let random_read = args.random_ops as f64 / started.elapsed().as_secs_f64();
        let amplification = store.disk_bytes() as f64 / (chunks * CHUNK_SIZE_DEFAULT_BYTES) as f64;
        println!(
            "| {size} | {write:.0} | {read:.0} | {overwrite:.0} | {random_read:.0} | {amplification:.2} (before flush/GC) |"
        );
        drop(engine);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Chunkservers (host:port): the first is the primary, the rest its chain.
    #[arg(long, value_delimiter = ',', required = true)]
    pub replicas: Vec<String>,
    /// Bytes to write and then read (in 64 MiB chunks).
    #[arg(long, default_value = "512MiB")]
    pub size: String,
    /// Bytes per gRPC message.
    #[arg(long, default_value = "1MiB")]
    pub message: String,
    /// Chunks written (and read) concurrently.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Id of the first chunk used; chunks are deleted afterwards.
    #[arg(long, default_value_t = 1_000_000)]
    pub first_chunk_id: u64,
    /// Between writing and reading, sync and drop the kernel's page cache (needs root), so
    /// reads come from the disk like a raw `dd iflag=direct` does.
    #[arg(long)]
    pub drop_caches: bool,
    /// Then time this many small synced writes one after another, each creating a chunk of
    /// its own, as a small file's close does (0: skip).
    #[arg(long, default_value_t = 0)]
    pub small_writes: usize,
    /// Bytes per small write.
    #[arg(long, default_value = "4KiB")]
    pub small_size: String,
    /// Send each small write to every replica at once (an empty chain each), as the FUSE
    /// client does for writes of up to 256 KiB, instead of through the chain.
    #[arg(long)]
    pub small_fanout: bool,
}

/// `sync` then drop clean page-cache pages (Linux, root only).
fn drop_page_cache() -> anyhow::Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "1\n").context("write /proc/sys/vm/drop_caches (needs root)")
}

/// Writes through a chain and reads back from the primary; prints MiB/s for each.
pub async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let size = parse_size(&args.size).map_err(anyhow::Error::msg)?;
    let message = parse_size(&args.message).map_err(anyhow::Error::msg)? as usize;
    let chunks = (size / CHUNK_SIZE_DEFAULT_BYTES).max(1);
    let total = chunks * CHUNK_SIZE_DEFAULT_BYTES;
    let primary = ChunkClient::connect_lazy(&args.replicas[0])?;
    let chain: Vec<String> = args.replicas[1..].to_vec();
    let data = Arc::new(pseudo_random(CHUNK_SIZE_DEFAULT_BYTES as usize, 9));
    let ids: Vec<u64> = (0..chunks).map(|i| args.first_chunk_id + i).collect();
    let streams = args.streams.max(1);

    let started = Instant::now();
    run_parallel(&ids, streams, |id| {
        let (primary, chain, data) = (primary.clone(), chain.clone(), data.clone());
        async move {
            let header =
                WriteHeader { chunk_id: id, version: 1, create: true, chain, sync: true, ..Default::default() };
            let response = primary.write(header, 0, &data, message).await?;
            anyhow::ensure!(
                response.replicas as usize == args.replicas.len(),
                "only {} replicas acknowledged",
                response.replicas
            );
            Ok(())
        }
    })
    .await?;
    let write = mib_per_s(total, started);
    if args.drop_caches {
        drop_page_cache()?;
    }

    let started = Instant::now();
    run_parallel(&ids, streams, |id| {
        let primary = primary.clone();
        async move {
            let back = primary.read(id, 1, 0, CHUNK_SIZE_DEFAULT_BYTES).await?;
            anyhow::ensure!(back.len() as u64 == CHUNK_SIZE_DEFAULT_BYTES, "short read of chunk {id}");
            Ok(())
        }
    })
    .await?;
    let read = mib_per_s(total, started);
    for &id in &ids {
        primary.delete(DeleteChunkRequest { chunk_id: id, version: 0, chain: chain.clone(), sync: false }).await?;
    }
    println!(
        "replicas={} size={}MiB message={}KiB streams={streams}: write {write:.0} MiB/s (sync per 64 MiB chunk), read {read:.0} MiB/s (from the primary{})",
        args.replicas.len(),
        total / MIB,
        message / 1024,
        if args.drop_caches { ", page cache dropped" } else { "" }
    );
    if args.small_writes > 0 {
        small_writes(args, &primary, &chain, args.first_chunk_id + chunks).await?;
    }
    Ok(())
}

/// Synced writes of `--small-size` bytes one after another, each to a new chunk, through the
/// chain or (`--small-fanout`) to every replica at once; prints the latency percentiles and
/// deletes the chunks.
async fn small_writes(args: &BenchArgs, primary: &ChunkClient, chain: &[String], first_id: u64) -> anyhow::Result<()> {
    let size = parse_size(&args.small_size).map_err(anyhow::Error::msg)? as usize;
    let data = pseudo_random(size, 11);
    let replicas: Vec<ChunkClient> = if args.small_fanout {
        args.replicas.iter().map(|r| ChunkClient::connect_lazy(r)).collect::<Result<_, _>>()?
    } else {
        vec![primary.clone()]
    };
    let chain = if args.small_fanout { Vec::new() } else { chain.to_vec() };
    let mut latencies_us = Vec::with_capacity(args.small_writes);
    for i in 0..args.small_writes as u64 {
        let header = WriteHeader {
            chunk_id: first_id + i,
            version: 1,
            create: true,
            chunk_size_bytes: 0,
            chain: chain.clone(),
            sync: true,
            stream_bytes: 0,
        };
        let started = Instant::now();
        let writes = replicas.iter().map(|replica| replica.write(header.clone(), 0, &data, size.max(1)));
        let acknowledged: u32 = futures::future::try_join_all(writes).await?.iter().map(|r| r.replicas).sum();
        latencies_us.push(started.elapsed().as_micros() as u64);
        anyhow::ensure!(acknowledged as usize == args.replicas.len(), "only {acknowledged} replicas acknowledged");
    }
    for i in 0..args.small_writes as u64 {
        for replica in &replicas {
            let request = DeleteChunkRequest { chunk_id: first_id + i, version: 0, chain: chain.clone(), sync: false };
            replica.delete(request).await?;
        }
    }
    latencies_us.sort_unstable();
    let pct =
        |q: f64| latencies_us[((latencies_us.len() as f64 * q) as usize).min(latencies_us.len() - 1)] as f64 / 1000.0;
    println!(
        "replicas={} small writes ({}): {} x {size} B, each a new chunk, synced: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        args.replicas.len(),
        match (args.small_fanout, args.replicas.len()) {
            (_, 1) => "one replica",
            (true, _) => "to every replica at once",
            (false, _) => "through the chain",
        },
        args.small_writes,
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    Ok(())
}

async fn run_parallel<F, Fut>(ids: &[u64], streams: usize, work: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for group in ids.chunks(streams) {
        futures::future::try_join_all(group.iter().map(|&id| work(id))).await?;
    }
    Ok(())
}
