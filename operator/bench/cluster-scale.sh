#!/usr/bin/env bash
# Operator memory and CPU at cluster scale: PODS Pending pods running IMAGES
# distinct images, owned by ReplicaSets of Deployments (as real clusters
# run them, so owner chains are walked), spread over NAMESPACES namespaces,
# each with a tenant ImageBackupPolicy backing its images up.
#
#   operator/bench/cluster-scale.sh [--deploy] [--compare BINARY] [PODS=20000] [IMAGES=2000] [NAMESPACES=4] [REPLICAS=20]
#
# --deploy: builds the release images (hack/images/lifeboat-images.sh
# --release) and runs them; the next e2e suite puts its own build back.
# --compare BINARY: another lifeboat-operator binary (a release build of
# an earlier commit) measured the same way in the same run, on the same
# pods: each measurement restarts the operator into one binary, then the
# other.
#
# Prints (docs/benchmarks.md, "Operator at scale"), per binary: VmRSS idle,
# with the first 10 % of the pods and with all of them (each after a restart
# and a full run of every policy, settled) and the slope per pod between the
# two; after the restart, the time from the process's start until every
# policy answered an on-demand run and the CPU seconds it used until then.
# Also the first full backup's time (this build) and etcd's and
# kube-apiserver's RSS.
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
deploy=false compare=""
[[ "${1:-}" == "--deploy" ]] && { deploy=true; shift; }
[[ "${1:-}" == "--compare" ]] && { compare="$2"; shift 2; }
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

operator_pid() { pgrep -n -f '^/usr/local/bin/lifeboat-operator'; }
# Seconds since the process started.
process_age() {
  awk -v hz="$(getconf CLK_TCK)" -v up="$(cut -d' ' -f1 /proc/uptime)" \
    '{ printf "%.1f", up - $22 / hz }' "/proc/$1/stat"
}
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
images_to_measure=(lifeboat.local/lifeboat-operator:dev)
if [[ -n "$compare" ]]; then
  [[ -x "$compare" ]] || die "$compare is not an executable"
  # Packed and loaded as lifeboat-images.sh does, under another tag.
  layout="$work/compare-layout"
  python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$layout" \
    --ref lifeboat.local/lifeboat-operator:compare --compression none \
    --binary "$compare:/usr/local/bin/lifeboat-operator" \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --entrypoint '["/usr/local/bin/lifeboat-operator"]' --user 65532:65532 >/dev/null
  python3 "$REPO_ROOT/hack/images/oci-image.py" archive --layout "$layout" --out "$layout.tar"
  for node in "${NODE_NAMES[@]}"; do
    ctr -a "$(node_containerd_socket "$node")" -n k8s.io images import "$layout.tar" >/dev/null
  done
  images_to_measure=(lifeboat.local/lifeboat-operator:compare lifeboat.local/lifeboat-operator:dev)
fi
on_exit "k -n lifeboat-system set image deploy/lifeboat-operator operator=lifeboat.local/lifeboat-operator:dev; k -n lifeboat-system scale deploy/lifeboat-operator --replicas=1"

# stop_operator: no operator process left and no leader Lease, so the next
# process leads at once (a restart's lease wait, up to 15 s, is not the
# operator's work and is not counted).
stop_operator() {
  k -n lifeboat-system scale deploy/lifeboat-operator --replicas=0 >/dev/null
  eventually 120 bash -c "! pgrep -f '^/usr/local/bin/lifeboat-operator' >/dev/null" ||
    die "the operator process did not exit"
  k -n lifeboat-system delete lease lifeboat-operator --ignore-not-found >/dev/null
}
# start_operator IMAGE: the operator running IMAGE, available.
start_operator() {
  k -n lifeboat-system set image deploy/lifeboat-operator "operator=$1" >/dev/null
  k -n lifeboat-system scale deploy/lifeboat-operator --replicas=1 >/dev/null
  k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=300s >/dev/null
}
# run_operator IMAGE: the operator restarted into IMAGE, available.
run_operator() { stop_operator; start_operator "$1"; }
settle() { # waits (at most 90 s) until the operator's RSS moves by less than 1 MiB in 10 s
  local before after
  after="$(rss_mib "$(operator_pid)")"
  for _ in $(seq 1 9); do
    before="$after"; sleep 10; after="$(rss_mib "$(operator_pid)")"
    awk -v a="$before" -v b="$after" 'BEGIN { exit !((b - a) < 1 && (a - b) < 1) }' && break
  done
  echo "$after"
}
declare -A figures
for image in "${images_to_measure[@]}"; do
  run_operator "$image"
  figures[$image,idle]="$(settle)"
