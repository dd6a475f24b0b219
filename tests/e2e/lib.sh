#!/usr/bin/env bash
# A tiny test harness for the end-to-end tests on the local cluster. Each
# `check` is one test; the summary line is the plain "N passed, N failed"
# that CI reads. A failed check prints why and the run exits non-zero.
source "$(dirname "${BASH_SOURCE[0]}")/../../hack/cluster/env.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_ADMIN}"

# Suites share one cluster, one operator Deployment and the :dev images in the
# nodes: one suite at a time, whoever runs it (CI, a developer, another clone).
exec {E2E_LOCK_FD}>/var/lock/lifeboat-e2e.lock
flock "$E2E_LOCK_FD"

E2E_PASSED=0
E2E_FAILED=0
E2E_FAILURES=()

# check NAME COMMAND... : runs COMMAND; passes when it exits 0.
check() {
  local name="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then
    E2E_PASSED=$((E2E_PASSED + 1))
    printf '  ok    %s\n' "$name"
  else
    E2E_FAILED=$((E2E_FAILED + 1))
    E2E_FAILURES+=("$name")
    printf '  FAIL  %s\n%s\n' "$name" "$(sed 's/^/        /' <<<"$out" | tail -20)"
  fi
}

# Prints the summary; returns non-zero when anything failed.
summary() {
  local suite="$1"
  echo "$suite: $E2E_PASSED passed, $E2E_FAILED failed"
  ((E2E_FAILED == 0))
}

k() { "$KUBECTL" "$@"; }

# Waits until COMMAND succeeds or SECONDS pass.
eventually() {
  local timeout="$1"; shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# The digest the source registry serves for repo:tag (what the pod must report).
registry_digest() {
  local repo="$1" tag="$2"
  curl -sfI -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$SOURCE_REGISTRY/v2/$repo/manifests/$tag" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'
}

# grant_credentials NS: what a team does so the operator may read the
# Secrets and ConfigMaps its policies name: a RoleBinding in its namespace to
# the chart's credentials-reader ClusterRole (docs/security.md).
grant_credentials() {
  k -n "$1" create rolebinding lifeboat-credentials-reader --clusterrole lifeboat-credentials-reader \
    --serviceaccount lifeboat-system:lifeboat-operator >/dev/null
}

# backup_registry_access NS (after grant_credentials NS): the Secret `backup-credentials` (basic auth) and
# the ConfigMap `backup-ca` (the cluster CA) that policies in NS use to reach
# the backup registry.
backup_registry_access() {
  grant_credentials "$1"
  k -n "$1" create secret docker-registry backup-credentials --docker-server="$BACKUP_REGISTRY" \
    --docker-username="$BACKUP_REGISTRY_USER" --docker-password="$BACKUP_REGISTRY_PASSWORD" >/dev/null
  k -n "$1" create configmap backup-ca --from-file=ca.crt="$CLUSTER_PKI/ca.crt" >/dev/null
}
