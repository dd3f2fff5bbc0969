#!/usr/bin/env bash
# Build the OpenSSL 3.1.2 FIPS provider (fips.so, CMVP certificate #4985) reproducibly,
# check it against the pinned SHA-256 in fips/fips.so.sha256, install it with Debian's
# `openssl fipsinstall`, write a FIPS-only OpenSSL configuration and self-check it.
# Fails closed: any unexpected result exits non-zero. See fips/README.md.
#
# Usage: scripts/build-fips.sh [--force] [--selftest-tamper] [--write-pin]
#   --force            rebuild even if the installed fips.so already has the pinned hash
#   --selftest-tamper  afterwards, prove in a temporary copy that a flipped byte in fips.so
#                      and a missing fips.so make every digest fail (exit 1 if not)
#   --write-pin        bootstrap only: create fips/fips.so.sha256 from this build if it
#                      does not exist yet (never overwrites an existing pin)
#
# Environment:
#   RAPBOX_FIPS_DIR    output directory       (default /var/cache/rapbox/fips)
#   RAPBOX_FIPS_CACHE  fetch/build directory  (default /var/cache/rapbox/fips-cache)
#   CARGO_HOME         cargo's home           (default ~/.cargo)
set -euo pipefail

readonly CRATE_NAME="openssl-src"
readonly CRATE_VERSION="300.1.4+3.1.2"
# sha256 of openssl-src-300.1.4+3.1.2.crate as recorded by the crates.io index (Cargo.lock).
readonly CRATE_SHA256="80b6658b21fe1eba923af26cfe9c57a1a075a8190df2cd869a9bcd730093ffa2"
readonly OPENSSL_FIPS_VERSION="3.1.2"
# OpenSSL 3.1.2's release date (VERSION.dat: 1 Aug 2023); pins anything date-dependent.
readonly BUILD_EPOCH="1690848000"
readonly OPENSSL_BIN="/usr/bin/openssl"   # Debian's openssl 3.0 CLI, same libcrypto as rapd
readonly PACKAGES=(unifdef perl make gcc libssl3 openssl)

log() { printf 'build-fips: %s\n' "$*"; }
die() { printf 'build-fips: ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

FORCE=0
SELFTEST_TAMPER=0
WRITE_PIN=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --selftest-tamper) SELFTEST_TAMPER=1 ;;
        --write-pin) WRITE_PIN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"
PIN_FILE="$REPO_ROOT/fips/fips.so.sha256"
TEMPLATE="$REPO_ROOT/fips/openssl-fips.cnf.in"
[[ -f "$TEMPLATE" ]] || die "template not found: $TEMPLATE"

OUT_DIR="${RAPBOX_FIPS_DIR:-/var/cache/rapbox/fips}"
CACHE_DIR="${RAPBOX_FIPS_CACHE:-/var/cache/rapbox/fips-cache}"
mkdir -p "$OUT_DIR" "$CACHE_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd -P)"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd -P)"
# The paths end up verbatim in an OpenSSL config file: keep them free of characters that
# the config parser interprets ($, #, quotes, backslash, spaces...).
for p in "$OUT_DIR" "$CACHE_DIR"; do
    [[ "$p" =~ ^/[A-Za-z0-9/._+-]*$ ]] || die "unsupported characters in path '$p' (allowed: A-Z a-z 0-9 / . _ + -)"
done

MODULE="$OUT_DIR/fips.so"
FIPSMODULE_CNF="$OUT_DIR/fipsmodule.cnf"
FIPS_CNF="$OUT_DIR/openssl-fips.cnf"

# One run at a time per cache directory.
exec 9>"$CACHE_DIR/.lock"
flock 9 || die "cannot lock $CACHE_DIR/.lock"

# Nothing from the caller's OpenSSL environment may influence building or installing.
unset OPENSSL_CONF OPENSSL_MODULES OPENSSL_CONF_INCLUDE OPENSSL_ENGINES

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

