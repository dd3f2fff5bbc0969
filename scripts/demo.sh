#!/bin/bash
# The main job: sets everything up on a fresh Debian 12 machine (packages including the
# image tools, FIPS provider, rapd, the firmware image), starts the local data center,
# boots the image under QEMU (direct kernel boot, TCG) with two simulated instruments on
# its instrument ports and shows reports arriving per instrument, once a second: sent /
# acked by the box / arrived in the data center. Ctrl-C stops it cleanly (QEMU killed,
# nginx and backend stopped, network namespace removed). Extra arguments go to
# rapbox-demo (`--seconds N`, 0 = until Ctrl-C; `--rate N` reports/s per instrument).
#
#   scripts/demo.sh --host [ARGS]   the host-only demo (rapd as a host process, no image):
#                                   target/release/rapdemo, e.g. `--instruments 4 --rate 100`
set -euo pipefail
cd "$(dirname "$0")/.."
export RAPBOX_FIPS_DIR="${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}"
JOBS=${CARGO_BUILD_JOBS:-2}

if [ "${1:-}" = --host ]; then
  shift
  RAPBOX_SKIP_IMAGE="${RAPBOX_SKIP_IMAGE:-1}" bash scripts/install-deps.sh
  bash scripts/build-fips.sh
  cargo build -j"$JOBS" --release --locked -p rapbox -p rapdemo
  exec target/release/rapdemo --rapd target/release/rapd --fips-conf "$RAPBOX_FIPS_DIR/openssl-fips.cnf" "$@"
fi

bash scripts/install-deps.sh
# FIPS provider (if missing), release rapd/rapctl, then the image into build/image.
RAPBOX_RELOCK=${RAPBOX_RELOCK:-auto} bash scripts/build-image.sh
cargo build -j"$JOBS" --release --locked -p rapsim -p qemu-tests --bin rapbox-demo
exec target/release/rapbox-demo "$@"
