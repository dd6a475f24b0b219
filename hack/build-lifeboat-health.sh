#!/usr/bin/env bash
# Builds hack/tools/lifeboat-health (the kstatus + Argo CD health checker the
# GitOps tests use) from its committed Go module, whose go.sum pins
# sigs.k8s.io/cli-utils, gopher-lua and everything else fetched from the Go
# module proxy. Cached in $LIFEBOAT_BIN_CACHE/lifeboat-health-<hash>/, keyed by
# the hash of the module's sources, so a change rebuilds and nothing else does.
#
#   hack/build-lifeboat-health.sh        build if needed; prints the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

src="$REPO_ROOT/hack/tools/lifeboat-health"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

key="$(cd "$src" && cat go.mod go.sum $(ls -1 *.go | grep -v '_test\.go$' | sort) | sha256sum | cut -c1-16)"
dir="$LIFEBOAT_BIN_CACHE/lifeboat-health-$key"
if [[ ! -x "$dir/lifeboat-health" ]]; then
  log "building lifeboat-health ($key)"
  tmp="$(partial_dir "$dir")"
  (cd "$src" && go build -trimpath -ldflags "-s -w" -o "$tmp/lifeboat-health" .)
  commit_partial "$dir"
fi
echo "$dir/lifeboat-health"
