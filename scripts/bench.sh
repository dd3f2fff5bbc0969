#!/bin/bash
# The benchmark of issue 2 ("Benchmark"): installs what is missing (nginx, syslog-ng-core,
# syslog-ng-mod-http, ...), builds the FIPS provider and the release binaries, then runs
# rapbench, which prints the table and regenerates docs/benchmarks.md.
# Arguments are passed to rapbench: e.g. `scripts/bench.sh --messages 200000`,
# `--instruments 8`, `--skip-syslog-ng`, `--out docs/benchmarks.md`.
# Not part of CI: run it on an otherwise idle machine (it notes the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAPBOX_FIPS_DIR="${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}"
JOBS="${RAPBOX_JOBS:-2}"
RAPBOX_SKIP_IMAGE=1 bash scripts/install-deps.sh
command -v syslog-ng >/dev/null && [ -e /usr/lib/syslog-ng/3.38/libhttp.so ] || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends syslog-ng-core syslog-ng-mod-http >/dev/null
}
bash scripts/build-fips.sh
cargo build --release --locked -j "$JOBS" -p rapbox -p rapbench
echo "load: $(cat /proc/loadavg)"
exec target/release/rapbench --fips-conf "$RAPBOX_FIPS_DIR/openssl-fips.cnf" "$@"
