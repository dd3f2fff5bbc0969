#!/bin/bash
# The whole test suite, as CI runs it (`.ci/run` calls this): installs what is missing,
# builds the FIPS provider, checks formatting and lints, builds the firmware image, then
# runs every test — unit, host integration against real nginx/tinyproxy/dante, and the
# QEMU suite against the booted image. Ends with a plain `N passed, N failed` line.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAPBOX_FIPS_DIR="${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}"
export CARGO_TERM_COLOR=never
JOBS="${RAPBOX_JOBS:-2}"
step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
bash scripts/install-deps.sh

step "FIPS provider (OpenSSL 3.1.2, CMVP #4985)"
bash scripts/build-fips.sh

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -j "$JOBS" -- -D warnings

step "release build"
cargo build --release --locked -j "$JOBS" -p rapbox

if [ -x scripts/build-image.sh ] && [ "${RAPBOX_SKIP_IMAGE:-0}" != 1 ]; then
  step "firmware image"
  RAPBOX_RELOCK=${RAPBOX_RELOCK:-auto} bash scripts/build-image.sh
fi

step "tests"
log=$(mktemp)
set +e
cargo test --workspace --locked -j "$JOBS" -- --test-threads="${RAPBOX_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
rm -f "$log"
echo
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"
