#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 10 s each), as
# part of hack/test.sh. A crash fails the run and leaves its input in
# <crate>/fuzz/artifacts/<target>/; turn it into a regression test.
#
#   hack/fuzz.sh [TARGET...]      (default: all; LIFEBOAT_FUZZ_SECONDS=10)
#
# Needs a nightly compiler for the sanitizer flags: the installed nightly
# toolchain if rustup has one, else the stable compiler with
# RUSTC_BOOTSTRAP=1 (no toolchain download either way). cargo-fuzz itself
# comes from hack/build-cargo-fuzz.sh (cached by version).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

seconds="${LIFEBOAT_FUZZ_SECONDS:-10}"
"$REPO_ROOT/hack/build-cargo-fuzz.sh"
# `cargo [+toolchain] fuzz` finds the cargo-fuzz binary on PATH.
export PATH="$LIFEBOAT_BIN_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION/bin:$PATH"

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
# Instrumented builds beside the normal ones, never mixed with them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LIFEBOAT_CACHE/cargo-target}/fuzz"
# Corpora grow across runs (each run starts where the last stopped), kept
# out of the repository.
corpus_root="$LIFEBOAT_CACHE/fuzz-corpus"

# crate-dir:target[:dictionary]
targets=(
  api:image_reference:image_reference.dict
  api:schedule:schedule.dict
  registry-transfer:manifest:manifest.dict
  registry-transfer:www_authenticate:www_authenticate.dict
  registry-transfer:docker_config
)

wanted=("$@")
failed=()
for entry in "${targets[@]}"; do
  IFS=: read -r crate target dict <<<"$entry"
  if ((${#wanted[@]} > 0)) && [[ ! " ${wanted[*]} " == *" $target "* ]]; then
    continue
  fi
  corpus="$corpus_root/$crate/$target"
  mkdir -p "$corpus"
  args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10)
  [[ -n "$dict" ]] && args+=(-dict="$dict")
  log "fuzzing $crate/$target for ${seconds} s"
  if ! (cd "$crate/fuzz" &&
    cargo "${toolchain[@]}" fuzz run "$target" "$corpus" -- "${args[@]}" 2>&1 |
      { grep -Ev '^#[0-9]+\s+(NEW|REDUCE|pulse)|# Uses: |^\s+NEW_FUNC' >&2 || true; }); then
    failed+=("$crate/$target")
  fi
done
if ((${#failed[@]} > 0)); then
  log "fuzz targets that crashed: ${failed[*]} (inputs in <crate>/fuzz/artifacts/)"
  exit 1
fi
log "fuzzing: no crash"
