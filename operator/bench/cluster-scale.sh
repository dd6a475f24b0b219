#!/usr/bin/env bash
# Operator memory and CPU at cluster scale: PODS Pending pods running IMAGES
# distinct images, owned by ReplicaSets of Deployments (as real clusters
# run them, so owner chains are walked), spread over NAMESPACES namespaces,
# each with a tenant ImageBackupPolicy backing its images up.
#
#   operator/bench/cluster-scale.sh [--deploy] [PODS=20000] [IMAGES=2000] [NAMESPACES=4] [REPLICAS=20]
#
# --deploy: builds the release images (hack/images/lifeboat-images.sh
# --release) and runs them; the next e2e suite puts its own build back.
#
# Prints (docs/benchmarks.md, "Operator at scale"): the operator's VmRSS
# idle, with the first 10 % of the pods and with all of them (and the
# slope per pod between the two), time until every policy is Ready after
# the pods exist (their first full backup), then after a restart of the
# operator: the CPU seconds and time until every policy has answered an
# on-demand run, and VmRSS once settled; etcd's and kube-apiserver's RSS.
#
# How the pods are made without 20,000 kubectl calls or the ReplicaSet
# controller creating them at its 20 requests/s: each Deployment's
# ReplicaSet asks for REPLICAS pods, a ValidatingAdmissionPolicy denies the
# ReplicaSet controller's own creates in the bench namespaces, and this
# script creates the pods itself (parallel `kubectl create` of lists),
# labelled and owned exactly as the controller would make them, so the
# controller finds its count satisfied. `schedulerName` names no
# scheduler (and a node selector matches no node): they stay Pending.
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/lib.sh"
set -euo pipefail
deploy=false
[[ "${1:-}" == "--deploy" ]] && { deploy=true; shift; }
pods="${1:-20000}" images="${2:-2000}" namespaces="${3:-4}" replicas="${4:-20}"
deployments=$((pods / replicas))
((deployments > 0 && pods % replicas == 0)) || die "PODS must be a multiple of REPLICAS"
per_pod=$(((images + deployments - 1) / deployments)) # containers per pod
run="scale$RANDOM"
repo="bench/$run"
work="$(mktemp -d)"
label="lifeboat.dev/bench-scale"

cleanup() {
  # Waits (the namespace controller deletes the pods by collection), so the
  # next suite does not share the API server with 20,000 deletions.
  k delete namespace -l "$label=$run" --timeout=900s >/dev/null 2>&1 || true
  k delete validatingadmissionpolicybinding "$run" --ignore-not-found >/dev/null 2>&1 || true
  k delete validatingadmissionpolicy "$run" --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$work"
}
on_exit cleanup

operator_pid() { pgrep -f '^/usr/local/bin/lifeboat-operator' | tail -1; }
rss_mib() { awk '/^VmRSS:/{printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# CPU seconds (user + system) a process has used.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
component_rss() { rss_mib "$(pgrep -f "$1" | head -1)"; }
report() { printf '%-58s %s\n' "$1" "$2"; }

if $deploy; then
  "$REPO_ROOT/hack/images/lifeboat-images.sh" --release >&2
  k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd" >/dev/null
  k apply -f "$REPO_ROOT/config/operator" >/dev/null
fi
restart() {
  k -n lifeboat-system rollout restart deploy/lifeboat-operator >/dev/null
  k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=300s >/dev/null
}
restart
settle() { # waits (at most 90 s) until the operator's RSS moves by less than 1 MiB in 10 s
  local before after
  after="$(rss_mib "$(operator_pid)")"
  for _ in $(seq 1 9); do
    before="$after"; sleep 10; after="$(rss_mib "$(operator_pid)")"
    awk -v a="$before" -v b="$after" 'BEGIN { exit !((b - a) < 1 && (a - b) < 1) }' && break
  done
  echo "$after"
}
idle="$(settle)"
report "operator VmRSS idle (MiB)" "$idle"

# IMAGES tags of one small image: one manifest PUT each.
accept='application/vnd.oci.image.manifest.v1+json'
curl -sf -H "Accept: $accept" "http://$SOURCE_REGISTRY/v2/demo/cron/manifests/1" -o "$work/manifest"
media="$(jq -r .mediaType "$work/manifest")"
skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
  "docker://$SOURCE_REGISTRY/demo/cron:1" "docker://$SOURCE_REGISTRY/$repo:t0"
seq 1 $((images - 1)) | xargs -P 8 -I{} curl -sf -X PUT -H "Content-Type: $media" \
  --data-binary "@$work/manifest" -o /dev/null "http://$SOURCE_REGISTRY/v2/$repo/manifests/t{}"
log "pushed $images tags of $SOURCE_REGISTRY/$repo"

# The ReplicaSet controller may not create pods in the bench namespaces.
k apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: $run}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  validations:
  - expression: request.userInfo.username != 'system:serviceaccount:kube-system:replicaset-controller'
    message: the bench creates these pods itself
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: $run}
spec:
  policyName: $run
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {matchLabels: {$label: $run}}
YAML

