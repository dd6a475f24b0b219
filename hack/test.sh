#!/usr/bin/env bash
# Runs every Lifeboat test: formatting, lints, unit and integration tests
# (against real docker-registry and containerd processes), then the end-to-end
# tests on the local cluster built from source. Installs and builds whatever
# is missing first (cached under $LIFEBOAT_CACHE, so only the first run pays).
#
#   hack/test.sh [--keep-cluster]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

keep_cluster=false
[[ "${1:-}" == "--keep-cluster" ]] && keep_cluster=true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LIFEBOAT_CACHE/cargo-target}"
export CARGO_TERM_COLOR=never
failed=()

step() {
  local name="$1"; shift
  log "=== $name"
  local start=$SECONDS
  if "$@"; then
    log "=== $name: ok ($((SECONDS - start)) s)"
  else
    log "=== $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

hack/install-deps.sh
hack/build-kubernetes.sh
hack/build-helm.sh
# cosign, oras and a registry with the referrers API (registry-transfer/tests/referrers.rs, tests/e2e/referrers.sh).
hack/build-registry-tools.sh
# cert-manager's controller, webhook and cainjector (tests/e2e/admission-cert-manager.sh).
hack/build-cert-manager.sh

# Static checks first, cheapest first: a stale generated file or an unused
# dependency fails in seconds, not after the builds and the e2e suites.
step "cargo fmt" cargo fmt --all --check
step "CRDs and docs/reference.md current (crdgen --check)" cargo run --quiet -p lifeboat-api --bin crdgen -- --check
step "chart CRDs and config/ manifests current (render-manifests --check)" hack/render-manifests.sh --check
step "argocd-cm and rules copies current" hack/render-integrations.sh --check
step "no unused dependencies (cargo-machete, workspace table)" hack/check-dependencies.sh
step "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
# Optional features (the operator's `otlp`) must lint and pass too.
step "cargo clippy --all-features" cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
step "cargo test" cargo test --workspace --no-fail-fast
step "cargo test (operator, feature otlp)" cargo test -p lifeboat-operator --features otlp --lib --no-fail-fast
# Parsers of remote and tenant input, 10 s per cargo-fuzz target (hack/fuzz.sh;
# the corpus is cached, so coverage builds up over runs).
step "fuzz (bounded)" hack/fuzz.sh
# GitOps and monitoring integrations (config/gitops, config/monitoring).
step "go test lifeboat-health (Argo CD Lua, kstatus, kube-state-metrics paths)" \
  bash -c 'cd hack/tools/lifeboat-health && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=readonly go test -count=1 ./...'
step "promtool check and test the alerts" \
  bash -c 'promtool check rules config/monitoring/prometheus-rules.yaml && promtool test rules config/monitoring/tests/*.test.yaml'

source hack/cluster/env.sh
cluster_started_here=false
if ! kubectl_admin get --raw /readyz >/dev/null 2>&1; then
  hack/cluster/down.sh --purge >/dev/null 2>&1 || true
  start=$SECONDS
  hack/cluster/up.sh
  warm_start=$((SECONDS - start))
  cluster_started_here=true
  log "cluster start took ${warm_start} s"
  step "cluster starts within 90 s" test "$warm_start" -le 90
fi
# An EXIT trap's own status becomes the script's: keep the tests' status.
stop_cluster() {
  local rc=$?
  if $cluster_started_here && ! $keep_cluster; then hack/cluster/down.sh --purge || true; fi
  exit "$rc"
}
trap stop_cluster EXIT

hack/images/push-test-images.sh
# Each suite builds and loads Lifeboat's images itself, under the e2e lock.
for suite in tests/e2e/[0-9a-z]*.sh; do
  [[ "$(basename "$suite")" == lib.sh ]] && continue
  step "e2e $(basename "$suite" .sh)" bash "$suite"
done

if ((${#failed[@]} > 0)); then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all tests passed"
