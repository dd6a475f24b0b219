#!/usr/bin/env bash
# Installs cargo-fuzz from crates.io into $LIFEBOAT_BIN_CACHE/cargo-fuzz-<version>/bin,
# for the bounded fuzz runs of hack/fuzz.sh. Built with the stable toolchain
# (cargo-fuzz itself needs no nightly; the fuzz targets do, see hack/fuzz.sh).
#
# Idempotent: nothing happens when the binary is already cached. `--locked`
# uses the dependency versions cargo-fuzz was released with.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir="$LIFEBOAT_BIN_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION"
[[ -x "$dir/bin/cargo-fuzz" ]] && exit 0
log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $dir"
# A half-finished install must not look finished: build beside, then move.
partial="$dir.partial.$$"
rm -rf "$partial"
with_heartbeat "cargo install cargo-fuzz" \
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$partial" --quiet
mkdir -p "$(dirname "$dir")"
rm -rf "$dir"
mv "$partial" "$dir"
log "cargo-fuzz installed"