for ((n = 0; n < namespaces; n++)); do
  ns="$run-$n"
  k create namespace "$ns" >/dev/null
  k label namespace "$ns" "$label=$run" >/dev/null
  backup_registry_access "$ns"
done
# The VAP binding takes effect within a second or two; deployments come after.
sleep 3

# Deployment d runs images t(d*per_pod) .. t(d*per_pod + per_pod - 1) (mod IMAGES).
python3 - "$work" "$run" "$deployments" "$namespaces" "$replicas" "$per_pod" "$images" \
  "$SOURCE_REGISTRY/$repo" <<'PY'
import json, sys
work, run, deployments, namespaces, replicas, per_pod, images, repo = sys.argv[1:]
deployments, namespaces, replicas, per_pod, images = map(int, (deployments, namespaces, replicas, per_pod, images))
lists = [[] for _ in range(namespaces)]
for d in range(deployments):
    containers = [{
        "name": f"c{c}", "image": f"{repo}:t{(d * per_pod + c) % images}",
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
        "ports": [{"containerPort": 8080, "name": "http"}],
    } for c in range(per_pod)]
    lists[d % namespaces].append({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"d{d}", "labels": {"app": f"d{d}", "tier": "bench"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": f"d{d}"}},
            "template": {
                "metadata": {"labels": {"app": f"d{d}", "tier": "bench"},
                             "annotations": {"note": "padding-to-look-like-a-real-pod-template"}},
                "spec": {"schedulerName": "lifeboat-bench-unscheduled",
                         "nodeSelector": {"lifeboat.dev/bench": "never-scheduled"},
                         "containers": containers},
            },
        },
    })
