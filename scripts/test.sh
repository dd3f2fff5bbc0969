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
cargo test --workspace --locked -j "$JOBS" --no-run
# The QEMU suite (CPU-bound under TCG, one guest at a time per test binary) runs beside
# the host tests; its lines are prefixed with `qemu| `. Both run every test binary
# (--no-fail-fast) so that one failure does not hide another.
tmp=$(mktemp -d)
set +e
( cargo test -p qemu-tests --locked -j "$JOBS" --no-fail-fast -- --test-threads=2 2>&1; echo $? > "$tmp/qemu.rc" ) \
  | tee "$tmp/qemu.log" | sed -u 's/^/qemu| /' &
qemu_pipe=$!
cargo test --workspace --exclude qemu-tests --locked -j "$JOBS" --no-fail-fast -- \
  --test-threads="${RAPBOX_TEST_THREADS:-2}" 2>&1 | tee "$tmp/host.log"
status=${PIPESTATUS[0]}
wait "$qemu_pipe"
qemu_status=$(cat "$tmp/qemu.rc" 2>/dev/null || echo 1)
set -e
[ "$status" -eq 0 ] && status=$qemu_status
count() { awk -v what="$1" '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ "^" what) s += $i } END { print s + 0 }' "$tmp/host.log" "$tmp/qemu.log"; }
passed=$(count passed)
failed=$(count failed)
echo
grep -h -E '^test .* FAILED$' "$tmp/host.log" "$tmp/qemu.log" || true
rm -rf "$tmp"
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"
