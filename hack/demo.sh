#!/usr/bin/env bash
# The main job: a local Kubernetes cluster (built from source) with Lifeboat
# installed by its Helm chart, protecting real workloads, then a disaster in
# the source registry and Lifeboat bringing the images back: one from the
# backup registry (automatically), one straight out of a node's containerd.
#
#   hack/demo.sh [--keep-cluster]
#
# --keep-cluster leaves the cluster (and Lifeboat) running for exploring:
#   export KUBECONFIG=/var/lib/lifeboat-cluster/admin.kubeconfig
#   hack/cluster/down.sh --purge      # when done
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

keep_cluster=false
case "${1:-}" in
  --keep-cluster) keep_cluster=true ;;
  "") ;;
  *) die "usage: hack/demo.sh [--keep-cluster]" ;;
esac

demo_start=$SECONDS
banner() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
elapsed() { echo "$((SECONDS - $1)) s"; }

banner "1/8 tools: Debian packages, Kubernetes and Helm built from source (cached after the first run)"
hack/install-deps.sh
hack/build-kubernetes.sh
hack/build-helm.sh
source hack/cluster/env.sh
source hack/cluster/registry-access.sh
HELM="$LIFEBOAT_BIN_CACHE/helm-$HELM_VERSION/helm"
export KUBECONFIG="$KUBECONFIG_ADMIN"
k() { "$KUBECTL" "$@"; }

banner "2/8 the cluster: etcd, control plane, two nodes with containerd and kubelet, two registries"
cluster_started_here=false
if ! k get --raw /readyz >/dev/null 2>&1; then
  hack/cluster/down.sh --purge >/dev/null 2>&1 || true
  hack/cluster/up.sh
  cluster_started_here=true
fi
finish() {
  local rc=$?
  if $cluster_started_here && ! $keep_cluster; then
    log "stopping the cluster (hack/demo.sh --keep-cluster keeps it)"
    hack/cluster/down.sh --purge >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap finish EXIT
k get nodes -o wide

# Only one thing at a time deploys Lifeboat into the cluster (the e2e suites
# take the same lock).
exec {lock_fd}>/var/lock/lifeboat-e2e.lock
flock "$lock_fd"

banner "3/8 images: the demo's workloads in the source registry ($SOURCE_REGISTRY), Lifeboat's own images in the nodes"
hack/images/push-test-images.sh >/dev/null
# The demo loses images on purpose: it works on copies of its own.
declare -A demo_images=([shop/web:1.0]=demo/web:1.0 [shop/api:2.3]=demo/api:2.3 [legacy/worker:0.9]=demo/worker:0.9)
for image in "${!demo_images[@]}"; do
  skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
    "docker://$SOURCE_REGISTRY/${demo_images[$image]}" "docker://$SOURCE_REGISTRY/$image"
done
hack/images/lifeboat-images.sh

banner "4/8 Lifeboat: installed with its Helm chart (helm/lifeboat, local values hack/values-local.yaml)"
# The export Jobs read the nodes' containerd sockets, so the operator's
# namespace allows privileged pods (docs/security.md); Helm does not create it.
k create namespace lifeboat-system --dry-run=client -o yaml | k apply -f - >/dev/null
k label --overwrite namespace lifeboat-system pod-security.kubernetes.io/enforce=privileged \
  pod-security.kubernetes.io/audit=privileged pod-security.kubernetes.io/warn=privileged >/dev/null
# --take-ownership: the e2e suites may have applied the same objects from
# config/operator (the chart rendered) before; Helm adopts them.
# The local image tag is always :dev; an annotation with the binaries' hash
# rolls the operator out when they changed (a re-run after a rebuild).
build="$(cat "$CLUSTER_DIR/images/lifeboat-images.stamp" | sha256sum | cut -c1-16)"
"$HELM" upgrade --install lifeboat helm/lifeboat --namespace lifeboat-system --take-ownership \
  -f hack/values-local.yaml --set-string "podAnnotations.lifeboat\.dev/build=$build" --wait --timeout 180s
k -n lifeboat-system get deploy,pods -o wide

banner "5/8 workloads: namespace shop (protected by a policy) and namespace legacy (not protected)"
# A previous run kept with --keep-cluster left its objects behind: start clean.
k -n lifeboat-system delete imagebackuppolicy shop --ignore-not-found --wait=true >/dev/null
k -n lifeboat-system delete imagerestore -l lifeboat.dev/policy=shop --ignore-not-found --wait=true >/dev/null
k -n lifeboat-system delete imagerestore legacy-worker --ignore-not-found --wait=true >/dev/null
k delete namespace shop legacy --ignore-not-found --wait=true --timeout=120s >/dev/null
for ns in shop legacy; do k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null; done
deployment() { # deployment NS NAME IMAGE [NODE]
  local pin=""
  [[ -n "${4:-}" ]] && pin="nodeSelector: {kubernetes.io/hostname: $4}"
  k apply -n "$1" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $2}
spec:
  replicas: 1
  selector: {matchLabels: {app: $2}}
  template:
    metadata: {labels: {app: $2}}
    spec:
      terminationGracePeriodSeconds: 1
      $pin
      containers:
      - name: $2
        image: $SOURCE_REGISTRY/$3
        # Always: a restarted pod really asks the registry, as on a fresh node.
        imagePullPolicy: Always
        command: [sh, -c, 'echo $2 running; while true; do sleep 3600; done']
YAML
}
deployment shop web shop/web:1.0
deployment shop api shop/api:2.3
# On the first node: the second one discards compressed layers once they
# are unpacked (as many managed clusters' nodes do), so what it holds could
# only come back rebuilt under a new digest (docs/restore.md); this demo
# shows the digest-exact salvage.
deployment legacy worker legacy/worker:0.9 "${NODE_NAMES[0]}"
for d in shop/web shop/api legacy/worker; do
  k -n "${d%/*}" rollout status "deploy/${d#*/}" --timeout=120s >/dev/null
