#!/usr/bin/env bash
# Quick start, step 2: run the whole test suite. Unit tests, openraft's storage suite, and
# multi-process tests that start their own clusters (through the same code as `cairn dev up`)
# on 127.0.0.1 ports they pick, with etcdctl and the Rust etcd-client against them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
command -v etcdctl >/dev/null || { echo "etcdctl missing: run scripts/install-deps.sh" >&2; exit 1; }
cargo build --workspace --bins --tests
# Multi-process tests each run a 3-node cluster; on 2 cores, two at a time keeps elections calm.
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@"
