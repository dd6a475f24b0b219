#!/usr/bin/env bash
# Builds cargo-machete (the unused-dependency check of hack/test.sh's static
# phase) from crates.io with `cargo install --locked`, into
# $LIFEBOAT_BIN_CACHE/cargo-machete-<version>/bin/cargo-machete.
# (cargo-shear, which parses the sources instead of searching them, needs a
# newer rustc than the project's 1.95 in its locked dependencies.)
#
# Idempotent: nothing happens when the binary is already cached. Prints the
# binary's path.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir="$LIFEBOAT_BIN_CACHE/cargo-machete-$CARGO_MACHETE_VERSION"
if [[ ! -x "$dir/bin/cargo-machete" ]]; then
  log "building cargo-machete $CARGO_MACHETE_VERSION from crates.io (a minute or two on 2 cores)"
  tmp="$(partial_dir "$dir")"
  # A target directory of its own, removed after: the workspace's stays as it is.
  with_heartbeat "cargo-machete build" cargo install --quiet --locked --root "$tmp" \
    --target-dir "$tmp/target" cargo-machete --version "=$CARGO_MACHETE_VERSION" >&2
  rm -rf "$tmp/target"
  "$tmp/bin/cargo-machete" --version >/dev/null || die "the built cargo-machete does not run"
  commit_partial "$dir"
  log "cargo-machete cached in $dir"
fi
echo "$dir/bin/cargo-machete"
