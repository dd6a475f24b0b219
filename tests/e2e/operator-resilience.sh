#!/usr/bin/env bash
# The operator's control loop under hostile conditions, on the real cluster,
# with two operator replicas (one leader, one standby):
#
# - leader under partition: the leader's process is paused (SIGSTOP), so it
#   can neither renew its lease nor work; the standby takes the lease only
#   once it expired (a lease duration after it last saw it renewed), does
#   the work, and the old leader, resumed (SIGCONT), stops without writing
#   and exits; every write the replicas sent is logged with its lease term:
#   no term has writes from two replicas, and the old leader wrote nothing
#   after the new one took over;
# - the leader killed (SIGKILL) in the middle of a node restore: exactly
#   one export Job, the restore finishes, one ImageRestored event;
# - an ImageBackupPolicy the operator cannot decode (an int32 status field
#   holding 2^32, which the schema's `format: int32` lets through) is
#   reported on itself (Ready=False InvalidObject, an Event, a metric) and a
#   policy created after it is still reconciled.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

started=$SECONDS
ns="or-e2e-$RANDOM"
base="e2e/resilience-$RANDOM"
node1="${NODE_NAMES[0]}"
sys=lifeboat-system
echo "operator resilience e2e (namespace $ns, images under $SOURCE_REGISTRY/$base)"

