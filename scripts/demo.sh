#!/bin/bash
# The main job: sets everything up on a fresh Debian 12 machine (packages, FIPS provider,
# release build), then runs rapd with simulated instruments and a local data center and
# shows reports arriving per instrument. Ctrl-C stops it cleanly. Extra arguments go to
# rapdemo (e.g. `--instruments 4 --rate 100 --seconds 30`).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAPBOX_FIPS_DIR="${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}"
RAPBOX_SKIP_IMAGE="${RAPBOX_SKIP_IMAGE:-1}" bash scripts/install-deps.sh
bash scripts/build-fips.sh
cargo build --release --locked -p rapbox -p rapdemo
exec target/release/rapdemo --rapd target/release/rapd --fips-conf "$RAPBOX_FIPS_DIR/openssl-fips.cnf" "$@"
