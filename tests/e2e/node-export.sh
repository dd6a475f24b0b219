#!/usr/bin/env bash
# node-exporter as a real Job on the local cluster: an image deleted from the
# source registry (manifest and, after garbage collection, its blobs) is pushed
# back from the containerd of the node that runs it, with the same digest, and
# a fresh pod on the other node pulls it again. The Job runs as Lifeboat's
# export Jobs will: no service-account token, read-only root filesystem, all
# capabilities dropped, only the containerd socket mounted.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="export-$RANDOM"
repo="demo/worker"
tag="0.9"
holder="${NODE_NAMES[0]}"
other="${NODE_NAMES[1]}"
echo "node-exporter on the cluster (namespace $ns)"
# The operator too: the last case asks it for a node-to-node import.
deploy_operator
k create namespace "$ns" >/dev/null
cleanup() { k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; }
on_exit cleanup

# Make sure the image is in the source registry (an earlier run may have deleted it).
"$REPO_ROOT/hack/images/push-test-images.sh" >/dev/null

pinned_deployment worker "$holder" "$SOURCE_REGISTRY/$repo:$tag" | k apply -n "$ns" -f - >/dev/null
check "the workload runs on $holder" k -n "$ns" wait --for=condition=Available deploy/worker --timeout=90s
image_id="$(k -n "$ns" get pods -l app=worker -o jsonpath='{.items[0].status.containerStatuses[0].imageID}')"
digest="${image_id##*@}"
# The digest, not the whole image ID: the kubelet names the node's first
# reference to that content, and an earlier suite (kubectl-plugin's archive
# round trip) may have put the same image on the node under another name.
source_digest="$(registry_digest "$repo" "$tag")"
check "the pod reports the digest the source registry serves" test -n "$digest" -a "$digest" == "$source_digest"

lose_image() {
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$repo/manifests/$digest" >/dev/null || return 1
  # Blobs go too: garbage collection removes everything no manifest references.
  source_garbage_collect || return 1
  [[ "$(manifest_status "$repo" "$digest")" == 404 ]] || { echo "manifest still served"; return 1; }
}
check "the image is deleted from the source registry and its blobs collected" lose_image

# run_export NAME NODE : runs node-exporter as a Job on NODE; prints nothing, leaves the Job.
# IMAGE_ARG (environment) replaces the --image argument (SRC[=DEST]).
run_export() {
  local name="$1" node="$2" image_arg="${IMAGE_ARG:-$SOURCE_REGISTRY/$repo:$tag@$digest}"
  k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 120
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      hostNetwork: true
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchFields: [{key: metadata.name, operator: In, values: [$node]}]
      containers:
      - name: export
        image: lifeboat.local/node-exporter:dev
        imagePullPolicy: Never
        args: [export, --image, "$image_arg", --plain-http, "$SOURCE_REGISTRY",
               --socket, /run/containerd/containerd.sock]
        securityContext:
          runAsUser: 0
          runAsNonRoot: false
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: containerd, mountPath: /run/containerd/containerd.sock, readOnly: true}
      volumes:
      - name: containerd
        hostPath: {path: $(node_containerd_socket "$node"), type: Socket}
YAML
}

run_export export-holder "$holder"
check "the export Job on $holder succeeds" k -n "$ns" wait --for=condition=Complete job/export-holder --timeout=120s
termination_message() {
  k -n "$ns" get pods -l "job-name=$1" -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}'
}
result_preserves_digest() {
  local message
  message="$(termination_message export-holder)"
  echo "$message" | jq -e --arg d "$digest" '[.. | strings] | index($d) != null' >/dev/null ||
    { echo "termination message does not name $digest: $message"; return 1; }
}
check "the termination message reports the restored digest" result_preserves_digest
check "the source registry serves the same digest again" test "$(manifest_status "$repo" "$digest")" == 200
check "and the tag again" test "$(registry_digest "$repo" "$tag")" == "$digest"
verify_blobs() {
  # Every blob the manifest names is back, byte for byte (skopeo re-hashes on copy).
  skopeo copy --quiet --src-tls-verify=false "docker://$SOURCE_REGISTRY/$repo@$digest" "oci:$(mktemp -d):x"
}
check "skopeo pulls every blob back, digests verified" verify_blobs

pinned_pod repull "$other" "$SOURCE_REGISTRY/$repo@$digest" | k apply -n "$ns" -f - >/dev/null
check "a pod on $other pulls the restored image" k -n "$ns" wait --for=condition=Ready pod/repull --timeout=90s

