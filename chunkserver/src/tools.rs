//! The binary's subcommands besides serving: benchmarks and fault injection.

use std::path::PathBuf;

use crate::bench::{BenchArgs, BenchBlocksArgs};
use crate::ids::ChunkId;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Compare block sizes on the storage engine (RocksDB in a scratch directory).
    BenchBlocks(BenchBlocksArgs),
    /// Write through a chain of running chunkservers and read back; prints MiB/s.
    Bench(BenchArgs),
    /// Damage one stored block of a stopped chunkserver (tests and drills only).
    CorruptBlock(CorruptBlockArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CorruptBlockArgs {
    /// The stopped chunkserver's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub chunk: u64,
    #[arg(long)]
    pub block: u32,
}

pub async fn run(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::BenchBlocks(args) => tokio::task::spawn_blocking(move || crate::bench::bench_blocks(&args)).await?,
        Tool::Bench(args) => crate::bench::bench(&args).await,
        Tool::CorruptBlock(args) => {
            crate::debug::corrupt_block(&args.data_dir, ChunkId(args.chunk), args.block)?;
            println!("flipped a byte of block {} of chunk {}", args.block, ChunkId(args.chunk));
            Ok(())
        }
    }
}