#---------------------------------------------------------------------------------------
# 1. Packages
#---------------------------------------------------------------------------------------
ensure_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" != "installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "packages present: ${PACKAGES[*]}"
        return
    fi
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

#---------------------------------------------------------------------------------------
# 2. Source: openssl-src from crates.io, through cargo only
#---------------------------------------------------------------------------------------
find_cargo() {
    if command -v cargo >/dev/null 2>&1; then command -v cargo; return; fi
    local c
    for c in "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" "$HOME/.cargo/bin/cargo"; do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
    die "cargo not found (needed to fetch $CRATE_NAME $CRATE_VERSION from crates.io); install a Rust toolchain"
}

fetch_source() {
    local cargo fetch_dir lock_sum
    cargo="$(find_cargo)"
    fetch_dir="$CACHE_DIR/fetch"
    mkdir -p "$fetch_dir/src"
    cat >"$fetch_dir/Cargo.toml" <<EOF
# Throwaway project: only used to make cargo download $CRATE_NAME $CRATE_VERSION.
[package]
name = "rapbox-fips-src-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$CRATE_NAME = "=$CRATE_VERSION"

[workspace]
EOF
    : >"$fetch_dir/src/lib.rs"
    log "fetching $CRATE_NAME $CRATE_VERSION with cargo ($cargo)"
    (cd "$fetch_dir" && "$cargo" fetch --quiet) || die "cargo fetch of $CRATE_NAME $CRATE_VERSION failed"

    lock_sum="$(awk -v n="$CRATE_NAME" -v v="$CRATE_VERSION" '
        $1=="name" && $3=="\""n"\"" {m=1; next}
        m && $1=="version" {m=($3=="\""v"\""); next}
        m && $1=="checksum" {gsub(/"/,"",$3); print $3; exit}
        /^\[\[package\]\]/ {m=0}' "$fetch_dir/Cargo.lock")"
    [[ "$lock_sum" == "$CRATE_SHA256" ]] ||
        die "$CRATE_NAME $CRATE_VERSION checksum in Cargo.lock is '$lock_sum', expected $CRATE_SHA256"
    log "crate checksum matches crates.io index: $CRATE_SHA256"

    local registry_src="${CARGO_HOME:-$HOME/.cargo}/registry/src" d
    SRC_TREE=""
    for d in "$registry_src"/*/"$CRATE_NAME-$CRATE_VERSION"; do
        # .cargo-ok is written by cargo once the crate is completely unpacked.
        if [[ -f "$d/.cargo-ok" && -f "$d/openssl/Configure" ]]; then SRC_TREE="$d/openssl"; break; fi
    done
    [[ -n "$SRC_TREE" ]] || die "unpacked source not found under $registry_src/*/$CRATE_NAME-$CRATE_VERSION/openssl"
    grep -qx "MAJOR=3" "$SRC_TREE/VERSION.dat" && grep -qx "MINOR=1" "$SRC_TREE/VERSION.dat" &&
        grep -qx "PATCH=2" "$SRC_TREE/VERSION.dat" || die "$SRC_TREE is not OpenSSL $OPENSSL_FIPS_VERSION"
    log "source tree: $SRC_TREE"
}

#---------------------------------------------------------------------------------------
# 3. Build providers/fips.so only
#---------------------------------------------------------------------------------------
# Fixed, minimal environment for Configure/make: compiler flags, locale, time zone and
# dates must not come from the caller, or the module's hash would depend on who built it.
clean_build_env() {
    unset CC CXX CPP CFLAGS CXXFLAGS CPPFLAGS LDFLAGS LDLIBS AR ARFLAGS RANLIB RC \
          CROSS_COMPILE HASHBANGPERL PERL MAKEFLAGS MFLAGS MAKELEVEL GCC_EXEC_PREFIX \
          C_INCLUDE_PATH CPATH LIBRARY_PATH
    export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH="$BUILD_EPOCH"
    umask 022
}

# run_logged <log> <what> <command...>: run quietly, show the log's tail and die on failure.
run_logged() {
    local logf="$1" what="$2"; shift 2
    "$@" >>"$logf" 2>&1 || { tail -n 40 "$logf" >&2; die "$what failed (full log: $logf)"; }
}

check_fips_sources() {
    # `make diff-fips-checksums` recomputes the checksums of every source file inside the
    # FIPS boundary (it configures and builds twice in a scratch subdirectory) and diffs
    # them against providers/fips-sources.checksums shipped with 3.1.2. It must run in a
    # configured but UNBUILT tree: after an in-tree `make providers/fips.so` it reports
    # spurious differences. Hence a separate pristine copy.
    local dir="$CACHE_DIR/build/checksums" logf="$CACHE_DIR/build/checksums.log" start
    start=$(date +%s)
    log "make diff-fips-checksums in a pristine copy ($dir)"
    cp -a "$SRC_TREE" "$dir"
    (
        cd "$dir"
        clean_build_env
        run_logged "$logf" "Configure (checksum copy)" perl ./Configure enable-fips
        run_logged "$logf" "make diff-fips-checksums (FIPS boundary sources differ from providers/fips-sources.checksums)" \
            make diff-fips-checksums
    )
    rm -rf "$dir"
    log "FIPS boundary source checksums match providers/fips-sources.checksums ($(( $(date +%s) - start )) s)"
}

build_module() {
    local build_dir="$CACHE_DIR/build/openssl" logf="$CACHE_DIR/build/build.log" start
    rm -rf "$CACHE_DIR/build"
    mkdir -p "$CACHE_DIR/build"
    check_fips_sources

    log "copying source to $build_dir (clean build)"
    cp -a "$SRC_TREE" "$build_dir"
    start=$(date +%s)
    (
        cd "$build_dir"
        clean_build_env
        log "configure: ./Configure enable-fips"
        run_logged "$logf" "Configure" perl ./Configure enable-fips
        log "make -j2 build_generated"
        run_logged "$logf" "make build_generated" make -j2 build_generated
        log "make -j2 providers/fips.so"
        run_logged "$logf" "make providers/fips.so" make -j2 providers/fips.so
    )
    BUILT_MODULE="$build_dir/providers/fips.so"
    [[ -f "$BUILT_MODULE" ]] || die "build produced no $BUILT_MODULE"
    log "built $BUILT_MODULE in $(( $(date +%s) - start )) s"
}

#---------------------------------------------------------------------------------------
# 4. Pin check and install
#---------------------------------------------------------------------------------------
read_pin() {
    [[ -f "$PIN_FILE" ]] || { PINNED=""; return; }
    local name
    read -r PINNED name <"$PIN_FILE" || true
    [[ "$PINNED" =~ ^[0-9a-f]{64}$ && "$name" == "fips.so" ]] ||
        die "malformed pin file $PIN_FILE (expected '<64 hex>  fips.so')"
}

check_pin_and_install() {
    local actual
    actual="$(sha256_of "$BUILT_MODULE")"
    if [[ -z "$PINNED" ]]; then
        if ((WRITE_PIN)); then
            printf '%s  fips.so\n' "$actual" >"$PIN_FILE"
            PINNED="$actual"
            log "pin file did not exist: created $PIN_FILE with $actual (commit it)"
        else
            die "no pin file $PIN_FILE; built fips.so has SHA-256 $actual. Refusing to install an unpinned module (bootstrap once with --write-pin)."
        fi
    fi
    if [[ "$actual" != "$PINNED" ]]; then
        die "SHA-256 mismatch for built fips.so: got $actual, pinned $PINNED ($PIN_FILE). Not installing."
    fi
    log "built fips.so matches pinned SHA-256 $PINNED"
    install -m 0644 "$BUILT_MODULE" "$MODULE.tmp"
    mv -f "$MODULE.tmp" "$MODULE"
    [[ "$(sha256_of "$MODULE")" == "$PINNED" ]] || die "installed $MODULE does not have the pinned hash"
    log "installed $MODULE"
}

#---------------------------------------------------------------------------------------
# 5. fipsinstall + configuration
#---------------------------------------------------------------------------------------
write_config_for() {
    # write_config_for <module> <fipsmodule.cnf> <output cnf>
    sed -e "s|@FIPS_MODULE@|$1|g" -e "s|@FIPSMODULE_CNF@|$2|g" "$TEMPLATE" >"$3.tmp"
    if grep -q '@[A-Z_]*@' "$3.tmp"; then rm -f "$3.tmp"; die "unsubstituted placeholder left in $3"; fi
    mv -f "$3.tmp" "$3"
}

install_config() {
    log "running $OPENSSL_BIN fipsinstall ($("$OPENSSL_BIN" version | cut -d' ' -f1-2)) on $MODULE"
    "$OPENSSL_BIN" fipsinstall -module "$MODULE" -out "$FIPSMODULE_CNF.tmp" >"$CACHE_DIR/fipsinstall.log" 2>&1 ||
        { cat "$CACHE_DIR/fipsinstall.log" >&2; rm -f "$FIPSMODULE_CNF.tmp"; die "openssl fipsinstall failed"; }
    grep -q '^\[fips_sect\]' "$FIPSMODULE_CNF.tmp" || die "fipsinstall output has no [fips_sect]"
    grep -Eq '^module-mac *=' "$FIPSMODULE_CNF.tmp" || die "fipsinstall output has no module-mac"
    chmod 0644 "$FIPSMODULE_CNF.tmp"
    mv -f "$FIPSMODULE_CNF.tmp" "$FIPSMODULE_CNF"
    log "wrote $FIPSMODULE_CNF"
    write_config_for "$MODULE" "$FIPSMODULE_CNF" "$FIPS_CNF"
    log "wrote $FIPS_CNF"
}

#---------------------------------------------------------------------------------------
# 6. Self-checks with the CLI
#---------------------------------------------------------------------------------------
# Run the Debian CLI under a given config; stdin is a fixed message.
ossl() { local cnf="$1"; shift; printf 'rapbox fips self-check\n' | OPENSSL_CONF="$cnf" "$OPENSSL_BIN" "$@"; }

KEY_HEX="000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
IV_HEX="000102030405060708090a0b0c0d0e0f"

self_check() {
    local cnf="$1" out providers active
    log "self-check with OPENSSL_CONF=$cnf"

    out="$(ossl "$cnf" list -providers 2>&1)" || die "'openssl list -providers' failed under $cnf: $out"
    # Provider names are the lines indented by exactly two spaces.
    providers="$(printf '%s\n' "$out" | sed -n 's/^  \([A-Za-z0-9_-]\{1,\}\)$/\1/p' | sort | tr '\n' ' ')"
    [[ "$providers" == "base fips " ]] || die "expected providers 'base fips', got '${providers% }'. Output: $out"
    active="$(printf '%s\n' "$out" | grep -c '^ *status: active$' || true)"
    [[ "$active" == "2" ]] || die "expected 2 active providers, got $active. Output: $out"
    # A here-string, not a pipe: `grep -q` exits at its first match, and under pipefail the
    # writer's SIGPIPE on the lines after it would fail the check at random.
    grep -q "^ *version: $OPENSSL_FIPS_VERSION\$" <<<"$out" ||
        die "FIPS provider version is not $OPENSSL_FIPS_VERSION. Output: $out"
    log "  providers: fips ($OPENSSL_FIPS_VERSION) + base, both active; no default, no legacy"

    out="$(ossl "$cnf" dgst -sha256 2>&1)" || die "SHA-256 failed under the FIPS config: $out"
    log "  sha256: ok"
    out="$(ossl "$cnf" enc -e -aes-256-cbc -K "$KEY_HEX" -iv "$IV_HEX" 2>/dev/null | od -An -tx1 | tr -d ' \n')" ||
        die "AES-256-CBC failed under the FIPS config"
    [[ -n "$out" ]] || die "AES-256-CBC produced no output under the FIPS config"
    log "  aes-256-cbc: ok"

    if out="$(ossl "$cnf" dgst -md5 2>&1)"; then die "MD5 WORKED under the FIPS config (must be refused): $out"; fi
    log "  md5: refused (as required)"
    if out="$(ossl "$cnf" enc -e -chacha20 -K "$KEY_HEX" -iv "$IV_HEX" 2>&1)"; then
        die "ChaCha20 WORKED under the FIPS config (must be refused)"
    fi
    log "  chacha20: refused (as required)"
    if out="$(ossl "$cnf" dgst -whirlpool 2>&1)"; then die "Whirlpool (legacy) WORKED under the FIPS config"; fi
    log "  whirlpool (legacy): refused (as required)"
}

#---------------------------------------------------------------------------------------
# 7. Optional: prove that a tampered or missing module fails closed
#---------------------------------------------------------------------------------------
flip_byte() {
    # flip_byte <file> <offset>: XOR the byte at <offset> with 0x01, in place.
    local v
    v="$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')"
    [[ -n "$v" ]] || die "cannot read byte $2 of $1"
    # shellcheck disable=SC2059
    printf "\\$(printf '%03o' $((v ^ 1)))" | dd of="$1" bs=1 seek="$2" count=1 conv=notrunc status=none
}

# first_reason <openssl stderr>: the reason field of the first OpenSSL error line.
first_reason() { printf '%s\n' "$1" | awk -F: '/:error:/ {print $6; exit}'; }

# expect_closed <label> <cnf>: every check must fail.
expect_closed() {
    local label="$1" cnf="$2" out
    if out="$(ossl "$cnf" dgst -sha256 2>&1)"; then
        die "TAMPER NOT DETECTED ($label): 'openssl dgst -sha256' succeeded: $out"
    fi
    log "  $label: dgst -sha256 fails ($(first_reason "$out"))"
    if out="$(ossl "$cnf" enc -e -aes-256-cbc -K "$KEY_HEX" -iv "$IV_HEX" 2>/dev/null | od -An -tx1 | tr -d ' \n')" && [[ -n "$out" ]]; then
        die "TAMPER NOT DETECTED ($label): AES-256-CBC produced output"
    fi
    log "  $label: enc -aes-256-cbc fails"
}

selftest_tamper() {
    local tmp offset size variant cnf out
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/rapbox-fips-tamper.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    [[ "$tmp" =~ ^/[A-Za-z0-9/._+-]*$ ]] || die "unsupported characters in temp path '$tmp'"
    log "tamper self-test in $tmp"

    # Control: an untouched copy with its own config must work, so that the failures
    # below are caused by the tampering and not by the copying.
    mkdir -p "$tmp/good"
    cp -p "$MODULE" "$FIPSMODULE_CNF" "$tmp/good/"
    write_config_for "$tmp/good/fips.so" "$tmp/good/fipsmodule.cnf" "$tmp/good/openssl-fips.cnf"
    ossl "$tmp/good/openssl-fips.cnf" dgst -sha256 >/dev/null 2>&1 ||
        die "control copy does not work, tamper test inconclusive"
    "$OPENSSL_BIN" fipsinstall -module "$tmp/good/fips.so" -in "$tmp/good/fipsmodule.cnf" -verify >/dev/null 2>&1 ||
        die "control copy fails 'openssl fipsinstall -verify', tamper test inconclusive"
    log "  control copy: dgst -sha256 works, fipsinstall -verify passes"

    # Flip one byte in the middle of .rodata: the ELF still loads, so only the module's
    # integrity check (HMAC-SHA256 over the whole file, compared to module-mac in
    # fipsmodule.cnf) can catch it.
    local sec_off="" sec_size=""
    read -r sec_off sec_size < <(LC_ALL=C readelf -SW "$MODULE" 2>/dev/null |
        awk '{for (i = 1; i < NF; i++) if ($i == ".rodata") {print $(i+3), $(i+4); exit}}') || true
    size="$(stat -c %s "$MODULE")"
    if [[ "$sec_off" =~ ^[0-9a-f]+$ && "$sec_size" =~ ^[0-9a-f]+$ ]]; then
        offset=$((16#$sec_off + 16#$sec_size / 2))
    else
        offset=$((size / 2))
    fi

    for variant in tampered missing; do
        mkdir -p "$tmp/$variant"
        cp -p "$MODULE" "$FIPSMODULE_CNF" "$tmp/$variant/"
        if [[ "$variant" == tampered ]]; then
            flip_byte "$tmp/$variant/fips.so" "$offset"
            [[ "$(sha256_of "$tmp/$variant/fips.so")" != "$(sha256_of "$MODULE")" ]] || die "byte flip did not change the file"
            [[ "$( (cmp -l "$MODULE" "$tmp/$variant/fips.so" || true) | wc -l)" == 1 ]] || die "expected exactly one differing byte"
            log "  tampered copy: flipped 1 byte at offset $offset of $size"
            if out="$("$OPENSSL_BIN" fipsinstall -module "$tmp/$variant/fips.so" -in "$tmp/$variant/fipsmodule.cnf" -verify 2>&1)"; then
                die "TAMPER NOT DETECTED: 'openssl fipsinstall -verify' accepts the modified fips.so"
            fi
            log "  tampered copy: fipsinstall -verify fails: $(printf '%s' "$out" | tr '\n' ' ')"
        else
            rm -f "$tmp/$variant/fips.so"
            log "  missing copy: fips.so removed"
        fi
        cnf="$tmp/$variant/openssl-fips.cnf"
        write_config_for "$tmp/$variant/fips.so" "$tmp/$variant/fipsmodule.cnf" "$cnf"
        expect_closed "$variant, config_diagnostics=1" "$cnf"
        # Defence in depth: even if config errors were ignored, base + fips=yes leaves nothing.
        sed -e 's/^config_diagnostics = 1$/config_diagnostics = 0/' "$cnf" >"$cnf.nodiag"
        grep -q '^config_diagnostics = 0$' "$cnf.nodiag" || die "could not derive the config_diagnostics=0 variant"
        expect_closed "$variant, config_diagnostics=0" "$cnf.nodiag"
    done
    log "tamper self-test passed: a flipped byte and a missing fips.so both fail closed"
}

#---------------------------------------------------------------------------------------
main() {
    ensure_packages
    read_pin
    if [[ -z "$PINNED" ]] && ((WRITE_PIN == 0)); then
        die "no pin file $PIN_FILE: refusing to build and install an unpinned module (bootstrap once with --write-pin, then commit the pin)"
    fi
    if [[ -n "$PINNED" ]] && ((WRITE_PIN)); then
        log "pin file exists ($PINNED): --write-pin ignored, the existing pin is enforced"
    fi
    if ((FORCE == 0)) && [[ -n "$PINNED" && -f "$MODULE" ]] && [[ "$(sha256_of "$MODULE")" == "$PINNED" ]]; then
        log "reusing $MODULE: already has the pinned SHA-256 $PINNED (use --force to rebuild)"
    else
        if [[ -f "$MODULE" && -n "$PINNED" ]] && ((FORCE == 0)); then
            log "existing $MODULE does not match the pin: rebuilding"
        fi
        fetch_source
        build_module
        check_pin_and_install
    fi
    install_config
    self_check "$FIPS_CNF"
    if ((SELFTEST_TAMPER)); then selftest_tamper; fi
    log "done"
    log "fips.so:          $MODULE"
    log "fipsmodule.cnf:   $FIPSMODULE_CNF"
    log "openssl-fips.cnf: $FIPS_CNF"
    log "use: OPENSSL_CONF=$FIPS_CNF"
}

main
