#!/usr/bin/env bash
# Quick start, step 2: run the whole test suite. Unit tests, openraft's storage suite, and
# multi-process tests that start their own clusters (through the same code as `cairn dev up`)
# on 127.0.0.1 ports they pick: etcdctl and the Rust etcd-client against the coordinators, and
# ordinary tools, pjdfstest and fsx against real FUSE mounts (tests/tests/fuse_*.rs).
#   CAIRN_REQUIRE_POSIX_SUITES=1   fail (instead of skipping) when pjdfstest or fsx is missing
#   CAIRN_FSX_OPS=N                fsx operations with the fixed seed (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
command -v etcdctl >/dev/null || { echo "etcdctl missing: run scripts/install-deps.sh" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "fusermount3 missing: run scripts/install-deps.sh" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "/dev/fuse missing: the FUSE tests need it (modprobe fuse)" >&2; exit 1; }
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
cargo build --workspace --bins --tests
# Test clusters live under $TMPDIR (or /tmp), and their chunkservers refuse writes within 1 GiB
# of a full disk: the FUSE tests then fail with ENOSPC/EIO in ways that look like bugs.
tmp="${TMPDIR:-/tmp}"
free_kib=$(df -Pk "$tmp" | awk 'NR == 2 {print $4}')
if [ "${free_kib:-0}" -lt $((4 * 1024 * 1024)) ]; then
  echo "WARNING: only $((free_kib / 1024)) MiB free in $tmp; the tests need about 4 GiB (chunkservers keep 1 GiB free)" >&2
fi
# Multi-process tests each run a 3-node cluster; on 2 cores, two at a time keeps elections calm.
cargo test --workspace --no-fail-fast -- --test-threads=2 "$@"
