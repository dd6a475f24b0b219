#!/usr/bin/env bash
# A tiny test harness for the end-to-end tests on the local cluster. Each
# `check` is one test; the summary line is the plain "N passed, N failed"
# that CI reads. A failed check prints why and the run exits non-zero.
source "$(dirname "${BASH_SOURCE[0]}")/../../hack/cluster/env.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_ADMIN}"

# Suites share one cluster, one operator Deployment and the :dev images in the
# nodes: one suite at a time, whoever runs it (CI, a developer, another clone).
# A script started by one that holds the lock (it inherits the holder's
# pid here, and the holder still runs) does not wait for it again: one lock
# for a run of several benchmarks.
if ! { [[ -n "${LIFEBOAT_E2E_LOCK_HELD:-}" ]] && kill -0 "$LIFEBOAT_E2E_LOCK_HELD" 2>/dev/null; }; then
  exec {E2E_LOCK_FD}>/var/lock/lifeboat-e2e.lock
  flock "$E2E_LOCK_FD"
  export LIFEBOAT_E2E_LOCK_HELD=$$
fi

E2E_STARTED=$SECONDS # after the lock: what the suite itself takes
E2E_PASSED=0
E2E_FAILED=0
E2E_FAILURES=()

# check NAME COMMAND... : runs COMMAND; passes when it exits 0.
check() {
  local name="$1"; shift
  local out started=$SECONDS
  if out="$("$@" 2>&1)"; then
    E2E_PASSED=$((E2E_PASSED + 1))
    # A check's own time, when it is long enough to matter for the CI budget.
    if ((SECONDS - started >= 3)); then
      printf '  ok    %s  [%d s]\n' "$name" "$((SECONDS - started))"
    else
      printf '  ok    %s\n' "$name"
    fi
  else
    E2E_FAILED=$((E2E_FAILED + 1))
    E2E_FAILURES+=("$name")
    printf '  FAIL  %s\n%s\n' "$name" "$(sed 's/^/        /' <<<"$out" | tail -20)"
  fi
}

