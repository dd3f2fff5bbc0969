#!/bin/bash
# Boot the built rapbox image under QEMU with the serial console on this terminal
# (Ctrl-A X quits). Runs on a throw-away copy-on-write overlay unless --persist.
#
#   scripts/boot-image.sh [direct|uefi] [--persist]
#
# direct: -kernel vmlinux (PVH) -initrd -append "$(cat boot/cmdline-a)"
# uefi:   OVMF + systemd-boot from the EFI system partition (slot A entry)
# The uplink is QEMU user networking with restrict=on (no route anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${RAPBOX_IMAGE_DIR:-build/image}
MODE=${1:-direct}
PERSIST=${2:-}
[ -f "$DIR/rapbox.img" ] || { echo "boot-image.sh: $DIR/rapbox.img missing: run scripts/build-image.sh" >&2; exit 1; }
mkdir -p target/qemu-tests
disk="$DIR/rapbox.img"; fmt=raw
if [ "$PERSIST" != --persist ]; then
  disk=target/qemu-tests/interactive.qcow2; fmt=qcow2
  qemu-img create -q -f qcow2 -F raw -b "$(realpath "$DIR/rapbox.img")" "$disk"
fi
common=(-accel tcg -cpu max -smp 2 -m 1024 -M q35 -nographic -serial mon:stdio
  -device virtio-rng-pci
  -drive "file=$disk,if=virtio,format=$fmt"
  -netdev user,id=uplink,restrict=on -device virtio-net-pci,netdev=uplink,mac=52:54:00:00:00:01,romfile=)
case "$MODE" in
  direct) exec qemu-system-x86_64 "${common[@]}" -kernel "$DIR/boot/vmlinux" -initrd "$DIR/boot/initrd.img" \
            -append "$(cat "$DIR/boot/cmdline-a")" ;;
  uefi)   cp /usr/share/OVMF/OVMF_VARS_4M.fd target/qemu-tests/interactive-VARS.fd
          exec qemu-system-x86_64 "${common[@]}" \
            -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
            -drive if=pflash,format=raw,unit=1,file=target/qemu-tests/interactive-VARS.fd ;;
  *) echo "usage: boot-image.sh [direct|uefi] [--persist]" >&2; exit 2 ;;
esac
