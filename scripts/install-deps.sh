#!/usr/bin/env bash
# Installs what building and testing Cairn needs on Debian 12 (run as root). Idempotent.
#   libclang-dev  bindgen for the RocksDB bindings
#   etcd-client   etcdctl 3.4, used by the compatibility tests
#   etcd-server   etcd 3.4, the yardstick for benchmarks
#   fuse3         the FUSE mount (later issues)
set -euo pipefail
need=()
for pkg in libclang-dev etcd-client etcd-server fuse3 build-essential pkg-config; do
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
echo "dependencies installed"