done
k get pods -n shop -o wide; k get pods -n legacy -o wide

banner "6/8 protection: an ImageBackupPolicy backs up shop's images into the backup registry ($BACKUP_REGISTRY)"
# The operator's own namespace: it reads its Secrets without a RoleBinding.
backup_registry_secrets lifeboat-system
k apply -n lifeboat-system -f - <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: shop}
spec:
  selector:
    includedNamespaces: [shop]
  targets:
$(backup_target "" backup "$BACKUP_REGISTRY/lifeboat")
  continuous: true
  schedule: "0 3 * * *"
  timeZone: Europe/Berlin
  restore:
    automatic: true
YAML
backup_start=$SECONDS
k -n lifeboat-system wait --for=condition=Ready ibp/shop --timeout=180s
k -n lifeboat-system wait --for=condition=LastBackupSucceeded ibp/shop --timeout=180s
log "shop's images are backed up ($(elapsed "$backup_start"))"
k get imagebackuppolicies,imagerestores -A

banner "7/8 disaster: shop/api:2.3 and legacy/worker:0.9 are deleted from the source registry and garbage-collected"
digest_of() {
  curl -sfI -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$SOURCE_REGISTRY/v2/$1/manifests/$2" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'
}
api_digest="$(digest_of shop/api 2.3)"
worker_digest="$(digest_of legacy/worker 0.9)"
for lost in "shop/api@$api_digest" "legacy/worker@$worker_digest"; do
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/${lost%@*}/manifests/${lost#*@}" >/dev/null
done
docker-registry garbage-collect --delete-untagged "$CLUSTER_DIR/registries/source.yml" >/dev/null 2>&1
log "source registry now answers $(curl -s -o /dev/null -w '%{http_code}' -I "http://$SOURCE_REGISTRY/v2/shop/api/manifests/$api_digest") for shop/api@$api_digest"
disaster=$SECONDS
# The pods restart (a node reboot, an eviction, a rollout...) and cannot pull.
k -n shop delete pod -l app=api --wait=false >/dev/null
k -n legacy delete pod -l app=worker --wait=false >/dev/null

banner "8/8 recovery"
log "Lifeboat sees the api pod failing to pull, checks the source registry, reports the image missing and, as the policy asks, restores it from the backup"
k -n lifeboat-system wait --for=condition=ImagesAvailable=False ibp/shop --timeout=180s || true
k -n lifeboat-system get ibp shop -o jsonpath='{range .status.missingImages[*]}missing: {.reference}, backed up in: {.backupTargets[*]}, on nodes: {.nodes[*]}{"\n"}{end}' || true
until restore="$(k -n lifeboat-system get ibp shop -o jsonpath='{.status.automaticRestore.name}')" && [[ -n "$restore" ]]; do
  (( SECONDS - disaster < 180 )) || die "no automatic ImageRestore after 180 s"
  sleep 2
done
k get imagebackuppolicies,imagerestores -A
k -n lifeboat-system wait --for=condition=Ready "imagerestore/$restore" --timeout=300s
k -n shop rollout status deploy/api --timeout=180s
api_recovered="$(elapsed "$disaster")"
# The restored image must be the very one that was lost: same digest, under its tag again.
[[ "$(digest_of shop/api 2.3)" == "$api_digest" ]] || die "shop/api:2.3 came back with another digest"
log "shop/api is back, same digest $api_digest ($api_recovered after the disaster)"

log "legacy/worker had no backup: an ImageRestore exports it from the node that still holds it"
k apply -n lifeboat-system -f - <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: legacy-worker}
spec:
  images: ["$SOURCE_REGISTRY/legacy/worker:0.9@$worker_digest"]
  source: {type: NodeCache}
YAML
k -n lifeboat-system wait --for=condition=Ready imagerestore/legacy-worker --timeout=300s
k -n legacy rollout status deploy/worker --timeout=180s
worker_recovered="$(elapsed "$disaster")"
[[ "$(digest_of legacy/worker 0.9)" == "$worker_digest" ]] || die "legacy/worker:0.9 came back with another digest"
k get imagebackuppolicies,imagerestores -A
k -n lifeboat-system get imagerestore legacy-worker \
  -o jsonpath='{range .status.images[*]}{.reference}: {.state} from {.source.kind} {.source.name}, digest {.restoredDigest} (preserved: {.digestPreserved}){"\n"}{end}'

banner "summary"
cat <<EOF
  cluster:          $(k get nodes --no-headers | wc -l) nodes, Kubernetes $("$KUBECTL" version -o json | jq -r .serverVersion.gitVersion)
  Lifeboat:         installed with Helm (release lifeboat in lifeboat-system)
  backup:           shop's images copied digest-exact to $BACKUP_REGISTRY
  disaster:         shop/api:2.3 and legacy/worker:0.9 deleted from $SOURCE_REGISTRY and garbage-collected
  shop/api:         restored automatically from the backup registry, pod running again $api_recovered after the disaster
  legacy/worker:    restored from a node's containerd by an export Job, pod running again $worker_recovered after the disaster
  digests:          shop/api $api_digest, legacy/worker $worker_digest (both verified unchanged in $SOURCE_REGISTRY)
  total demo time:  $(elapsed "$demo_start")
EOF
if $keep_cluster || ! $cluster_started_here; then
  echo "  the cluster keeps running: export KUBECONFIG=$KUBECONFIG_ADMIN; hack/cluster/down.sh --purge stops it"
fi
