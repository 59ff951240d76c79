#!/usr/bin/env bash
# Installs what building and testing Cairn needs on Debian 12 (run as root). Idempotent.
#   libclang-dev  bindgen for the RocksDB bindings
#   protobuf-compiler
#                 protoc for the etcd-client crate the tests use (Cairn's own protos use a vendored one)
#   etcd-client   etcdctl 3.4, used by the compatibility tests
#   etcd-server   etcd 3.4, the yardstick for benchmarks
#   fuse3         the FUSE mount (fusermount3, /dev/fuse helpers)
#   sqlite3 git python3 tar
#                 tools the end-to-end tests run on the mount (tests/tests/fuse_*.rs)
#   pjdfstest, fsx (crates.io, pinned)
#                 the POSIX suites run against the mount (tests/tests/fuse_pjdfstest.rs, fuse_fsx.rs)
set -euo pipefail
need=()
for pkg in libclang-dev protobuf-compiler etcd-client etcd-server fuse3 build-essential pkg-config sqlite3 git python3 tar util-linux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# etcd-server's package starts a system etcd on 2379/2380; Cairn's tests pick their own ports,
# but a stray daemon only wastes a core, so stop it.
if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi
pkill -x etcd >/dev/null 2>&1 || true

# The POSIX suites, at the versions the known-failures list and the run sizes were made for.
install_pinned() {
  local crate=$1 version=$2
  if [ "$("$crate" --version 2>/dev/null || true)" = "$crate $version" ]; then return 0; fi
  cargo install "$crate" --version "$version" --locked --quiet
}
if command -v cargo >/dev/null 2>&1; then
  install_pinned pjdfstest 0.2.2
  install_pinned fsx 0.3.2
else
  echo "cargo not found: pjdfstest and fsx not installed (the POSIX-suite tests will skip)" >&2
fi
echo "dependencies installed"
