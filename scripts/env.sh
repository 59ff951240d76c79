# Sourced by the other scripts: one cargo target directory outside the checkout, reused across
# builds (RocksDB's C++ takes ~12 minutes to build on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target}"
export CAIRN_BIN_DIR="${CAIRN_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
