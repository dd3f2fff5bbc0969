#!/bin/bash
# Build the rapbox firmware image: host dependencies, rapd/rapctl, the FIPS
# provider, then `rapimage build` into build/image (or $RAPBOX_IMAGE_OUT).
#
#   scripts/build-image.sh                 # release rapd/rapctl + FIPS provider
#   RAPBOX_IMAGE_STUB=1 scripts/build-image.sh
#       # development image: rapbox-stub stands in for rapd/rapctl, no FIPS provider
#
# Extra arguments are passed to `rapimage build` (e.g. --binary rapd=PATH).
#
# RAPBOX_RELOCK=auto (what scripts/test.sh and scripts/demo.sh set): when the Debian
# mirrors no longer serve a pinned version and the package cache does not hold it,
# refresh image/recipe.lock with `rapimage lock` (loudly) and build again, so that a
# fresh machine can still build and test the recipe after a Debian point or security
# release. Without it such a build fails with the message naming the package.
# Release images must then pass the offline hardening check (RAPBOX_HARDENING_GATE=0
# skips it). Its control 25 compares every shipped package with what bookworm and
# bookworm-security offer at build time: the apt lists are refreshed first (network);
# RAPBOX_OFFLINE=1 builds without network and reports control 25 as not evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-image-deps.sh
OUT=${RAPBOX_IMAGE_OUT:-build/image}
# Locked .debs are kept outside the clone so that reruns on this machine are offline
# and survive the mirrors dropping a superseded version (never required: an empty
# cache is filled from the mirrors by exact version and checked by SHA-256).
export RAPBOX_DEB_CACHE=${RAPBOX_DEB_CACHE:-/var/cache/rapbox/image}
JOBS=${CARGO_BUILD_JOBS:-2}

# rapimage, and raphard (in the image for `raphard check-live`, and the build's gate).
cargo build -j"$JOBS" --release -p rapimage -p raphard
args=(build --recipe image/recipe.toml --out "$OUT")
if [ "${RAPBOX_IMAGE_STUB:-0}" = 1 ]; then
  cargo build -j"$JOBS" --release -p qemu-tests --bin rapbox-stub
  args+=(--without-fips --binary rapd=target/release/rapbox-stub --binary rapctl=target/release/rapbox-stub
         --binary rapweb=target/release/rapbox-stub)
else
  cargo build -j"$JOBS" --release -p rapbox --bin rapd --bin rapctl -p rapweb --bin rapweb
  fips_dir=${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}
  if [ ! -f "$fips_dir/fips.so" ]; then
    bash scripts/build-fips.sh
  fi
fi
# rapimage build, with stderr also kept so that a vanished pin can be recognised.
build() {
  local errlog rc
  errlog=$(mktemp)
  set +e
  { target/release/rapimage "$@" 2>&1 1>&3 | tee "$errlog" >&2; } 3>&1
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ] && [ "${RAPBOX_RELOCK:-}" = auto ] && grep -q 'the mirrors no longer serve this pinned version' "$errlog"; then
    rm -f "$errlog"
    echo "build-image.sh: WARNING: a pinned package is gone from the Debian mirrors; refreshing image/recipe.lock" >&2
    echo "build-image.sh: (rapimage lock) and building the recipe against the versions served now" >&2
    target/release/rapimage lock --recipe image/recipe.toml
    git --no-pager diff --stat -- image/recipe.lock 2>/dev/null || true
    target/release/rapimage "$@"
    return
  fi
  rm -f "$errlog"
  return "$rc"
}

if [ "${RAPBOX_IMAGE_STUB:-0}" = 1 ] || [ "${RAPBOX_HARDENING_GATE:-1}" = 0 ]; then
  build "${args[@]}" "$@"
  exit
fi

# Release images are gated on the offline hardening check of the very tree that
# went into root-a (hardening/checker, docs/hardening.md): a failing control fails
# the build. Reports land beside manifest.json.
build "${args[@]}" --keep-root "$@"
check=(check --root "$OUT/work/root" --esp "$OUT/work/esp" --cmdline "$OUT/boot/cmdline-a"
       --manifest "$OUT/manifest.json" --waivers hardening/waivers.toml
       --report-json "$OUT/hardening-report.json" --report-html "$OUT/hardening-report.html")
if [ "${RAPBOX_OFFLINE:-0}" = 1 ]; then
  echo "build-image.sh: RAPBOX_OFFLINE=1: apt lists not refreshed, control 25 (package currency) not evaluated" >&2
elif lists=$(target/release/rapimage lists --recipe image/recipe.toml); then
  check+=(--apt-lists "$lists")
else
  echo "build-image.sh: refreshing the apt lists failed: control 25 compares the packages with what" >&2
  echo "  bookworm and bookworm-security offer now; without network run with RAPBOX_OFFLINE=1" >&2
  rm -rf "$OUT/work/root"
  exit 1
fi
set +e
target/release/raphard "${check[@]}" > "$OUT/hardening-report.txt"
rc=$?
set -e
tail -n 1 "$OUT/hardening-report.txt"
rm -rf "$OUT/work/root"
if [ "$rc" -ne 0 ]; then
  grep -E '^[0-9]+ +fail' "$OUT/hardening-report.txt" >&2 || true
  echo "build-image.sh: hardening check failed (exit $rc): see $OUT/hardening-report.txt" >&2
  exit 1
fi