done

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
answered() { # STAMP: every policy answered the on-demand run STAMP and is Ready
  local n
  for ((n = 0; n < namespaces; n++)); do
    [[ "$(k -n "$run-$n" get ibp bench -o jsonpath='{.status.lastHandledReconcileAt}')" == "$1" ]] || return 1
  done
  policies_ready
}
# measure WHAT: for each binary, a restart into it with an on-demand run
# asked for while it is stopped (so its first reconcile of each policy is a full one):
# time from the process's start until every policy answered, CPU used until
# then, VmRSS once settled.
measure() {
  local image stamp pid
  for image in "${images_to_measure[@]}"; do
    stamp="$1-$image-$(date +%s)"
    # Asked while no operator runs: the one stopped cannot answer it first.
    stop_operator
    for ((n = 0; n < namespaces; n++)); do
      k -n "$run-$n" annotate ibp bench "lifeboat.dev/requestedAt=$stamp" --overwrite >/dev/null
    done
    start_operator "$image"
    # The rollout can report the pod available before its process shows
    # up here (seen on 2026-12-05: an empty pid ended the run).
    pid=""
    for _ in $(seq 1 120); do
      pid="$(operator_pid || true)"
      [[ -n "$pid" ]] && break
      sleep 0.5
    done
    [[ -n "$pid" ]] || die "$image: no operator process after its rollout"
    eventually 900 answered "$stamp" || die "$image: the policies did not answer $stamp"
    figures[$image,$1,answered]="$(process_age "$pid")"
    figures[$image,$1,cpu]="$(cpu_seconds "$pid")"
    figures[$image,$1,rss]="$(settle)"
    log "$image with $1 pods: answered after ${figures[$image,$1,answered]} s, CPU ${figures[$image,$1,cpu]} s, VmRSS ${figures[$image,$1,rss]} MiB"
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
first_backup=$(($(date +%s) - started))
measure "$first_pods"

started=$(date +%s)
create_wave rest
all_pods="$(pod_count)"
controller_denied="$(k get events -A --field-selector reason=FailedCreate --no-headers 2>/dev/null | grep -c "^$run-" || true)"
log "$all_pods pods exist ($controller_denied FailedCreate events of the ReplicaSet controller, as intended)"
eventually 1800 policies_ready || die "the policies did not become Ready with $all_pods pods"
second_backup=$(($(date +%s) - started))
for ((n = 0; n < namespaces; n++)); do
  k -n "$run-$n" get ibp bench -o jsonpath='{.metadata.namespace}: {.status.summary}{"\n"}'
done
measure "$all_pods"

echo
echo "| what | ${images_to_measure[*]} |"
report_row() { # LABEL KEY
  local row="| $1 |" image
  for image in "${images_to_measure[@]}"; do row+=" ${figures[$image,$2]} |"; done
  echo "$row"
}
report_row "VmRSS idle (MiB)" idle
for pods_now in "$first_pods" "$all_pods"; do
  report_row "VmRSS with $pods_now pods, after a restart and a full run (MiB)" "$pods_now,rss"
  report_row "restart -> every policy answered a full run, $pods_now pods (s)" "$pods_now,answered"
  report_row "CPU until then (s)" "$pods_now,cpu"
done
row="| slope $first_pods -> $all_pods pods (KiB per pod) |"
for image in "${images_to_measure[@]}"; do
  row+=" $(awk -v a="${figures[$image,$first_pods,rss]}" -v b="${figures[$image,$all_pods,rss]}" -v p="$first_pods" -v q="$all_pods" 'BEGIN { printf "%.2f", (b - a) * 1024 / (q - p) }') |"
done
echo "$row"
echo
echo "first full backup (this build): policies Ready $first_backup s after the first wave was created, $second_backup s after the rest"
echo "kube-apiserver VmRSS $(component_rss '/kube-apiserver ') MiB, etcd VmRSS $(component_rss '/etcd ') MiB"
