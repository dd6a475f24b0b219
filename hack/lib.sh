#!/usr/bin/env bash
# Shared settings for Lifeboat's development scripts. Source it; do not run it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# Versions of everything the scripts build from source. Changing one here
# invalidates exactly that part of the cache, nothing else.
export KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.34.4}"
export ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
export HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Signing and artifact tools of the referrers tests (hack/build-registry-tools.sh):
# cosign signs and attests, oras attaches OCI 1.1 referrers, crane serves a
# registry WITH the referrers API (distribution 2.8 has none).
export COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
export ORAS_VERSION="${ORAS_VERSION:-v1.3.6}"
export GGCR_VERSION="${GGCR_VERSION:-v0.22.1}"
# cargo-machete: the unused-dependency check (hack/build-cargo-machete.sh).
export CARGO_MACHETE_VERSION="${CARGO_MACHETE_VERSION:-0.9.2}"
export CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.1}"
# cert-manager, for the admission webhook's cert-manager path
# (hack/build-cert-manager.sh says why this version).
export CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.11.5}"

# Built binaries live outside the repository, keyed by version, so a fresh
# clone (and CI on the same machine) reuses them.
export LIFEBOAT_CACHE="${LIFEBOAT_CACHE:-/var/cache/lifeboat}"
export LIFEBOAT_BIN_CACHE="$LIFEBOAT_CACHE/bin"

# The entrypoint of the test images (busybox): runs until it is told to stop.
RUN_FOREVER='["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]'

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a long command, printing a heartbeat every 30 s so a 30-minute build
# does not look hung.
with_heartbeat() {
  local label="$1"; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if (( (SECONDS - start) % 30 < 5 )) && kill -0 "$pid" 2>/dev/null; then
      log "$label: still working ($((SECONDS - start)) s)"
    fi
  done
  wait "$pid"
}

# A cached build goes into DIR.partial and becomes DIR only once it is
# complete, so an interrupted build is never taken for a cached one.
# partial_dir DIR: empties DIR.partial and prints its path.
partial_dir() { rm -rf "$1.partial"; mkdir -p "$1.partial"; echo "$1.partial"; }
# commit_partial DIR: replaces DIR with the finished DIR.partial.
commit_partial() { rm -rf "$1"; mv "$1.partial" "$1"; }
