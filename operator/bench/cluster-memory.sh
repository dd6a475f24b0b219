#!/usr/bin/env bash
# Operator memory with many pods and images: creates PODS pods using IMAGES
# distinct image tags in one namespace (with a node selector no node matches,
# so they stay Pending: the API server holds them, the operator caches them),
# with a policy that backs them all up, and prints the operator's resident
# memory before and after, and how long the first full backup took.
#
#   operator/bench/cluster-memory.sh [PODS] [IMAGES]
#
# Needs the local cluster with the operator deployed (tests/e2e/operator-backup.sh
# deploys it).
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/lib.sh"
set -euo pipefail
pods="${1:-2000}" images="${2:-300}"
ns="ibp-bench-$RANDOM"
repo="bench/app-$RANDOM"

operator_rss_kib() {
  local pid
  for pid in $(pgrep -f '^/usr/local/bin/lifeboat-operator' || true); do
    awk '/^VmRSS:/{print $2}' "/proc/$pid/status"
  done | sort -n | tail -1
}

echo "baseline operator RSS: $(operator_rss_kib) KiB"
# IMAGES tags of one small image: one manifest PUT each.
accept='application/vnd.oci.image.manifest.v1+json'
manifest="$(mktemp)"
curl -sf -H "Accept: $accept" "http://$SOURCE_REGISTRY/v2/demo/cron/manifests/1" -o "$manifest"
media="$(jq -r .mediaType "$manifest")"
skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
  "docker://$SOURCE_REGISTRY/demo/cron:1" "docker://$SOURCE_REGISTRY/$repo:t0"
for ((i = 1; i < images; i++)); do
  curl -sf -X PUT -H "Content-Type: $media" --data-binary "@$manifest" \
    "http://$SOURCE_REGISTRY/v2/$repo/manifests/t$i" >/dev/null
done
echo "pushed $images tags of $SOURCE_REGISTRY/$repo"

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
list="$(mktemp)"
{
  echo '{"apiVersion":"v1","kind":"List","items":['
  for ((i = 0; i < pods; i++)); do
    ((i > 0)) && echo ','
    printf '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p%d","labels":{"app":"bench","shard":"s%d"},"annotations":{"note":"%s"}},"spec":{"nodeSelector":{"lifeboat.dev/bench":"never-scheduled"},"containers":[{"name":"c","image":"%s/%s:t%d","env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],"resources":{"requests":{"cpu":"1m"}}}]}}' \
      "$i" "$((i % 10))" "padding-to-look-like-a-real-pod-spec" "$SOURCE_REGISTRY" "$repo" "$((i % images))"
  done
  echo ']}'
} >"$list"
start=$SECONDS
k -n "$ns" create -f "$list" >/dev/null
echo "created $pods pods in $((SECONDS - start)) s"
started=$(date +%s)
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: bench}
spec:
  targets:
  - name: backup
    registry: $BACKUP_REGISTRY
    repositoryTemplate: "bench/{policyNamespace}/{repository}"
    secretRef: {name: backup-credentials}
    caBundle: {configMapKeyRef: {name: backup-ca, key: ca.crt}}
YAML
k -n "$ns" wait --for=condition=Ready ibp/bench --timeout=900s >/dev/null
echo "policy Ready (all $images images in the backup) after $(( $(date +%s) - started )) s"
k -n "$ns" get ibp bench -o jsonpath='{.status.summary}{"\n"}'
sleep 20
echo "operator RSS with $pods pods, $images images: $(operator_rss_kib) KiB"
# Never-scheduled pods go at once; force it anyway in case one got a node.
k -n "$ns" delete pods --all --grace-period=0 --force >/dev/null 2>&1
k delete namespace "$ns" --wait=false >/dev/null
rm -f "$list" "$manifest"
