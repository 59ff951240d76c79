#!/usr/bin/env bash
# KV benchmark, Cairn's 3-node coordinator next to a 3-node etcd 3.4 (Debian's etcd-server) on
# the same machine in the same run, both with fsync on. Prints `cairn bench kv` lines for each,
# then `etcdctl check perf --load=l` for each.
#   scripts/bench-kv.sh [--duration 10s] [--clients 1,16,256]   (extra args go to cairn bench kv)
# Needs a release build: cargo build --release -p cairn-coordinator -p cairn-fs-client
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CAIRN_BIN_DIR="$CARGO_TARGET_DIR/release"
CAIRN="$CAIRN_BIN_DIR/cairn"
WORK=$(mktemp -d /tmp/cairn-bench-kv.XXXXXX)
ETCD_PIDS=()
cleanup() {
  for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$CAIRN" dev down --dir "$WORK/cairn" --purge >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_etcd() {
  local base=32300 cluster=""
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((base + 10 + i)),"; done
  cluster=${cluster%,}
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
      --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      --log-level error >"$WORK/etcd-$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  ETCD_ENDPOINTS="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd did not become healthy" >&2; exit 1
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r)"
echo "# etcd: $(etcd --version | head -1)"
start_etcd
"$CAIRN" dev up --dir "$WORK/cairn" --chunkservers 0 --metaservers 0 >/dev/null
# shellcheck disable=SC1091
source "$WORK/cairn/cluster.env"

for target in etcd cairn; do
  if [ "$target" = etcd ]; then eps=$ETCD_ENDPOINTS; else eps=$CAIRN_COORDINATOR_ENDPOINTS; fi
  echo "## $target ($eps)"
  "$CAIRN" bench kv --endpoints "$eps" "$@" | sed "s/^/$target /"
done
for target in etcd cairn; do
  if [ "$target" = etcd ]; then eps=$ETCD_ENDPOINTS; else eps=$CAIRN_COORDINATOR_ENDPOINTS; fi
  echo "## $target: etcdctl check perf --load=l"
  ETCDCTL_API=3 etcdctl --endpoints="$eps" check perf --load=l 2>&1 | grep -v '^\s*$' | tail -6 | sed "s/^/$target /" || true
done
