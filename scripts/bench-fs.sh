#!/usr/bin/env bash
# Filesystem benchmark: a Cairn FUSE mount next to local disk (and optionally GlusterFS replica 3
# and MooseFS goal 3) in the same run, with the shared harness ../shared/bench (fs-bench.sh:
# sequential 1 GiB write/read, 4 KiB random IOPS, 10,000-file create/stat/rename/delete, untar/
# du/rm of a 37 MB source tree). Runs are interleaved (local, cairn, glusterfs, moosefs, local,
# ...) so drifts in machine load hit every filesystem; each run starts on a fresh Cairn cluster
# and fresh peer volumes. Writes a summary table.
#
#   scripts/bench-fs.sh [--runs N] [--peers] [--mount DIR | --cluster-dir DIR] [--results DIR]
#
#   --runs N           rounds (default 1; the recorded peer figures are medians of 3)
#   --peers            also GlusterFS and MooseFS (apt-get install glusterfs-server
#                      glusterfs-client moosefs-master moosefs-chunkserver moosefs-client)
#   --mount DIR        benchmark an existing Cairn mount at DIR instead of starting a cluster
#   --cluster-dir DIR  where `cairn dev up` puts the cluster (default: a fresh temp dir,
#                      purged at the end); the mount is DIR/mnt (CAIRN_MOUNT in cluster.env)
#   --keep-cluster     leave the last cluster running (with its data)
#   --results DIR      where results go (default /tmp/cairn-bench-fs/<timestamp>)
#
# Env: BENCH_HARNESS (default ../shared/bench next to the checkout), CAIRN_BIN_DIR (where cairn
# and the servers are; default $CARGO_TARGET_DIR/release; build with cargo build --release -p cairn-fs-client
# -p cairn-metaserver -p cairn-coordinator -p cairn-chunkserver), CAIRN_REMOUNT_CMD (passed to
# fs-bench.sh as REMOUNT_CMD for the Cairn runs only, to empty the client's own caches before
# cold reads), FSLIST (default "local cairn", plus "glusterfs moosefs" with --peers; a subset
# such as "cairn" runs only those), FS_TIMEOUT_S (default 1800: one filesystem's whole fs-bench
# run; a run that exceeds it keeps its figures so far), PEERBENCH_DIR, and every fs-bench.sh knob
# (SEQ_SIZE, META_FILES, PHASES, ...), applied to every filesystem alike. Must run as root
# (drop_caches, mounting).
#
# Output in the results dir: <fs>-r<N>.txt (fs-bench.sh lines), <fs>-r<N>.log (progress, cluster
# and peer start-up), summary.md (medians, ratios against local disk, and Cairn against the
# better peer with the issue's 1.5x target).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
USER_BIN_DIR=${CAIRN_BIN_DIR:-}
source scripts/env.sh

RUNS=1
PEERS=0
MOUNT=""
CLUSTER_DIR=""
KEEP_CLUSTER=0
OUT=""
usage() { sed -n '2,32p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
    --peers) PEERS=1; shift ;;
    --mount) MOUNT=${2:?--mount needs a directory}; shift 2 ;;
    --cluster-dir) CLUSTER_DIR=${2:?--cluster-dir needs a directory}; shift 2 ;;
    --keep-cluster) KEEP_CLUSTER=1; shift ;;
    --results) OUT=${2:?--results needs a directory}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench-fs: unknown argument $1" >&2; usage ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-fs: --runs must be a positive number" >&2; exit 2; }
[[ -z $MOUNT || -z $CLUSTER_DIR ]] || { echo "bench-fs: --mount and --cluster-dir exclude each other" >&2; exit 2; }

