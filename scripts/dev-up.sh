#!/usr/bin/env bash
# Quick start, step 1: install what is missing, build, bring up a local cluster (3 coordinators,
# 3 chunkservers, 3 metaservers) and mount it at DIR/mnt.
#   scripts/dev-up.sh [--dir DIR] [--no-mount]      (default DIR: ./.cairn-dev)
# Prints the mount path and writes DIR/cluster.env with every endpoint and CAIRN_MOUNT.
# Stop it (unmount, stop the servers) with: cairn dev down --dir DIR
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh
cargo build --workspace --bins
"$CARGO_TARGET_DIR/debug/cairn" dev up "$@"
