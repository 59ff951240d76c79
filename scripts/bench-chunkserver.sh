#!/usr/bin/env bash
# Chunkserver throughput next to the raw disk, in the same run on the same disk:
#   raw sequential write/read (dd, 1 MiB blocks, O_DIRECT) of SIZE,
#   chunk write/read with 1 MiB messages: single replica, then a 3-replica chain on loopback
#   (three release chunkservers started by `cairn dev up`; each 64 MiB chunk is one bulk
#   stream, durable before its answer; the page cache is dropped before each read phase so
#   reads come from the disk, like dd's).
#   scripts/bench-chunkserver.sh [SIZE] [STREAMS]       (defaults: 1GiB 1; needs root)
# Needs a release build: cargo build --release -p cairn-coordinator -p cairn-chunkserver -p cairn-fs-client
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SIZE=${1:-1GiB}
STREAMS=${2:-1}
export CAIRN_BIN_DIR="$CARGO_TARGET_DIR/release"
CAIRN="$CAIRN_BIN_DIR/cairn"
CS="$CAIRN_BIN_DIR/cairn-chunkserver"
WORK=$(mktemp -d /tmp/cairn-bench-cs.XXXXXX)
cleanup() {
  "$CAIRN" dev down --dir "$WORK/cluster" --purge >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mib=$(( $(numfmt --from=iec-i "${SIZE%B}") / 1048576 ))    # 1GiB -> 1024
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r), disk $(df --output=source "$WORK" | tail -1), ${mib} MiB per run, streams=$STREAMS"
rate() { awk -v mib="$1" -v s="$2" 'BEGIN { printf "%.0f", mib / s }'; }
now() { date +%s.%N; }

t0=$(now); dd if=/dev/zero of="$WORK/raw" bs=1M count="$mib" oflag=direct conv=fsync status=none; t1=$(now)
echo "raw write (dd oflag=direct, 1 MiB blocks): $(rate "$mib" "$(echo "$t1 - $t0" | bc -l)") MiB/s"
sync; echo 1 > /proc/sys/vm/drop_caches
t0=$(now); dd if="$WORK/raw" of=/dev/null bs=1M iflag=direct status=none; t1=$(now)
echo "raw read  (dd iflag=direct, 1 MiB blocks): $(rate "$mib" "$(echo "$t1 - $t0" | bc -l)") MiB/s"
rm -f "$WORK/raw"

# Only the services the chunkservers need (no metaservers, if this launcher knows them).
only=()
if "$CAIRN" dev up --help | grep -q -- --metaservers; then only=(--metaservers 0); fi
"$CAIRN" dev up --dir "$WORK/cluster" --coordinators 3 --chunkservers 3 "${only[@]}" >/dev/null
# shellcheck disable=SC1091
source "$WORK/cluster/cluster.env"
IFS=, read -r cs1 cs2 cs3 <<<"$CAIRN_CHUNKSERVER_ENDPOINTS"
"$CS" bench --replicas "$cs1" --size "$SIZE" --streams "$STREAMS" --drop-caches --first-chunk-id 1000
"$CS" bench --replicas "$cs1,$cs2,$cs3" --size "$SIZE" --streams "$STREAMS" --drop-caches --first-chunk-id 2000