say() { printf '[%s bench-fs] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---- preflight: everything checked before anything is started
HARNESS=${BENCH_HARNESS:-$REPO/../shared/bench}
[[ -x $HARNESS/fs-bench.sh && -r $HARNESS/summarize.py ]] \
  || die "no benchmark harness at $HARNESS (fs-bench.sh, summarize.py); set BENCH_HARNESS"
HARNESS=$(cd "$HARNESS" && pwd)
[[ $(id -u) -eq 0 ]] || die "must run as root (drop_caches between phases; mounting)"
missing=()
for c in fio python3 tar du findmnt stat; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
[[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]} (apt-get install -y fio python3 tar util-linux)"
if (( PEERS )); then
  missing=()
  for c in glusterd glusterfs gluster mfsmaster mfschunkserver mfsmount nsenter ip; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  [[ ${#missing[@]} -eq 0 ]] || die "--peers needs ${missing[*]}: apt-get install -y glusterfs-server \
glusterfs-client moosefs-master moosefs-chunkserver moosefs-client fuse3"
fi
export CAIRN_BIN_DIR="${USER_BIN_DIR:-$CARGO_TARGET_DIR/release}"
CAIRN=$CAIRN_BIN_DIR/cairn
if [[ -z $MOUNT ]]; then
  for b in cairn cairn-coordinator cairn-metaserver cairn-chunkserver; do
    [[ -x $CAIRN_BIN_DIR/$b ]] || die "no $CAIRN_BIN_DIR/$b: cargo build --release -p cairn-fs-client \
-p cairn-metaserver -p cairn-coordinator -p cairn-chunkserver (or set CAIRN_BIN_DIR)"
  done
fi

PB=${PEERBENCH_DIR:-/tmp/peerbench}
OUT=${OUT:-/tmp/cairn-bench-fs/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
OWN_CLUSTER_DIR=0
if [[ -z $MOUNT && -z $CLUSTER_DIR ]]; then
  CLUSTER_DIR=$(mktemp -d /tmp/cairn-bench-fs-cluster.XXXXXX)
  OWN_CLUSTER_DIR=1
fi

if [[ -z ${FSLIST:-} ]]; then
  FSLIST="local cairn"
  (( PEERS )) && FSLIST="$FSLIST glusterfs moosefs"
fi
for fs in $FSLIST; do
  case $fs in
    local|cairn) ;;
    glusterfs|moosefs) (( PEERS )) || die "FSLIST names $fs: add --peers" ;;
    *) die "FSLIST: unknown filesystem $fs (local cairn glusterfs moosefs)" ;;
  esac
done
FS_TIMEOUT_S=${FS_TIMEOUT_S:-1800}
[[ $FS_TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || die "FS_TIMEOUT_S must be a number of seconds"

mnt_of() {
  case $1 in
    local) echo "$PB/local" ;;
    cairn) echo "${MOUNT:-$CAIRN_MOUNT_NOW}" ;;
    *) echo "$PB/mnt/$1" ;;
  esac
}

# Reads CAIRN_MOUNT from the cluster's env file (empty when no mount runs).
cluster_mount() {
  [[ -r $CLUSTER_DIR/cluster.env ]] || return 0
  (set +u; set -a; source "$CLUSTER_DIR/cluster.env" >/dev/null 2>&1; printf '%s' "${CAIRN_MOUNT:-}")
}

is_fuse_mount() {
  local t
  t=$(findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null) || return 1
  [[ $t == fuse* ]] && timeout 10 stat -f -- "$1" >/dev/null 2>&1
}

cairn_down() {
  [[ -n $CLUSTER_DIR && -z $MOUNT ]] || return 0
  "$CAIRN" dev down --dir "$CLUSTER_DIR" --purge >>"$OUT/updown.log" 2>&1 || true
}

# A fresh cluster (purged first) with its mount; sets CAIRN_MOUNT_NOW.
cairn_up() {
  cairn_down
  "$CAIRN" dev up --dir "$CLUSTER_DIR" || { say "cairn dev up failed"; return 1; }
  CAIRN_MOUNT_NOW=$(cluster_mount)
  if [[ -z $CAIRN_MOUNT_NOW ]]; then
    say "cairn dev up recorded no CAIRN_MOUNT in $CLUSTER_DIR/cluster.env (is the FUSE client built into this cairn?)"
    return 1
  fi
  is_fuse_mount "$CAIRN_MOUNT_NOW" || { say "$CAIRN_MOUNT_NOW is not a live FUSE mount"; return 1; }
}

peers_down() {
  (( PEERS )) || return 0
  local fs
  for fs in glusterfs moosefs; do "$HARNESS/peers/$fs-down.sh" "$(mnt_of "$fs")" >>"$OUT/updown.log" 2>&1; done
}

finish() {
  peers_down
  if (( KEEP_CLUSTER )); then
    [[ -z $MOUNT ]] && say "cluster left running in $CLUSTER_DIR (stop: $CAIRN dev down --dir $CLUSTER_DIR --purge)"
  else
    cairn_down
    (( OWN_CLUSTER_DIR )) && rm -rf -- "$CLUSTER_DIR"
  fi
}
trap finish EXIT
trap 'say "interrupted"; exit 130' INT TERM

if [[ -n $MOUNT ]]; then
  MOUNT=$(realpath -e -- "$MOUNT") || die "no such directory: $MOUNT"
  is_fuse_mount "$MOUNT" || die "$MOUNT is not a live FUSE mount"
fi

{
  echo "# bench-fs $(date -u +%FT%TZ) runs=$RUNS filesystems='$FSLIST' harness=$HARNESS"
  echo "# repo=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty')"
  echo "# cairn=${MOUNT:-cluster in $CLUSTER_DIR, binaries $CAIRN_BIN_DIR}"
  echo "# $(nproc) cpus, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
} >"$OUT/context.txt"
say "results go to $OUT"
peers_down

for r in $(seq 1 "$RUNS"); do
  for fs in $FSLIST; do
    log=$OUT/$fs-r$r.log
    : >"$log"
    extra=()
    case $fs in
      local) mkdir -p "$(mnt_of local)" ;;
      cairn)
        if [[ -z $MOUNT ]] && ! cairn_up >>"$log" 2>&1; then
          say "run $r: cairn did not come up; see $log"; continue
        fi
        [[ -n ${CAIRN_REMOUNT_CMD:-} ]] && extra=(REMOUNT_CMD="$CAIRN_REMOUNT_CMD")
        ;;
      *)
        "$HARNESS/peers/$fs-down.sh" "$(mnt_of "$fs")" --purge >>"$log" 2>&1
        if ! "$HARNESS/peers/$fs-up.sh" "$(mnt_of "$fs")" >>"$log" 2>&1; then
          say "run $r: $fs did not come up; see $log"; continue
        fi
        ;;
    esac
    m=$(mnt_of "$fs")
    say "run $r/$RUNS: $fs at $m"
    # A hung mount must not stall the whole comparison: figures written so far are kept, and the
    # Cairn cluster (or peer) is torn down, which fails the stuck I/O.
    timeout --kill-after=30 "$FS_TIMEOUT_S" env "${extra[@]}" "$HARNESS/fs-bench.sh" "$m" "$fs" \
      >"$OUT/$fs-r$r.txt" 2>>"$log"
    rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
      say "run $r: $fs did not finish within ${FS_TIMEOUT_S}s (stuck I/O?); partial figures kept, see $log"
      [[ $fs == cairn ]] && cairn_down
    fi
    grep -v '^#' "$OUT/$fs-r$r.txt" | sed 's/^/    /' >&2
    case $fs in
      local|cairn) ;;
      *) "$HARNESS/peers/$fs-down.sh" "$m" >>"$log" 2>&1 ;;
    esac
  done
