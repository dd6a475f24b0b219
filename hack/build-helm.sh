#!/usr/bin/env bash
# Builds the helm CLI from its upstream Go module (helm.sh/helm/v3) into
# $LIFEBOAT_BIN_CACHE/helm-<version>/helm, for the chart tests and the demo.
#
# A committed builder module (hack/builders/helm/) pins Helm and, through its
# go.sum, every dependency, so CI builds the same binary the developers did.
# The version stamping mirrors Helm's own Makefile: `helm version` reports
# $HELM_VERSION, and the default Kubernetes version that `helm template` and
# `helm lint` assume comes from the client-go Helm is built with.
#
# Idempotent: nothing happens when the binary is already cached.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

helm_dir="$LIFEBOAT_BIN_CACHE/helm-$HELM_VERSION"
builder="$REPO_ROOT/hack/builders/helm"

export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# Writes hack/builders/helm/go.mod for $HELM_VERSION unless the committed one
# already targets that version.
prepare_helm_builder() {
  if [[ -f "$builder/go.mod" ]] && grep -Eq "helm.sh/helm/v3 $HELM_VERSION( |\$)" "$builder/go.mod"; then
    return
  fi
  log "generating the Helm builder module for $HELM_VERSION"
  rm -f "$builder/go.mod" "$builder/go.sum"
  (cd "$builder" && go mod init lifeboat.dev/hack/builders/helm >/dev/null 2>&1 &&
    go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>&1 | grep -Ev '^go: (downloading|added|upgraded) ' >&2 || true)
  grep -Eq "helm.sh/helm/v3 $HELM_VERSION( |\$)" "$builder/go.mod" ||
    die "the builder module did not stay on helm.sh/helm/v3 $HELM_VERSION"
}

build_helm() {
  [[ -x "$helm_dir/helm" ]] && return
  prepare_helm_builder
  # Helm's Makefile: Kubernetes major = client-go major + 1, minor = client-go minor.
  local client_go k8s_minor
  client_go="$(cd "$builder" && go list -m -f '{{.Version}}' k8s.io/client-go)"
  k8s_minor="$(cut -d. -f2 <<<"$client_go")"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  log "building Helm $HELM_VERSION (client-go $client_go); the first build takes a few minutes on 2 cores"
  local tmp; tmp="$(partial_dir "$helm_dir")"
  (cd "$builder" &&
    with_heartbeat "helm build" go build -trimpath -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
  "$tmp/helm" version --short >/dev/null || die "the built helm does not run"
  commit_partial "$helm_dir"
  log "helm cached in $helm_dir ($("$helm_dir/helm" version --short))"
}

build_helm
