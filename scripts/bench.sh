#!/bin/bash
# The benchmark against peers: installs what is missing (nginx, syslog-ng-core,
# syslog-ng-mod-http, collectd-core, libcurl3-gnutls, libyajl2, ...), builds the FIPS provider and the
# release binaries, then runs rapbench, which prints the table (rapd, syslog-ng, collectd,
# raw SQLite; a kill -9 experiment per peer) and regenerates docs/benchmarks.md.
# Arguments are passed to rapbench: e.g. `scripts/bench.sh --messages 200000`,
# `--instruments 8`, `--skip-syslog-ng`, `--skip-collectd`, `--skip-kill9`,
# `--out docs/benchmarks.md`; `scripts/bench.sh load` runs the load benchmark instead
# (1000 misbehaving connections; figures for docs/reliability.md).
# Not part of CI: run it on an otherwise idle machine (it notes the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAPBOX_FIPS_DIR="${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}"
JOBS="${RAPBOX_JOBS:-2}"
RAPBOX_SKIP_IMAGE=1 bash scripts/install-deps.sh
command -v syslog-ng >/dev/null && [ -e /usr/lib/syslog-ng/3.38/libhttp.so ] || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends syslog-ng-core syslog-ng-mod-http >/dev/null
}
[ -e /usr/lib/collectd/write_http.so ] && ! grep -q 'not found' <<<"$(ldd /usr/lib/collectd/write_http.so)" || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends collectd-core libcurl3-gnutls libyajl2 >/dev/null
  systemctl disable --now collectd >/dev/null 2>&1 || true
}
bash scripts/build-fips.sh
cargo build --release --locked -j "$JOBS" -p rapbox -p rapbench
echo "load: $(cat /proc/loadavg)"
if [ "${1:-}" = load ]; then
  shift
  exec target/release/rapbench load --fips-conf "$RAPBOX_FIPS_DIR/openssl-fips.cnf" "$@"
fi
exec target/release/rapbench --fips-conf "$RAPBOX_FIPS_DIR/openssl-fips.cnf" "$@"