done

shopt -s nullglob
results=("$OUT"/*-r*.txt)
[[ ${#results[@]} -gt 0 ]] || die "no filesystem was benchmarked; see the logs in $OUT"
{
  cat "$OUT/context.txt"
  echo
  python3 "$HARNESS/summarize.py" "${results[@]}"
  echo
  # Cairn against the better peer, figure by figure (the issue's target: at least 1.5x). Without
  # --peers the peers' recorded medians from the harness's results are used, which were taken at
  # another time: read those ratios as indicative only.
  python3 - "$HARNESS" "${results[@]}" <<'EOF'
import glob, os, statistics, sys
harness, files = sys.argv[1], sys.argv[2:]
def load(paths):
    data = {}
    for fn in paths:
        for line in open(fn):
            parts = line.split()
            if len(parts) != 3 or line.startswith("#"):
                continue
            try:
                v = float(parts[2])
            except ValueError:
                continue
            data.setdefault(parts[0], {}).setdefault(parts[1], []).append(v)
    return {l: {k: statistics.median(v) for k, v in ks.items()} for l, ks in data.items()}
now = load(files)
peers, source = {l: now[l] for l in ("glusterfs", "moosefs") if l in now}, "this run"
if not peers:
    recorded = sorted(glob.glob(os.path.join(harness, "results", "*")))
    if recorded:
        paths = [p for p in glob.glob(os.path.join(recorded[-1], "*-r*.txt"))
                 if os.path.basename(p).split("-r")[0] in ("glusterfs", "moosefs")]
        peers, source = load(paths), "recorded in " + recorded[-1]
cairn = now.get("cairn")
if not cairn or not peers:
    print("(no Cairn or peer figures to compare)")
    sys.exit(0)
flags = {"seq_read_cache_dropped", "rand_direct", "meta_stat_cache_dropped", "total_s"}
lower = lambda k: k.endswith("_s") or k.endswith("_us")
fmt = lambda v: "%.0f" % v if v >= 1000 else "%.1f" % v if v >= 100 else "%.2f" % v
print("Cairn against the better peer (peers: %s); target: at least 1.50x" % source)
print()
print("| figure | cairn | better peer | cairn vs better peer | target met |")
print("|---|--:|--:|--:|---|")
for k, v in cairn.items():
    vals = [(p[k], l) for l, p in peers.items() if k in p]
    if k in flags or not vals:
        continue
    best, who = (min if lower(k) else max)(vals)
    if v == 0 or best == 0:
        continue
    ratio = best / v if lower(k) else v / best
    print("| %s | %s | %s (%s) | %.2fx | %s |" % (k, fmt(v), fmt(best), who, ratio, "yes" if ratio >= 1.5 else "no"))
EOF
} >"$OUT/summary.md"
say "results in $OUT (summary: $OUT/summary.md)"
cat "$OUT/summary.md"
