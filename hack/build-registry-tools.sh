#!/usr/bin/env bash
# Builds the tools of the referrers tests from their upstream Go modules into
# $LIFEBOAT_BIN_CACHE/<tool>-<version>/<tool>:
#   cosign  (github.com/sigstore/cosign/v2): signs images with a key pair and
#           attaches attestations, in the tag scheme (`sha256-<hex>.sig/.att`)
#           most signed images use, or as OCI 1.1 referrers;
#   oras    (oras.land/oras): `oras attach`, OCI 1.1 referrers (`subject`);
#   oci-registry (hack/builders/oci-registry/main.go, a few lines around
#           github.com/google/go-containerregistry/pkg/registry): a registry
#           that implements the referrers API (`GET /v2/<name>/referrers/<digest>`),
#           which distribution 2.8 (the Debian `docker-registry`) does not.
#           Why this one: zot is not on the Go module proxy here, distribution
#           v3 has no referrers API in any release, and `crane registry serve`
#           builds the same registry with the API switched off.
#
# One committed builder module per tool (hack/builders/<tool>/) pins the tool
# and, through its go.sum, every dependency. Idempotent: a cached binary is
# not rebuilt.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# build_tool NAME MODULE VERSION PACKAGE [LDFLAGS]
# A builder with its own main.go (PACKAGE "."): the cache key also covers
# that file, so changing it rebuilds.
build_tool() {
  local name="$1" module="$2" version="$3" package="$4" ldflags="${5:-}" key="${6:-$3}"
  local dir="$LIFEBOAT_BIN_CACHE/$name-$key"
  [[ -x "$dir/$name" ]] && return
  local builder="$REPO_ROOT/hack/builders/$name"
  mkdir -p "$builder"
  if ! { [[ -f "$builder/go.mod" ]] && grep -Eq "$module $version( |\$)" "$builder/go.mod"; }; then
    log "generating the $name builder module for $version"
    rm -f "$builder/go.mod" "$builder/go.sum"
    (cd "$builder" && go mod init "lifeboat.dev/hack/builders/$name" >/dev/null 2>&1 &&
      go get "${package/#./$module}@$version" 2>&1 | grep -Ev '^go: (downloading|added|upgraded|finding) ' >&2 || true)
    grep -Eq "$module $version( |\$)" "$builder/go.mod" ||
      die "the $name builder module did not stay on $module $version"
  fi
  log "building $name $version"
  local tmp; tmp="$(partial_dir "$dir")"
  (cd "$builder" && with_heartbeat "$name build" go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/$name" "$package")
  "$tmp/$name" version >/dev/null 2>&1 || die "the built $name does not run"
  commit_partial "$dir"
  log "$name cached in $dir"
}

build_tool oras oras.land/oras "$ORAS_VERSION" oras.land/oras/cmd/oras \
  "-X oras.land/oras/internal/version.Version=${ORAS_VERSION#v} -X oras.land/oras/internal/version.BuildMetadata="
oci_registry_key="$GGCR_VERSION-$(sha256sum "$REPO_ROOT/hack/builders/oci-registry/main.go" | cut -c1-12)"
build_tool oci-registry github.com/google/go-containerregistry "$GGCR_VERSION" . "" "$oci_registry_key"
build_tool cosign github.com/sigstore/cosign/v2 "$COSIGN_VERSION" github.com/sigstore/cosign/v2/cmd/cosign \
  "-X sigs.k8s.io/release-utils/version.gitVersion=$COSIGN_VERSION"
