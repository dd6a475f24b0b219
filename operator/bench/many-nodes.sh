#!/usr/bin/env bash
# A restore from nodes on a simulated 5,000-node cluster: NODES Node objects
# no kubelet runs (operator/bench/fake-nodes.py: status.images written as a
# kubelet writes it, 50 entries each, tainted so nothing real schedules
# there), an image listed on exactly 3 of them. One ImageRestore of that
# image (source NodeCache, tolerating the fake nodes' taint) must create at
# most 10 Jobs and pin its export Job to a true holder. The Jobs cannot run
# on nodes without a kubelet: they are counted, not run. Prints the Jobs,
# the chosen node, the operator's memory and the requests it sent to the
# API server (lifeboat_kube_api_requests_total) while the restore was
# planned; deletes the fake nodes afterwards (the real nodes are untouched).
#
#   operator/bench/many-nodes.sh [--deploy [--release]] [NODES]
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/lib.sh"

deploy=false
release=false
[[ "${1:-}" == "--deploy" ]] && { deploy=true; shift; }
[[ "${1:-}" == "--release" ]] && { release=true; shift; }
nodes="${1:-5000}"
fake="$REPO_ROOT/operator/bench/fake-nodes.py"
ns=lifeboat-system
restore="many-nodes-$RANDOM"
work="$(mktemp -d)"
on_exit 'k -n lifeboat-system delete imagerestore "$restore" --ignore-not-found --wait=false >/dev/null 2>&1; python3 "$fake" delete; rm -rf "$work"'

if $deploy && $release; then
  check "Lifeboat images (release) build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh" --release
  check "CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd"
  check "operator manifests apply" k apply -f "$REPO_ROOT/config/operator"
  restart_operator
elif $deploy; then
  deploy_operator
fi

operator_status_kib() { # VmRSS or VmHWM of the operator process
  local pid
  for pid in $(pgrep -f '^/usr/local/bin/lifeboat-operator' || true); do
    awk -v key="$1:" '$1 == key {print $2}' "/proc/$pid/status"
  done | sort -n | tail -1
}
api_requests() { # "VERB resource count" lines of the operator's counter
  operator_metrics | awk '/^lifeboat_kube_api_requests_total\{/ {
      match($0, /verb="[^"]*"/); v = substr($0, RSTART + 6, RLENGTH - 7)
      match($0, /resource="[^"]*"/); r = substr($0, RSTART + 10, RLENGTH - 11)
      print v, r, $NF }' | sort
}

image="$SOURCE_REGISTRY/bench/many-nodes/app@sha256:$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)"
holders="$((RANDOM % nodes)),$(((RANDOM + 1700) % nodes)),$(((RANDOM + 3400) % nodes))"
start=$SECONDS
python3 "$fake" create --count "$nodes" --image "$image" --holders "$holders" >"$work/holders"
echo "registered $nodes fake nodes in $((SECONDS - start)) s; holders of $image: $(tr '\n' ' ' <"$work/holders")"
ready_fakes() { k get nodes -l lifeboat.dev/fake-node=true --no-headers | awk '$2 == "Ready"' | wc -l; }
echo "fake nodes Ready: $(ready_fakes)/$nodes; real nodes: $(k get nodes -l '!lifeboat.dev/fake-node' --no-headers | awk '{printf "%s %s; ", $1, $2}')"

rss_before="$(operator_status_kib VmRSS)"
api_requests >"$work/requests-before"
python3 "$fake" renew
timeout 300 "$KUBECTL" -n "$ns" get jobs --watch-only -o name >"$work/jobs" 2>/dev/null &
watch_pid=$!
t0="$(date +%s.%N)"
k apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: $restore, namespace: $ns}
spec:
  images: ["$image"]
  source:
    type: NodeCache
    nodeCache:
      tolerations: [{key: lifeboat.dev/fake-node, operator: Exists, effect: NoSchedule}]
YAML
placed() { [[ -n "$(k -n "$ns" get imagerestore "$restore" -o jsonpath='{.status.images[0].jobName}')" ]]; }
check "the restore places its image on a node" eventually 120 placed
t1="$(date +%s.%N)"
# Anything more it would start comes within its next looks.
sleep 15
kill "$watch_pid" 2>/dev/null; wait "$watch_pid" 2>/dev/null || true
api_requests >"$work/requests-after"
rss_after="$(operator_status_kib VmRSS)"
hwm="$(operator_status_kib VmHWM)"
chosen="$(k -n "$ns" get imagerestore "$restore" -o jsonpath='{.status.images[0].source.name}')"
jobs_created="$(sort -u "$work/jobs" | grep -c . || true)"
inventories="$(sort -u "$work/jobs" | grep -c 'lifeboat-inventory-' || true)"

echo "restore planned in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
echo "Jobs created: $jobs_created (inventory: $inventories); export pinned to: $chosen"
check "at most 10 Jobs, not one per node" test "$jobs_created" -le 10 -a "$jobs_created" -ge 1
check "the export Job is on a true holder ($chosen)" grep -qx "$chosen" "$work/holders"
echo "operator RSS: $rss_before KiB before, $rss_after KiB after (peak $hwm KiB)"
echo "API requests the operator sent (verb resource: during the restore):"
awk 'NR == FNR {before[$1 " " $2] = $3; next}
  {d = $3 - (before[$1 " " $2] + 0); if (d > 0) {print "  " $1, $2, d; total += d}}
  END {print "  total", total + 0}' "$work/requests-before" "$work/requests-after"
summary many-nodes
