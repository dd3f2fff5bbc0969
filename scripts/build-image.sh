#!/bin/bash
# Build the rapbox firmware image: host dependencies, rapd/rapctl, the FIPS
# provider, then `rapimage build` into build/image (or $RAPBOX_IMAGE_OUT).
#
#   scripts/build-image.sh                 # release rapd/rapctl + FIPS provider
#   RAPBOX_IMAGE_STUB=1 scripts/build-image.sh
#       # development image: rapbox-stub stands in for rapd/rapctl, no FIPS provider
#
# Extra arguments are passed to `rapimage build` (e.g. --binary rapd=PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-image-deps.sh
OUT=${RAPBOX_IMAGE_OUT:-build/image}
JOBS=${CARGO_BUILD_JOBS:-2}

cargo build -j"$JOBS" --release -p rapimage
args=(build --recipe image/recipe.toml --out "$OUT")
if [ "${RAPBOX_IMAGE_STUB:-0}" = 1 ]; then
  cargo build -j"$JOBS" --release -p qemu-tests --bin rapbox-stub
  args+=(--without-fips --binary rapd=target/release/rapbox-stub --binary rapctl=target/release/rapbox-stub)
else
  cargo build -j"$JOBS" --release -p rapbox --bin rapd --bin rapctl
  fips_dir=${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}
  if [ ! -f "$fips_dir/fips.so" ]; then
    bash scripts/build-fips.sh
  fi
fi
exec target/release/rapimage "${args[@]}" "$@"
