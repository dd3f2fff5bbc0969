#!/bin/bash
# Fuzzing campaign for rapbox's parsers of untrusted input (fuzz/, cargo-fuzz + libFuzzer):
#   agent_frame  the agent protocol: frame bodies and framed streams (crates/wire/src/agent.rs)
#   batch        the uplink batch decoder the data center runs (crates/wire/src/batch.rs)
#   config       rapd's configuration loading (runtime/src/config.rs)
#   command      the command channel: the data center's answers and each command in them
#                (crates/wire/src/command.rs, runtime/src/commands)
#   manifest     signed manifests, download arguments (signature through
#                runtime/src/transfers/signing.rs), upload chunk headers (crates/wire/src/transfer.rs)
# The properties each target checks are in crates/fuzzing (rapfuzz); CI replays the stored
# corpora through them (`cargo test -p rapfuzz`) on the stable toolchain.
#
#   scripts/fuzz.sh                          # every target, 10 million executions each
#   scripts/fuzz.sh agent_frame              # one target
#   FUZZ_RUNS=100000 scripts/fuzz.sh         # a short pass
#   FUZZ_SANITIZER=address scripts/fuzz.sh   # with AddressSanitizer
#   scripts/fuzz.sh config -max_total_time=60   # further arguments go to libFuzzer
#
# Runs on the one stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the unstable flags
# cargo-fuzz passes (-Zsanitizer, sancov coverage). The default sanitizer is none: the
# code under test is safe Rust (a panic, an overflow — debug assertions are on — or an
# allocation over libFuzzer's limit is what is found), the C libraries behind it (zstd)
# are built by cc without ASan instrumentation anyway, and ASan's shadow poisoning of the
# batch decoder's 64 MiB decompression buffer slowed that target to ~36 executions/s.
# Each sanitizer builds into its own fuzz/target/<sanitizer>. New inputs are added to fuzz/corpus/<target>,
# which is minimised afterwards (cargo fuzz cmin); a crash stops the run and is kept in
# fuzz/artifacts/<target>/ (turn it into a regression test beside the code). One line per
# target with executions, time and rate goes to stdout and to target/fuzz/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
SAN=${FUZZ_SANITIZER:-none}
TDIR=fuzz/target/$SAN
RUNS=${FUZZ_RUNS:-10000000}
export CARGO_BUILD_JOBS=${RAPBOX_JOBS:-2}
all=(agent_frame batch config command manifest)
targets=("${all[@]}")
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  targets=("$1")
  shift
fi
mkdir -p target/fuzz
if [ ${#targets[@]} -eq 1 ]; then
  cargo fuzz build -s "$SAN" --target-dir "$TDIR" "${targets[0]}"
else
  cargo fuzz build -s "$SAN" --target-dir "$TDIR"
fi

for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus"
  args=(-runs="$RUNS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  log=target/fuzz/$t.log
  echo "fuzz: $t ($RUNS executions, sanitizer $SAN, load $(cut -d' ' -f1-3 /proc/loadavg))"
  start=$(date +%s)
  set +e
  cargo fuzz run -s "$SAN" --target-dir "$TDIR" "$t" "$corpus" -- "${args[@]}" "$@" > "$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t FAILED (exit $rc) after ${execs:-?} executions in ${secs} s; see $log and fuzz/artifacts/$t/" >&2
    exit 1
  fi
  cargo fuzz cmin -s "$SAN" --target-dir "$TDIR" "$t" "$corpus" > "target/fuzz/$t-cmin.log" 2>&1 || true
  n=$(find "$corpus" -type f | wc -l)
  line="$t: ${execs:-?} executions in ${secs} s ($(( ${execs:-0} / (secs > 0 ? secs : 1) ))/s), no crash; corpus $n inputs after cmin; sanitizer $SAN; load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%d)"
  echo "fuzz: $line"
  echo "$line" >> target/fuzz/summary.txt
done
