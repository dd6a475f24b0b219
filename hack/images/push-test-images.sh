#!/usr/bin/env bash
# Builds Lifeboat's test images and pushes them to the local cluster's source
# registry. Runnable images are busybox-static plus random, incompressible
# layers; several share base layers; one is a multi-platform index.
#
#   push-test-images.sh [--big]    (--big adds a 100 MiB image for restore timings)
#
# Prints nothing new when the registry already holds every image.
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/env.sh"

layout="$CLUSTER_DIR/images/test-layout"
oci() { python3 "$REPO_ROOT/hack/images/oci-image.py" "$@" >/dev/null; }

# name:tag  random-layer bytes:seed ...   (all on top of the busybox base layer
# and a shared 2 MiB "runtime" layer)
images=(
  "demo/web:1.0 1048576:web-1.0"
  "demo/web:1.1 1048576:web-1.1"
  "demo/api:2.3 2097152:api-2.3"
  "demo/worker:0.9 524288:worker-0.9"
  "demo/batch:5 262144:batch-5"
  "demo/cron:1 131072:cron-1"
  "demo/sidecar:3 65536:sidecar-3"
  "demo/init:1 32768:init-1"
)
[[ "${1:-}" == "--big" ]] && images+=("demo/big:100m 104857600:big-100m")

push() {
  local ref="$1" dest="$2"; shift 2
  skopeo copy --quiet --dest-tls-verify=false "$@" "oci:$layout:$ref" "docker://$SOURCE_REGISTRY/$dest"
}
exists() { exists_at "${1%%:*}" "${1##*:}"; }
# exists_at REPO REFERENCE (a tag or a digest)
exists_at() {
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' \
    "http://$SOURCE_REGISTRY/v2/$1/manifests/$2"
}

for entry in "${images[@]}"; do
  read -r name layers <<<"$entry"
  exists "$name" && continue
  args=()
  for layer in $layers; do args+=(--random-layer "$layer"); done
  oci image --layout "$layout" --ref "$name" --busybox --random-layer 2097152:shared-runtime "${args[@]}" \
    --entrypoint "$RUN_FOREVER"
  push "$name" "$name"
  log "pushed $SOURCE_REGISTRY/$name"
done

# exists_whole REPO:TAG: the index and every platform manifest it names. The
# source registry's garbage collection (`--delete-untagged`, which e2e suites
# run) deletes an index's platform manifests, which no tag names.
exists_whole() {
  local repo="${1%%:*}" index digest
  index="$(curl -sf -H 'Accept: application/vnd.oci.image.index.v1+json' \
    "http://$SOURCE_REGISTRY/v2/$repo/manifests/${1##*:}")" || return 1
  for digest in $(jq -r '.manifests[].digest' <<<"$index"); do
    exists_at "$repo" "$digest" || return 1
  done
}

# A two-platform index: the amd64 image runs here, the arm64 one only exists.
if ! exists_whole demo/multiarch:1.0; then
  oci image --layout "$layout" --ref multiarch-amd64 --platform linux/amd64 --busybox \
    --random-layer 2097152:shared-runtime --random-layer 262144:multiarch-amd64 --entrypoint "$RUN_FOREVER"
  oci image --layout "$layout" --ref multiarch-arm64 --platform linux/arm64 --busybox \
    --random-layer 2097152:shared-runtime --random-layer 262144:multiarch-arm64 --entrypoint "$RUN_FOREVER"
  oci index --layout "$layout" --ref demo/multiarch:1.0 --manifests multiarch-amd64,multiarch-arm64
  push demo/multiarch:1.0 demo/multiarch:1.0 --all
  log "pushed $SOURCE_REGISTRY/demo/multiarch:1.0 (index: linux/amd64, linux/arm64)"
fi