# Prints how long the suite took and the summary; returns non-zero when
# anything failed.
summary() {
  local suite="$1"
  echo "  measured: $suite took $((SECONDS - E2E_STARTED)) s from taking the e2e lock"
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

# Every manifest media type Lifeboat copies: an image manifest or an index,
# OCI or Docker.
MANIFEST_ACCEPT='Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json'

# Prints the Docker-Content-Digest header of a HEAD response on stdin.
content_digest() { tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'; }

# push_busybox_image REPO:TAG BYTES: a busybox image with one random layer of
# its own (BYTES, so no other image shares it) that runs forever, pushed to
# the source registry.
push_busybox_image() {
  local layout rc=0
  layout="$(mktemp -d)"
  python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$layout" --ref "$1" --busybox \
    --random-layer "$2:$1-$RANDOM$RANDOM" --entrypoint "$RUN_FOREVER" >/dev/null &&
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$1" "docker://$SOURCE_REGISTRY/$1" || rc=$?
  rm -rf "$layout"
  return "$rc"
}

# registry_digest REPO REFERENCE: the digest the source registry serves for
# it (what a pod must report), "" when absent.
registry_digest() {
  curl -sfI -H "$MANIFEST_ACCEPT" "http://$SOURCE_REGISTRY/v2/$1/manifests/$2" | content_digest
}

# manifest_status REPO REFERENCE: the HTTP status of the source registry for it.
manifest_status() {
  curl -s -o /dev/null -w '%{http_code}' -I -H "$MANIFEST_ACCEPT" "http://$SOURCE_REGISTRY/v2/$1/manifests/$2"
}

# source_garbage_collect: the source registry deletes every blob no manifest
# references (after a manifest was deleted: the image's bytes are gone too).
source_garbage_collect() {
  docker-registry garbage-collect --delete-untagged "$CLUSTER_DIR/registries/source.yml" >/dev/null 2>&1
}

# source_copy FROM TO: copies FROM (repo:tag) to TO in the source registry,
# every platform of an index included, so a run has an image of its own to
# delete with the same digest.
source_copy() {
  skopeo copy --all --quiet --src-tls-verify=false --dest-tls-verify=false \
    "docker://$SOURCE_REGISTRY/$1" "docker://$SOURCE_REGISTRY/$2"
}

# backup_curl PATH ARGS...: a request to the backup registry's /v2/PATH, with
# its CA and credentials.
backup_curl() {
  local path="$1"; shift
  curl -sf --cacert "$CLUSTER_PKI/ca.crt" -u "$BACKUP_REGISTRY_USER:$BACKUP_REGISTRY_PASSWORD" "$@" \
    "https://$BACKUP_REGISTRY/v2/$path"
}
# backup_digest REPO REFERENCE: the digest the backup registry serves, "" when absent.
backup_digest() { backup_curl "$1/manifests/$2" -I -H "$MANIFEST_ACCEPT" | content_digest; }
# backup_tags REPO: the backup registry's tag list of REPO (JSON).
backup_tags() { backup_curl "$1/tags/list"; }

# A directory with the cluster CA alone, for skopeo's --cert-dir (skopeo reads
# every key pair in it).
BACKUP_CERT_DIR="$(mktemp -d)"
cp "$CLUSTER_PKI/ca.crt" "$BACKUP_CERT_DIR/ca.crt"
BACKUP_CREDS="$BACKUP_REGISTRY_USER:$BACKUP_REGISTRY_PASSWORD"
# Bash runs one EXIT trap: suites register their cleanups with on_exit
# instead of setting a trap of their own, which would drop the others.
E2E_CLEANUPS=("rm -rf '$BACKUP_CERT_DIR'")
# on_exit COMMAND: evaluates COMMAND when the suite exits, whatever its
# outcome; the last registered runs first.
on_exit() { E2E_CLEANUPS+=("$1"); }
run_cleanups() {
  local rc=$? i
  for ((i = ${#E2E_CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${E2E_CLEANUPS[$i]}" >/dev/null 2>&1 || true; done
  exit "$rc"
}
trap run_cleanups EXIT

# Registry passwords and tokens the suites use, one a line: after all suites,
# zz-secret-scan.sh checks that none of them shows up in a log, an Event or a
# status. The fixed backup registry password is always scanned for.
E2E_SECRETS_FILE="${E2E_SECRETS_FILE:-$CLUSTER_DIR/e2e-secrets}"
# record_secret VALUE: adds VALUE to the scanned secrets.
record_secret() {
  (umask 077 && printf '%s\n' "$1" >>"$E2E_SECRETS_FILE")
}

# grant_credentials, registry_secret, backup_registry_secrets,
# backup_registry_access and backup_target: a namespace's way to the backup
# registry, shared with hack/demo.sh.
source "$REPO_ROOT/hack/cluster/registry-access.sh"

# install_operator: builds Lifeboat's images from this checkout, loads them
# into the nodes and applies the CRDs and config/operator. Each step is a check.
install_operator() {
  check "Lifeboat images build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh"
  check "CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd"
  check "operator manifests apply" k apply -f "$REPO_ROOT/config/operator"
}
# restart_operator: makes the operator run the binaries the nodes hold now
# (the :dev tag does not change) and the Deployment's settings; checks it is
# available. The pod template carries the hash of the loaded binaries, so the
# operator restarts only when they changed (or when an apply or `set env`
# changed the Deployment): a restart per suite cost CI ~10 s each.
restart_operator() {
  local stamp="$CLUSTER_DIR/images/lifeboat-images.stamp" binaries
  binaries="$(sha256sum <"$stamp" | cut -c1-16)" || binaries="unknown-$RANDOM"
  k -n lifeboat-system patch deploy/lifeboat-operator --type merge \
    -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"lifeboat.dev/e2e-binaries\":\"$binaries\"}}}}}" >/dev/null
  check "the operator becomes available" k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s
}
# deploy_operator: the operator built from this checkout, running.
deploy_operator() { install_operator; restart_operator; }

# The operator's running pod (config/operator runs one replica) and its metrics.
# A pod being replaced by a rollout is still phase Running until it is gone:
# it is skipped (deletionTimestamp set), or a suite would watch a pod about to
# disappear and take its replacement for a restart.
operator_pod() {
  k -n lifeboat-system get pods -l app.kubernetes.io/component=operator \
    --field-selector=status.phase=Running -o json |
    jq -r '[.items[] | select(.metadata.deletionTimestamp == null)][0].metadata.name // ""'
}
operator_metrics() { k get --raw "/api/v1/namespaces/lifeboat-system/pods/$(operator_pod):18080/proxy/metrics"; }

# condition_of NS KIND/NAME TYPE: "STATUS REASON" of the object's condition TYPE.
condition_of() {
  k -n "$1" get "$2" -o jsonpath="{.status.conditions[?(@.type==\"$3\")].status} {.status.conditions[?(@.type==\"$3\")].reason}"
}
# condition_is NS KIND/NAME TYPE "STATUS REASON": passes when the condition
# reads so; otherwise prints what it reads and all the conditions.
condition_is() {
  local got; got="$(condition_of "$1" "$2" "$3")"
  [[ "$got" == "$4" ]] || { echo "$2 $3 is '$got', want '$4'"; k -n "$1" get "$2" -o jsonpath='{.status.conditions}'; return 1; }
}

# event_reasons NS NAME [TYPE]: the reasons of the events about object NAME
# (of TYPE Normal or Warning only, when given).
event_reasons() {
  k -n "$1" get events --field-selector "involvedObject.name=$2${3:+,type=$3}" -o jsonpath='{.items[*].reason}'
}

# pinned_deployment NAME NODE IMAGE [PULL-POLICY]: the YAML of a one-replica
# Deployment (label app=NAME, container "main") that runs IMAGE on NODE and,
# by default, pulls it on every start (Always), so a restarted pod asks the
# registry as after a node change.
pinned_deployment() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      nodeSelector: {kubernetes.io/hostname: $2}
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: "$3", imagePullPolicy: ${4:-Always}}
---
YAML
}
# idle_deployment NAME IMAGE [POD-SPEC-YAML]: the YAML of a Deployment scaled
# to zero (container "main"): only its template names IMAGE. POD-SPEC-YAML,
# indented by six spaces, adds to the pod spec.
idle_deployment() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: 0
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers: [{name: main, image: "$2"}]
${3:-}
---
YAML
}

# pinned_pod NAME NODE IMAGE: the YAML of a pod that runs IMAGE on NODE,
# pulling it (a fresh pull: the proof that a registry serves it).
pinned_pod() {
  cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeSelector: {kubernetes.io/hostname: $2}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: "$3", imagePullPolicy: Always}
YAML
}

# in_cluster_registry_image: lifeboat.local/e2e-registry:dev, the docker
# registry binary this machine's registries run, as an image loaded into every
# node (built once; skipped when each node holds it). For suites that need a
# registry running as a pod, reachable from this machine only through the API
# server (pod IPs are not routed to the host).
E2E_REGISTRY_IMAGE=lifeboat.local/e2e-registry:dev
in_cluster_registry_image() {
  local layout="$CLUSTER_DIR/images/e2e-registry-layout" node sock config missing=false
  for node in "${NODE_NAMES[@]}"; do
    sock="$(node_containerd_socket "$node")"
    ctr -a "$sock" -n k8s.io images ls -q "name==$E2E_REGISTRY_IMAGE" | grep -qx "$E2E_REGISTRY_IMAGE" || missing=true
  done
  $missing || return 0
  rm -rf "$layout"
  config="$(mktemp)"
  printf '%s\n' 'version: 0.1' 'storage: {filesystem: {rootdirectory: /var/lib/registry}, delete: {enabled: true}}' \
    'http: {addr: ":5000"}' >"$config"
  python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$layout" --ref "$E2E_REGISTRY_IMAGE" \
    --compression none --binary "$(command -v docker-registry):/usr/local/bin/registry" \
    --file "$config:/etc/registry.yml" \
    --entrypoint '["/usr/local/bin/registry","serve","/etc/registry.yml"]' --user 65532:65532 >/dev/null || return 1
  rm -f "$config"
  python3 "$REPO_ROOT/hack/images/oci-image.py" archive --layout "$layout" --out "$layout.tar" || return 1
  for node in "${NODE_NAMES[@]}"; do
    ctr -a "$(node_containerd_socket "$node")" -n k8s.io images import "$layout.tar" >/dev/null || return 1
  done
}
