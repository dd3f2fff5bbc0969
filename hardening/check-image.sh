#!/bin/bash
# Runs `raphard check` on a built rapbox image: copies the root-a partition's tree out
# of the disk image (read-only loop mount, so modes, owners and SUID bits are exact),
# then checks it with the image's ESP tree, kernel command line and the build's apt
# lists. Needs root (loop mount). Exit code: raphard's (0 pass, 1 a control fails).
#
#   hardening/check-image.sh [IMAGE_DIR] [OUT_DIR]
#     IMAGE_DIR  rapimage's output (default build/image: rapbox.img, work/esp, boot/)
#     OUT_DIR    where the tree and the reports go (default target/hardening)
#   RAPBOX_APT_LISTS overrides the apt lists (default image/cache/apt/state/lists).
set -euo pipefail
cd "$(dirname "$0")/.."
IMG_DIR=${1:-build/image}
OUT=${2:-target/hardening}
LISTS=${RAPBOX_APT_LISTS:-image/cache/apt/state/lists}
IMG="$IMG_DIR/rapbox.img"
[ -f "$IMG" ] || { echo "check-image.sh: $IMG not found (build the image first)" >&2; exit 2; }

line=$(sfdisk -d "$IMG" | grep 'name="root-a"') || { echo "check-image.sh: no root-a partition in $IMG" >&2; exit 2; }
start=$(sed -E 's/.*start= *([0-9]+).*/\1/' <<<"$line")
size=$(sed -E 's/.*size= *([0-9]+).*/\1/' <<<"$line")

mkdir -p "$OUT"
mnt=$(mktemp -d)
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
mount -o ro,loop,noload,offset=$((start * 512)),sizelimit=$((size * 512)) "$IMG" "$mnt"
rm -rf "$OUT/rootfs"
mkdir -p "$OUT/rootfs"
cp -a "$mnt/." "$OUT/rootfs/"
umount "$mnt"

cargo build -q -j1 -p raphard
args=(check --root "$OUT/rootfs" --report-json "$OUT/report.json" --report-html "$OUT/report.html"
      --waivers hardening/waivers.toml)
[ -d "$IMG_DIR/work/esp" ] && args+=(--esp "$IMG_DIR/work/esp")
[ -f "$IMG_DIR/boot/cmdline-a" ] && args+=(--cmdline "$IMG_DIR/boot/cmdline-a")
[ -d "$LISTS" ] && args+=(--apt-lists "$LISTS")
exec target/debug/raphard "${args[@]}"
