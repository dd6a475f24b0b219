#!/usr/bin/env bash
# Time from an image's deletion in its source registry to a successful
# re-pull, for a 100 MiB image, restored from the backup registry and from
# the containerd of the node that holds it. On the local cluster, with the
# operator deployed as tests/e2e/operator-restore.sh deploys it.
#
#   hack/bench-restore.sh [--deploy [--release]] [rounds] [modes]
#
# --deploy builds and loads Lifeboat's images and (re)starts the operator
# first; with --release, release builds (what docs/benchmarks.md reports).
# modes: "backup node" (default), or one of them. Prints one Markdown table
# row per mode and round.
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"

deploy=false
release=false
[[ "${1:-}" == "--deploy" ]] && { deploy=true; shift; }
[[ "${1:-}" == "--release" ]] && { release=true; shift; }
rounds="${1:-1}"
modes="${2:-backup node}"
ns="bench-restore-$RANDOM"
base="bench/restore-$RANDOM"
holder="${NODE_NAMES[0]}"
other="${NODE_NAMES[1]}"
work="$(mktemp -d)"
on_exit 'k delete namespace "$ns" --wait=false --ignore-not-found; rm -rf "$work"'

# The checks' lines go to stderr: stdout is the table.
if $deploy && $release; then
  {
    check "Lifeboat images (release) build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh" --release
    check "CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd"
    check "operator manifests apply" k apply -f "$REPO_ROOT/config/operator"
    restart_operator
  } >&2
elif $deploy; then
  deploy_operator >&2
fi

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "| source | round | deletion → restore Ready (s) | deletion → re-pulled on the other node (s) | restored digest = original |"
echo "|---|---:|---:|---:|---|"
for round in $(seq 1 "$rounds"); do
  for mode in $modes; do
    name="$mode-$round"
    repo="$base/$name"
    python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$work/layout" --ref "$repo:1" --busybox \
      --random-layer "104857600:$repo-$RANDOM$RANDOM" --entrypoint "$RUN_FOREVER" >/dev/null
    skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:$repo:1" "docker://$SOURCE_REGISTRY/$repo:1"
    digest="$(registry_digest "$repo" 1)"
    pinned_deployment "$name" "$holder" "$SOURCE_REGISTRY/$repo:1" | k apply -n "$ns" -f - >/dev/null
    k -n "$ns" rollout status "deploy/$name" --timeout=180s >/dev/null
    source_yaml="source: {type: NodeCache}"
    if [[ "$mode" == backup ]]; then
      k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: $name}
spec:
  selector: {images: {include: ["**/${repo#bench/}"]}}
  targets:
  - name: backup
    registry: $BACKUP_REGISTRY
    repositoryTemplate: "bench/{policyNamespace}/{repository}"
    secretRef: {name: backup-credentials}
    caBundle: {configMapKeyRef: {name: backup-ca, key: ca.crt}}
YAML
      k -n "$ns" wait --for=condition=Ready "ibp/$name" --timeout=300s >/dev/null
      source_yaml="source: {type: BackupRegistry, backup: {policyName: $name}}"
    fi
    # The loss: manifest, tag and (garbage collection) blobs.
    curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$repo/manifests/$digest" >/dev/null
    docker-registry garbage-collect --delete-untagged "$CLUSTER_DIR/registries/source.yml" >/dev/null 2>&1
    t0="$(now)"
    k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: $name}
spec:
  images: ["$SOURCE_REGISTRY/$repo:1@$digest"]
  $source_yaml
YAML
    k -n "$ns" wait --for=condition=Ready "imagerestore/$name" --timeout=600s >/dev/null
    t1="$(now)"
    pinned_pod "repull-$name" "$other" "$SOURCE_REGISTRY/$repo@$digest" | k apply -n "$ns" -f - >/dev/null
    k -n "$ns" wait --for=condition=Ready "pod/repull-$name" --timeout=600s >/dev/null
    t2="$(now)"
    restored="$(k -n "$ns" get imagerestore "$name" -o jsonpath='{.status.images[0].restoredDigest}')"
    same=no; [[ "$restored" == "$digest" ]] && same=yes
    label="backup registry"; [[ "$mode" == node ]] && label="node cache ($holder)"
    echo "| $label | $round | $(since "$t0" "$t1") | $(since "$t0" "$t2") | $same |"
  done
done