# --- a node that discarded its compressed layers ---------------------------------------
# $other's containerd runs with discard_unpacked_layers = true (hack/cluster/up.sh),
# as many managed clusters' do: an image pulled there is unpacked and its
# compressed layers go. An export from $other rebuilds them from the snapshots:
# the same files under a new digest, reported next to the original, pushed
# under a name of its own, and a pod bound to the new digest runs it. (An image
# of its own: one another suite imported into $other would keep its layers.)
discard_repo="e2e/discard-$RANDOM"
check "an image of its own is pushed" push_busybox_image "$discard_repo:1" 262144
discard_digest="$(registry_digest "$discard_repo" 1)"
pinned_pod discarding "$other" "$SOURCE_REGISTRY/$discard_repo:1" | k apply -n "$ns" -f - >/dev/null
check "a pod on $other runs it" k -n "$ns" wait --for=condition=Ready pod/discarding --timeout=90s
layers="$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
  "http://$SOURCE_REGISTRY/v2/$discard_repo/manifests/$discard_digest" | jq -r '.layers[].digest')"
# Its own layer (the last: the busybox one below it is shared with images
# pulled before, which keep it) goes at the garbage collection that follows
# the pull (node 2 collects after every deletion, hack/cluster/up.sh).
own_layer="$(tail -n1 <<<"$layers")"
layers_discarded() {
  [[ "$own_layer" == sha256:* ]] || { echo "no layers read"; return 1; }
  local held; held="$(ctr -a "$(node_containerd_socket "$other")" -n k8s.io content ls -q)" || return 1
  ! grep -qx "$own_layer" <<<"$held" || { echo "$other still holds $own_layer"; return 1; }
}
check "$other discarded the image's compressed layers after unpacking" eventually 20 layers_discarded
rebuilt_repo="$discard_repo-rebuilt"
IMAGE_ARG="$SOURCE_REGISTRY/$discard_repo:1@$discard_digest=$SOURCE_REGISTRY/$rebuilt_repo:1" run_export export-rebuilt "$other"
check "the export Job on $other succeeds" k -n "$ns" wait --for=condition=Complete job/export-rebuilt --timeout=120s
rebuilt_digest="$(termination_message export-rebuilt | jq -r 'first(.. | objects | select(.status? == "Rebuilt")) | .digest // empty')"
rebuilt_reported() {
  local message; message="$(termination_message export-rebuilt)"
  jq -e --arg d "$discard_digest" 'first(.. | objects | select(.status? == "Rebuilt")) |
    .originalDigest == $d and (.digest | startswith("sha256:")) and .digest != $d and .rebuiltLayers >= 1' <<<"$message" >/dev/null ||
    { echo "termination message: $message"; return 1; }
}
check "it reports Rebuilt with the node's original digest and the new one (never the original claimed)" rebuilt_reported
check "the registry serves the rebuilt image under its new digest" test "$(registry_digest "$rebuilt_repo" 1)" == "$rebuilt_digest"
pinned_pod rebuilt-runs "$holder" "$SOURCE_REGISTRY/$rebuilt_repo@$rebuilt_digest" | k apply -n "$ns" -f - >/dev/null
check "a pod bound to the rebuilt digest runs on $holder" k -n "$ns" wait --for=condition=Ready pod/rebuilt-runs --timeout=90s

# Node to node, no rebuild is passed off as the original: with the image gone
# from its source and no backup, an import of the original digest into
# $holder finds only $other's discarded layers, and is refused, saying so
# (a pod bound to that digest needs the backup; docs/restore.md).
check "the image is deleted from the source registry" \
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$discard_repo/manifests/$discard_digest"
refuse="refuse-rebuild-${discard_repo##*-}"
on_exit "k -n lifeboat-system delete imagerestore '$refuse' --ignore-not-found --wait=false"
k -n lifeboat-system apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: $refuse}
spec:
  images: ["$SOURCE_REGISTRY/$discard_repo:1@$discard_digest"]
  destination: {nodes: {names: [$holder]}}
YAML
refused_saying_why() {
  local status; status="$(k -n lifeboat-system get imagerestore "$refuse" -o json | jq -c .status)"
  jq -e '.conditions[] | select(.type == "Ready") | .status == "False"' <<<"$status" >/dev/null || return 1
  grep -q "$other hold(s) it with its compressed layers discarded" <<<"$status" || { echo "$status"; return 1; }
}
check "an import into $holder of the original digest is refused, naming $other's discarded layers" eventually 90 refused_saying_why
original_not_on_holder() {
  ! ctr -a "$(node_containerd_socket "$holder")" -n k8s.io images ls -q | grep -q "@$discard_digest\$"
}
check "... and nothing on $holder claims the original digest" original_not_on_holder

exits_image_not_here() {
  # A digest no node has ever held.
  local missing="sha256:$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)"
  digest="$missing" run_export export-missing "$other"
  eventually 90 bash -c "[[ \"\$('$KUBECTL' -n '$ns' get job export-missing -o jsonpath='{.status.failed}')\" == 1 ]]" ||
    { echo "job did not fail"; return 1; }
  local code
  code="$(k -n "$ns" get pods -l job-name=export-missing -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.exitCode}')"
  [[ "$code" == 3 ]] || { echo "exit code $code, want 3 (image not on this node)"; return 1; }
}
check "on a node without the image the Job fails with exit code 3" exits_image_not_here

summary "node-export"
