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
check "Lifeboat images build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh"
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
run_export() {
  local name="$1" node="$2"
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
        args: [export, --image, "$SOURCE_REGISTRY/$repo:$tag@$digest", --plain-http, "$SOURCE_REGISTRY",
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
