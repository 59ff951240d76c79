#!/usr/bin/env bash
# Makes `mount -t fuse.cairn HOST:PORT,... DIR` and fstab entries of type fuse.cairn work:
# mount(8) runs /sbin/mount.fuse.cairn, and `cairn` acts as that helper when started by that
# name. Usage: scripts/install-mount-helper.sh [PATH-TO-cairn] (default: target/release/cairn).
set -euo pipefail
bin="$(realpath "${1:-target/release/cairn}")"
ln -sf "$bin" /sbin/mount.fuse.cairn
ln -sf "$bin" /sbin/mount.cairn
echo "mount.fuse.cairn -> $bin"
