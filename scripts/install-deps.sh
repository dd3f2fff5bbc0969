#!/bin/bash
# Installs on a fresh Debian 12 (bookworm) machine everything rapbox's build, host tests,
# demo and benchmark need: the C toolchain pieces for the openssl/rusqlite/zstd crates,
# the real peers the tests and the benchmark start (nginx, tinyproxy, dante, openvpn,
# syslog-ng, collectd), and — through
# scripts/install-image-deps.sh — what the image build and the QEMU tests need.
# Idempotent: quiet when everything is present. Run as root.
set -euo pipefail

PKGS=(
  # building: openssl-sys links Debian's libssl3; rusqlite and zstd build bundled C
  build-essential pkg-config libssl-dev openssl perl unifdef
  # peers for the data-path tests and the demo; OpenVPN 2.6 as the remote sessions' server
  nginx-light tinyproxy dante-server openvpn
  # the benchmark's reference peers (collectd's write_http plugin needs libcurl3-gnutls
  # and libyajl2, which collectd-core only recommends)
  syslog-ng-core syslog-ng-mod-http collectd-core libcurl3-gnutls libyajl2
  # network namespaces, sqlite inspection (sqlite3 also checks the queue offline after
  # each power cut in qemu-tests; e2fsprogs' e2fsck/debugfs come with install-image-deps.sh)
  iproute2 sqlite3 procps iptables
  # headless Chromium (with a font) for the data center's dashboard test and, driven over
  # WebDriver, the configuration pages' browser test; rapweb links libcrypt
  chromium chromium-driver fonts-dejavu-core libcrypt-dev
)

log() { printf 'install-deps: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { log "must run as root" >&2; exit 1; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packaged services must not run on their own: the tests start their own instances.
  for svc in nginx tinyproxy danted syslog-ng collectd openvpn; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
  done
else
  log "host dependencies present"
fi

if [ "${RAPBOX_SKIP_IMAGE:-0}" != 1 ]; then
  bash "$(dirname "$0")/install-image-deps.sh"
fi
