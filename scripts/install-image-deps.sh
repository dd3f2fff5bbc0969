#!/bin/bash
# Install on a Debian 12 (bookworm) host everything that building the rapbox
# firmware image (rapimage) and booting it under QEMU (qemu-tests) need.
#
# Idempotent: prints one line and exits 0 when everything is already present.
# Run as root. Honours APT_GET_UPDATE=0 to skip `apt-get update`.
set -eu

PKGS=(
  # root filesystem from Debian's own tooling + a local flat repository
  mmdebstrap apt-utils debian-archive-keyring
  # disk image assembly from plain files (no loop devices, no mounts)
  fdisk mtools dosfstools e2fsprogs faketime
  # kernel modules, compression
  kmod zstd xz-utils gzip cpio
  # boot: UEFI firmware and boot loader
  ovmf systemd-boot-efi
  # QEMU harness: network namespaces, guest-forward helper
  iproute2 socat openssl
)

log() { printf 'install-image-deps: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}" qemu-system-x86 qemu-utils; do
  if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

# qemu-system-x86 from bookworm only installs when qemu-utils comes from the
# same source version (a backported qemu-utils may be preinstalled).
qemu_ok() {
  local sys utils
  sys=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  [ -n "$sys" ] && [ "$sys" = "$utils" ]
}

if [ ${#missing[@]} -eq 0 ] && qemu_ok; then
  log "all image build and boot dependencies present"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ "${APT_GET_UPDATE:-1}" != 0 ]; then
  log "apt-get update"
  apt-get update -qq
fi

# The version qemu-utils must match: qemu-system-x86's candidate.
qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
if [ -z "$qver" ] || [ "$qver" = "(none)" ]; then
  log "no installation candidate for qemu-system-x86 (check /etc/apt/sources.list)" >&2
  exit 1
fi
if ! grep -qF " $qver " <<<"$(apt-cache policy qemu-utils)"; then
  log "qemu-utils $qver is not offered by apt (apt-cache policy qemu-utils); cannot match qemu-system-x86" >&2
  exit 1
fi

others=()
for p in "${missing[@]}"; do
  case "$p" in qemu-system-x86|qemu-utils) ;; *) others+=("$p") ;; esac
done

log "installing: ${others[*]:-} qemu-system-x86=$qver qemu-utils=$qver"
apt-get install -y -qq --no-install-recommends --allow-downgrades \
  -o Dpkg::Use-Pty=0 \
  "${others[@]}" "qemu-system-x86=$qver" "qemu-utils=$qver" >/dev/null

qemu_ok || { log "qemu-system-x86 and qemu-utils versions still differ" >&2; exit 1; }
log "done"
