#!/usr/bin/env bash
# Quick start, step 1: install what is missing, build, and bring up a local cluster.
#   scripts/dev-up.sh [--dir DIR]       (default DIR: ./.cairn-dev)
# Writes DIR/cluster.env with every endpoint. Stop it with: cairn dev down --dir DIR
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh
cargo build --workspace --bins
"$CARGO_TARGET_DIR/debug/cairn" dev up "$@"
