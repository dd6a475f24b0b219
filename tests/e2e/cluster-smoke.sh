#!/usr/bin/env bash
# The local cluster works: a Deployment pulled from the source registry runs on
# one node and reports the registry's digest; a Job completes on the other.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="smoke-$RANDOM"
echo "cluster smoke test (namespace $ns)"

nodes_ready() {
  local ready
  ready="$(k get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)"
  [[ "$ready" -ge 2 ]] || { echo "only $ready nodes Ready"; return 1; }
}
check "two nodes are Ready" nodes_ready
check "nodes run Kubernetes $KUBERNETES_VERSION" bash -c \
  "[[ \"\$('$KUBECTL' get nodes -o jsonpath='{.items[*].status.nodeInfo.kubeletVersion}')\" == '$KUBERNETES_VERSION $KUBERNETES_VERSION' ]]"
check "the API server is $KUBERNETES_VERSION" bash -c \
  "'$KUBECTL' get --raw /version | grep -q '\"gitVersion\": \"$KUBERNETES_VERSION\"'"

k create namespace "$ns" >/dev/null
{ pinned_deployment web "${NODE_NAMES[0]}" "$SOURCE_REGISTRY/demo/web:1.0"; cat <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: batch}
spec:
  backoffLimit: 0
  template:
    spec:
      nodeSelector: {kubernetes.io/hostname: ${NODE_NAMES[1]}}
      restartPolicy: Never
      containers:
      - name: batch
        image: $SOURCE_REGISTRY/demo/batch:5
        command: ["/bin/sh", "-c", "test -f /data/random-batch-5.bin && echo batch-done"]
YAML
} | k apply -n "$ns" -f - >/dev/null

check "the Deployment becomes Available" k -n "$ns" wait --for=condition=Available deploy/web --timeout=90s
deployment_on_node() {
  local node
  node="$(k -n "$ns" get pods -l app=web -o jsonpath='{.items[0].spec.nodeName}')"
  [[ "$node" == "${NODE_NAMES[0]}" ]] || { echo "pod runs on '$node'"; return 1; }
}
check "the Deployment's pod runs on ${NODE_NAMES[0]}" deployment_on_node
image_id_is_registry_digest() {
  local image_id digest
  image_id="$(k -n "$ns" get pods -l app=web -o jsonpath='{.items[0].status.containerStatuses[0].imageID}')"
  digest="$(registry_digest demo/web 1.0)"
  [[ -n "$digest" && "$image_id" == "$SOURCE_REGISTRY/demo/web@$digest" ]] ||
    { echo "imageID '$image_id', registry digest '$digest'"; return 1; }
}
check "the pod's imageID is the registry digest" image_id_is_registry_digest
check "the Job completes" k -n "$ns" wait --for=condition=Complete job/batch --timeout=90s
job_on_node_with_output() {
  local pod node
  pod="$(k -n "$ns" get pods -l job-name=batch -o jsonpath='{.items[0].metadata.name}')"
  node="$(k -n "$ns" get pod "$pod" -o jsonpath='{.spec.nodeName}')"
  [[ "$node" == "${NODE_NAMES[1]}" ]] || { echo "job ran on '$node'"; return 1; }
  [[ "$(k -n "$ns" logs "$pod")" == "batch-done" ]] || { echo "unexpected job output"; return 1; }
}
check "the Job ran on ${NODE_NAMES[1]} and its logs come back through the kubelet" job_on_node_with_output
check "the namespace and everything in it is deleted" k delete namespace "$ns" --wait --timeout=90s

summary "cluster smoke"
