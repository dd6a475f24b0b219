#!/usr/bin/env bash
# Builds cert-manager's controller, webhook and cainjector from its upstream Go
# module, with its CRDs beside them, into $LIFEBOAT_BIN_CACHE/cert-manager-<version>/:
#   controller, webhook, cainjector   the three binaries;
#   crds.yaml                         the six cert-manager.io CRDs;
#   chart/                            its Helm chart (Chart.yaml written).
# tests/e2e/admission-cert-manager.sh runs them as processes on this machine
# against the local cluster (docs/admission.md#certificates).
#
# Why v1.11: from v1.12 on, cert-manager's binaries are modules of their own
# (github.com/cert-manager/cert-manager/cmd/controller, ...), which the Go
# module proxy does not serve (404), and the library module's zip has no cmd/.
# Up to v1.11 they are packages of the main module. v1.11 supports Kubernetes
# up to 1.26 upstream; the e2e suite checks what Lifeboat needs of it
# (Issuer, Certificate, a Secret, caBundle injection) on the local 1.34.
#
# One committed builder module (hack/builders/cert-manager/) pins the version
# and, through its go.sum, every dependency. Idempotent: a cached build is not
# redone.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
module=github.com/cert-manager/cert-manager
version="$CERT_MANAGER_VERSION"
binaries=(controller webhook cainjector)
dir="$LIFEBOAT_BIN_CACHE/cert-manager-$version"
[[ -x "$dir/controller" && -x "$dir/webhook" && -x "$dir/cainjector" && -s "$dir/crds.yaml" && -f "$dir/chart/Chart.yaml" ]] && exit 0

builder="$REPO_ROOT/hack/builders/cert-manager"
mkdir -p "$builder"
if ! { [[ -f "$builder/go.mod" ]] && grep -Eq "$module $version( |\$)" "$builder/go.mod"; }; then
  log "generating the cert-manager builder module for $version"
  rm -f "$builder/go.mod" "$builder/go.sum"
  packages=()
  for binary in "${binaries[@]}"; do packages+=("$module/cmd/$binary@$version"); done
  (cd "$builder" && go mod init lifeboat.dev/hack/builders/cert-manager >/dev/null 2>&1 &&
    go get "${packages[@]}" 2>&1 | grep -Ev '^go: (downloading|added|upgraded|finding) ' >&2 || true)
  grep -Eq "$module $version( |\$)" "$builder/go.mod" ||
    die "the cert-manager builder module did not stay on $module $version"
fi

tmp="$(partial_dir "$dir")"
for binary in "${binaries[@]}"; do
  log "building cert-manager $binary $version"
  (cd "$builder" && with_heartbeat "cert-manager $binary build" go build -trimpath \
    -ldflags "-s -w -X $module/pkg/util.AppVersion=$version" -o "$tmp/$binary" "$module/cmd/$binary")
  "$tmp/$binary" --help >/dev/null 2>&1 || die "the built cert-manager $binary does not run"
done

# The CRDs as the module ships them are chart templates only in their labels.
source_dir="$(cd "$builder" && go mod download -json "$module@$version" | jq -r .Dir)"
for crd in "$source_dir"/deploy/crds/crd-*.yaml; do
  echo "---"
  sed -e '/# Generated labels/d' \
    -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" \
    -e "s/'{{ .Release.Name }}'/cert-manager/" "$crd"
done >"$tmp/crds.yaml"
! grep -q '{{' "$tmp/crds.yaml" || die "cert-manager's CRDs still hold template expressions"
# Its Helm chart, for the webhook configurations (its `webhook.url.host` is
# there for a webhook that runs outside the cluster); the release tool would
# write Chart.yaml from this template.
cp -r "$source_dir/deploy/charts/cert-manager" "$tmp/chart"
chmod -R u+w "$tmp/chart"
sed -e "s/^version: .*/version: $version/" -e "s/^appVersion: .*/appVersion: $version/" \
  "$tmp/chart/Chart.template.yaml" >"$tmp/chart/Chart.yaml"
commit_partial "$dir"
log "cert-manager $version cached in $dir"