for n, items in enumerate(lists):
    with open(f"{work}/deployments-{n}.json", "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
PY
for ((n = 0; n < namespaces; n++)); do
  k -n "$run-$n" create -f "$work/deployments-$n.json" >/dev/null &
done
wait
log "created $deployments Deployments; waiting for their ReplicaSets"
rs_count() { k get rs -A -l tier=bench --no-headers 2>/dev/null | grep -c "^$run-" || true; }
all_replica_sets() { (($(rs_count) >= deployments)); }
eventually 600 all_replica_sets ||
  die "only $(rs_count) of $deployments ReplicaSets appeared"
k get rs -A -l tier=bench -o json | jq -c '[.items[] | select(.metadata.namespace | startswith("'"$run"'-"))]' >"$work/replica-sets.json"

# The pods, as the ReplicaSet controller would make them, in WAVES lists
# (the first wave is the first 10 % of the ReplicaSets).
python3 - "$work" "$replicas" <<'PY'
import json, sys
work, replicas = sys.argv[1], int(sys.argv[2])
sets = sorted(json.load(open(f"{work}/replica-sets.json")), key=lambda r: int(r["metadata"]["name"].split("-")[0][1:]))
first = max(1, len(sets) // 10)
def pods(rs):
    template = rs["spec"]["template"]
    for i in range(replicas):
        yield {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{rs['metadata']['name']}-{i:05d}",
                "namespace": rs["metadata"]["namespace"],
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"].get("annotations", {}),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": rs["metadata"]["name"], "uid": rs["metadata"]["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": template["spec"],
        }
for wave, chosen in (("first", sets[:first]), ("rest", sets[first:])):
    items = [p for rs in chosen for p in pods(rs)]
    chunks = 8
    for c in range(chunks):
        with open(f"{work}/pods-{wave}-{c}.json", "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": items[c::chunks]}, f)
    print(wave, len(items))
PY
create_wave() {
  local start=$SECONDS
  for file in "$work"/pods-"$1"-*.json; do k create -f "$file" >/dev/null & done
  wait
  log "created the $1 wave of pods in $((SECONDS - start)) s"
}
pod_count() { k get pods -A -l tier=bench --no-headers 2>/dev/null | grep -c "^$run-" || true; }

policies_ready() {
  local n
  for ((n = 0; n < namespaces; n++)); do
    [[ "$(condition_of "$run-$n" ibp/bench Ready)" == "True "* ]] || return 1
  done
}
started=$(date +%s)
for ((n = 0; n < namespaces; n++)); do
  k -n "$run-$n" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: bench}
spec:
  targets:
$(backup_target "bench/{policyNamespace}/{repository}")
YAML
done

create_wave first
first_pods="$(pod_count)"
eventually 900 policies_ready || die "the policies did not become Ready with $first_pods pods"
report "policies Ready with $first_pods pods (s after creating them)" "$(($(date +%s) - started))"
with_first="$(settle)"
report "operator VmRSS with $first_pods pods (MiB)" "$with_first"

started=$(date +%s)
create_wave rest
all_pods="$(pod_count)"
controller_denied="$(k get events -A --field-selector reason=FailedCreate --no-headers 2>/dev/null | grep -c "^$run-" || true)"
log "$all_pods pods exist ($controller_denied FailedCreate events of the ReplicaSet controller, as intended)"
eventually 1800 policies_ready || die "the policies did not become Ready with $all_pods pods"
report "policies Ready with $all_pods pods (s after the second wave)" "$(($(date +%s) - started))"
for ((n = 0; n < namespaces; n++)); do
  k -n "$run-$n" get ibp bench -o jsonpath='{.metadata.namespace}: {.status.summary}{"\n"}'
done
with_all="$(settle)"
report "operator VmRSS with $all_pods pods (MiB)" "$with_all"
report "slope (KiB per pod, $first_pods -> $all_pods pods)" \
  "$(awk -v a="$with_first" -v b="$with_all" -v p="$first_pods" -v q="$all_pods" 'BEGIN { printf "%.2f", (b - a) * 1024 / (q - p) }')"

# A restart: every policy answers an on-demand run asked for before the new
# process starts (so its first reconcile is a full one).
stamp="restart-$(date +%s)"
for ((n = 0; n < namespaces; n++)); do
  k -n "$run-$n" annotate ibp bench "lifeboat.dev/requestedAt=$stamp" --overwrite >/dev/null
done
old_pid="$(operator_pid)"
k -n lifeboat-system delete pod "$(operator_pod)" --wait=false >/dev/null
eventually 300 bash -c "pid=\$(pgrep -f '^/usr/local/bin/lifeboat-operator' | tail -1); [[ -n \$pid && \$pid != $old_pid ]]" ||
  die "no new operator process"
new_pid="$(operator_pid)"
started=$(date +%s.%N)
answered() {
  local n
  for ((n = 0; n < namespaces; n++)); do
    [[ "$(k -n "$run-$n" get ibp bench -o jsonpath='{.status.lastHandledReconcileAt}')" == "$stamp" ]] || return 1
  done
  policies_ready
}
eventually 900 answered || die "the policies did not answer the on-demand run after the restart"
report "after a restart: every policy answered a full run (s)" \
  "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
report "after a restart: operator CPU until then (s)" "$(cpu_seconds "$new_pid")"
restarted="$(settle)"
report "after a restart: operator VmRSS settled, $all_pods pods (MiB)" "$restarted"
report "after a restart: operator CPU once settled (s)" "$(cpu_seconds "$new_pid")"
report "kube-apiserver VmRSS (MiB)" "$(component_rss '/kube-apiserver ')"
report "etcd VmRSS (MiB)" "$(component_rss '/etcd ')"