work="$(mktemp -d)"
cleanup() {
  # Whatever happened, no paused operator is left behind, and the operator
  # goes back to its usual single replica.
  [[ -s "$work/stopped-pid" ]] && kill -CONT "$(cat "$work/stopped-pid")" 2>/dev/null
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  k apply -f "$REPO_ROOT/config/operator" >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup

# --- the operator, two replicas, writes logged with their term --------------------------
check "Lifeboat images build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh"
check "CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd"
check "operator manifests apply" k apply -f "$REPO_ROOT/config/operator"
k -n "$sys" set env deploy/lifeboat-operator \
  RUST_LOG=info,kube=warn,hyper=warn,registry_transfer=warn,lifeboat_operator::leader=debug >/dev/null
k -n "$sys" scale deploy/lifeboat-operator --replicas=2 >/dev/null
k -n "$sys" rollout restart deploy/lifeboat-operator >/dev/null
check "two operator replicas become available" k -n "$sys" rollout status deploy/lifeboat-operator --timeout=180s

lease_field() { k -n "$sys" get lease lifeboat-operator -o jsonpath="{.spec.$1}"; }
operator_pods() { k -n "$sys" get pods -l app.kubernetes.io/component=operator -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
holder_is_a_pod() { local h; h="$(lease_field holderIdentity)"; [[ -n "$h" ]] && operator_pods | grep -qx "$h"; }
check "one of the two replicas holds the lease" eventually 60 holder_is_a_pod

# pid_of POD: the host PID of the operator process of POD (the cluster's
# containers are processes on this machine).
pid_of() {
  local dir
  for dir in /proc/[0-9]*; do
    [[ "$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null)" == *lifeboat-operator* ]] || continue
    tr '\0' '\n' <"$dir/environ" 2>/dev/null | grep -qx "POD_NAME=$1" && { echo "${dir#/proc/}"; return 0; }
  done
  return 1
}
restarts() { k -n "$sys" get pod "$1" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
# policy NAME: a policy selecting nothing, Ready as soon as it is reconciled.
policy() {
  k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: $1}
spec:
  selector: {images: {include: ["nothing-$RANDOM/**"]}}
  targets:
  - name: backup
    registry: $BACKUP_REGISTRY
    secretRef: {name: backup-credentials}
    caBundle: {configMapKeyRef: {name: backup-ca, key: ca.crt}}
YAML
}
policy before
check "a policy is reconciled by the leader (Ready)" k -n "$ns" wait --for=condition=Ready ibp/before --timeout=60s

# --- 1. the leader paused: the standby takes over only after the lease expired ----------
old="$(lease_field holderIdentity)"
term0="$(lease_field leaseTransitions)"
new="$(operator_pods | grep -vx "$old" | head -1)"
echo "  leader $old (term ${term0:-0}), standby $new"
pause_leader() {
  local pid; pid="$(pid_of "$old")" || { echo "no process for $old"; return 1; }
  echo "$pid" >"$work/stopped-pid"
  echo "$(restarts "$old")" >"$work/restarts-before"
  kill -STOP "$pid" && date +%s.%N >"$work/stopped-at"
}
check "the leader's process ($old) is paused with SIGSTOP" pause_leader
taken_over() { [[ "$(lease_field holderIdentity)" == "$new" ]]; }
took_over_after_expiry() {
  eventually 60 taken_over || { echo "holder still $(lease_field holderIdentity)"; return 1; }
  local waited; waited="$(python3 -c "import time; print(round(time.time() - $(cat "$work/stopped-at"), 1))")"
  echo "$waited" >"$work/takeover-seconds"
  # The lease lasts 15 s after the standby last saw it renewed; the leader
  # renewed at most one retry period (2 s, plus a round) before it stopped.
  python3 -c "import sys; sys.exit(0 if $waited >= 12.5 else 1)" || { echo "taken over after only $waited s"; return 1; }
}
check "the standby ($new) takes the lease, not before it expired" took_over_after_expiry
echo "  takeover $(cat "$work/takeover-seconds" 2>/dev/null) s after the pause"
check "leaseTransitions went up by exactly one" test "$(lease_field leaseTransitions)" == "$((${term0:-0} + 1))"
policy during
check "the new leader works while the old one is paused (a new policy becomes Ready)" \
  k -n "$ns" wait --for=condition=Ready ibp/during --timeout=60s
resume_old() { kill -CONT "$(cat "$work/stopped-pid")" && date +%s.%N >"$work/resumed-at" && : >"$work/stopped-pid"; }
check "the old leader is resumed (SIGCONT)" resume_old
old_restarted() { (( $(restarts "$old") > $(cat "$work/restarts-before") )); }
check "the old leader notices it lost, stops and exits (its container restarts)" eventually 60 old_restarted
old_said_why() {
  local log; log="$(k -n "$sys" logs "$old" --previous)" || return 1
  grep -q 'renew deadline passed without a renewal\|another replica holds the lease' <<<"$log" &&
    grep -q 'lost leadership: exiting' <<<"$log" || { tail -5 <<<"$log"; return 1; }
}
check "... saying it passed its renew deadline and exiting" old_said_why
check "the lease stays with the new leader, term $((${term0:-0} + 1))" \
  test "$(lease_field holderIdentity)/$(lease_field leaseTransitions)" == "$new/$((${term0:-0} + 1))"
# Every write each replica sent, as "epoch-seconds term method path".
writes_of() { # writes_of POD [--previous]
  k -n "$sys" logs "$1" ${2:-} | python3 -c '
import json, sys, datetime
for line in sys.stdin:
    try: e = json.loads(line)
    except ValueError: continue
    if e.get("message") == "write sent":
        t = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        print("%.6f %s %s %s" % (t, e.get("term"), e.get("method"), e.get("path")))'
}
one_writer_per_term() {
  writes_of "$old" --previous >"$work/old-writes" && writes_of "$new" >"$work/new-writes" || return 1
  local resumed; resumed="$(cat "$work/resumed-at")"
  [[ -s "$work/old-writes" && -s "$work/new-writes" ]] || { echo "no writes logged: old $(wc -l <"$work/old-writes"), new $(wc -l <"$work/new-writes")"; return 1; }
  python3 - "$work/old-writes" "$work/new-writes" "$resumed" "$(cat "$work/stopped-at")" <<'PY'
import sys
def load(path):
    return [(float(t), int(term), m, p) for t, term, m, p in (l.split(" ", 3) for l in open(path) if l.strip())]
old, new = load(sys.argv[1]), load(sys.argv[2])
resumed, stopped = float(sys.argv[3]), float(sys.argv[4])
old_terms, new_terms = {w[1] for w in old}, {w[1] for w in new}
problems = []
if old_terms & new_terms:
    problems.append(f"terms written by both replicas: {old_terms & new_terms}")
late = [w for w in old if w[0] >= stopped]
if late:
    problems.append(f"the old leader wrote after it was paused: {late[:3]}")
first_new = min(w[0] for w in new)
if max(w[0] for w in old) >= first_new:
    problems.append("the old leader's last write is not before the new leader's first")
print(f"old leader: {len(old)} writes in terms {sorted(old_terms)}; new leader: {len(new)} writes in terms {sorted(new_terms)}")
if problems:
    print("\n".join(problems)); sys.exit(1)
PY
}
check "no two replicas wrote in the same term; the old leader wrote nothing after its pause" one_writer_per_term
cat "$work/old-writes" "$work/new-writes" 2>/dev/null | awk '{print $2}' | sort | uniq -c | sed 's/^/  writes per term: /'

# --- 2. the leader killed in the middle of a node restore ------------------------------
check "a single-use image is pushed" push_busybox_image "$base/kill:1" 8388608
digest="$(registry_digest "$base/kill" 1)"
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: kill}
spec:
  replicas: 1
  selector: {matchLabels: {app: kill}}
  template:
    metadata: {labels: {app: kill}}
    spec:
      nodeSelector: {kubernetes.io/hostname: $node1}
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: "$SOURCE_REGISTRY/$base/kill:1", imagePullPolicy: Always}
YAML
check "a workload runs it on $node1" k -n "$ns" rollout status deploy/kill --timeout=120s
lose() {
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$base/kill/manifests/$digest" >/dev/null &&
    docker-registry garbage-collect --delete-untagged "$CLUSTER_DIR/registries/source.yml" >/dev/null 2>&1
  [[ "$(registry_digest "$base/kill" 1)" == "" ]]
}
check "the image is deleted from the source registry (blobs too)" lose
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: killed-operator}
spec:
  images: ["$SOURCE_REGISTRY/$base/kill:1@$digest"]
  source: {type: NodeCache}
