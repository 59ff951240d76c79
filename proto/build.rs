//! Compiles the etcd v3.4 and Cairn `.proto` files with `tonic-prost-build`, using the protoc
//! binary vendored by `protoc-bin-vendored` (no system protoc needed).

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/etcd/kv.proto",
    "proto/etcd/auth.proto",
    "proto/etcd/rpc.proto",
    "proto/etcd/v3lock.proto",
    "proto/etcd/v3election.proto",
    "proto/cairn/raft.proto",
    "proto/cairn/coordinator.proto",
    "proto/cairn/chunk.proto",
    "proto/cairn/meta.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Point prost-build at the vendored protoc through its Config rather than the PROTOC
    // environment variable (which would need `unsafe` `std::env::set_var`).
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Chunk data as `bytes::Bytes`: decoded without a copy out of the receive buffer, and
        // forwarded down the replication chain by reference count instead of memcpy.
        .bytes(".cairn.chunk.v1.WriteChunkRequest.data")
        .bytes(".cairn.chunk.v1.ReadChunkResponse.data")
        // Reserves each outgoing message whole before encoding it (see src/codec.rs).
        .codec_path("crate::codec::ReservingCodec")
        .file_descriptor_set_path(out_dir.join("cairn_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