YAML
uid="$(k -n "$ns" get imagerestore killed-operator -o jsonpath='{.metadata.uid}')"
restore_jobs() { k -n "$sys" get jobs -l "lifeboat.dev/restore-uid=$uid" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
kill_leader_mid_restore() {
  # The moment the export Job exists (the restore is under way), the leader
  # is killed outright: no graceful shutdown, no lease release.
  local job leader pid
  job="$(timeout 120 "$KUBECTL" -n "$sys" get jobs -l "lifeboat.dev/restore-uid=$uid" --watch -o name | head -1)"
  [[ -n "$job" ]] || { echo "no export Job appeared"; return 1; }
  leader="$(lease_field holderIdentity)"; pid="$(pid_of "$leader")" || { echo "no process for $leader"; return 1; }
  kill -KILL "$pid" && echo "killed $leader (pid $pid) while $job ran"
}
check "the leader is killed (SIGKILL) as soon as the export Job exists" kill_leader_mid_restore
check "the restore still becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/killed-operator --timeout=180s
restored_once() {
  local jobs events
  jobs="$(restore_jobs)"
  [[ "$(grep -c . <<<"$jobs")" == 1 ]] || { echo "export Jobs: $jobs"; return 1; }
  events="$(k -n "$ns" get events --field-selector involvedObject.name=killed-operator,reason=ImageRestored -o jsonpath='{.items[*].reason}' | wc -w)"
  [[ "$events" == 1 ]] || { echo "ImageRestored events: $events"; return 1; }
  [[ "$(registry_digest "$base/kill" 1)" == "$digest" ]] || { echo "digest not back"; return 1; }
}
check "exactly one export Job, one ImageRestored event, the digest is back" restored_once

# --- 3. an object the operator cannot decode --------------------------------------------
policy broken
check "a policy to break is Ready first" k -n "$ns" wait --for=condition=Ready ibp/broken --timeout=60s
# int32 in the operator, `format: int32` in the schema, which the API
# server does not range-check: 2^32 is stored, and the operator cannot read it.
break_it() {
  k -n "$ns" patch ibp broken --subresource=status --type=merge \
    -p '{"status":{"automaticRestore":{"name":"x","progress":{"bytes":0,"failed":4294967296,"restored":0,"total":0}}}}' >/dev/null
}
check "its status gets an int32 field holding 2^32 (the API server accepts it)" break_it
reported_invalid() {
  [[ "$(k -n "$ns" get ibp broken -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}')" == "False InvalidObject" ]]
}
check "the undecodable policy is reported on itself: Ready=False InvalidObject" eventually 60 reported_invalid
invalid_event() {
  [[ "$(k -n "$ns" get events --field-selector involvedObject.name=broken,reason=InvalidObject -o jsonpath='{.items[*].reason}' | wc -w)" -ge 1 ]]
}
check "... with an InvalidObject event" eventually 30 invalid_event
policy after
check "a policy created after it is still reconciled (Ready)" k -n "$ns" wait --for=condition=Ready ibp/after --timeout=60s
invalid_counted() {
  local leader m; leader="$(lease_field holderIdentity)"
  m="$(k get --raw "/api/v1/namespaces/$sys/pods/$leader:18080/proxy/metrics")" || return 1
  grep -q 'lifeboat_reconcile_errors_total{.*reason="invalid_object"' <<<"$m" || { grep reconcile_errors <<<"$m"; return 1; }
}
check "metrics: the undecodable object is counted (reason invalid_object)" eventually 30 invalid_counted
check "the operator pods did not crash on it" test -z "$(k -n "$sys" logs -l app.kubernetes.io/component=operator --tail=-1 | grep -i 'panicked')"

# --- 4. a graceful stop (a rollout, a drain) gives the lease up ------------------------
# SIGTERM, what the kubelet sends: the leader stops its controllers and
# releases the lease, so the standby leads at its next round (2 s retry)
# instead of after the 15 s lease.
standby_takes_over_a_released_lease() {
  local leader standby pid t0
  leader="$(lease_field holderIdentity)"; pid="$(pid_of "$leader")" || { echo "no process for $leader"; return 1; }
  standby="$(operator_pods | grep -vx "$leader" | head -1)"
  [[ -n "$standby" ]] || { echo "no standby replica"; return 1; }
  t0=$SECONDS
  kill -TERM "$pid"
  until [[ "$(lease_field holderIdentity)" == "$standby" ]]; do
    ((SECONDS - t0 < 10)) || { echo "the standby did not lead within 10 s (lease: $(lease_field holderIdentity))"; return 1; }
    sleep 0.2
  done
  echo "  measured: graceful stop -> the standby ($standby) holds the lease: $((SECONDS - t0)) s (lease 15 s)"
  # Its last words: in the previous container once the kubelet restarted
  # it, in the current one until then.
  logged_release() {
    { k -n "$sys" logs "$leader" --previous 2>/dev/null; k -n "$sys" logs "$leader" 2>/dev/null; } |
      grep -q "leader lease released"
  }
  eventually 15 logged_release || { echo "the old leader did not log the release"; return 1; }
}
check "a leader stopped with SIGTERM releases the lease: the standby leads within 10 s, not after the 15 s lease" \
  standby_takes_over_a_released_lease

echo "operator-resilience: $((SECONDS - started)) s"
summary "operator-resilience"
