#!/usr/bin/env bash
# Issue 15 on the real cluster: copies are fair and deadline-bound, and a
# hostile registry costs the operator bounded memory.
#
# A hostile registry (busybox httpd in a hostNetwork pod on the operator's
# node, its tree built by hostile-www/setup.sh) serves manifests that trickle
# at 1 byte per second, a manifest body that never ends, an index of 100,000
# entries and one nested 1,000 deep. Three policies in three namespaces:
#   fair:   a namespace whose new image comes from the normal source registry;
#   slow:   five images on the trickling registry;
#   attack: the endless, wide and deep ones.
# The fair policy's new image must be backed up about as fast as with no
# trickle at all (both measured and printed) while the trickling copies hold
# their route; those end with CopyDeadlineExceeded (deadline set to 20 s here),
# the policy shows copies waiting while they do; the operator stays up and
# its resident memory grows by a bounded amount (figures printed). The route's
# ceiling is pinned to 4 here (LIFEBOAT_COPIES_PER_ROUTE, whatever the
# default): copies that trickle never end, so the route's learned limit has
# nothing to learn from before all of them start, and with 4 the fifth waits.
#
# LIFEBOAT_E2E_RELEASE=1 runs the release build of the operator (as deployed)
# for the memory figures in docs/benchmarks.md.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

suffix="$RANDOM"
fair_ns="fair-e2e-$suffix" slow_ns="slow-e2e-$suffix" attack_ns="attack-e2e-$suffix"
port=$((20000 + RANDOM % 10000))
hostile="127.0.0.1:$port"
deadline_base=20
# Peak resident memory may exceed idle by at most this: 8 copy slots reading
# at most a 4 MiB manifest each (32 MiB), an 8 MiB tag page, the engine's
# 16 buffered blobs of 512 KiB (8 MiB), plus allocator slack. An unbounded
# read of the endless body would pass it within seconds.
allowed_growth_kib=$((64 * 1024))
echo "hostile copies e2e (namespaces $fair_ns $slow_ns $attack_ns, hostile registry $hostile)"

env_before() {
  k -n lifeboat-system get deploy lifeboat-operator \
    -o jsonpath="{.spec.template.spec.containers[0].env[?(@.name==\"$1\")].value}"
}
plain_before="" deadline_before="" per_route_before="" release=false sampler=""
cleanup() {
  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null
  k delete namespace "$fair_ns" "$slow_ns" "$attack_ns" --wait=false --ignore-not-found >/dev/null 2>&1
  $release && "$REPO_ROOT/hack/images/lifeboat-images.sh" >/dev/null 2>&1
  if [[ -n "$deadline_before" ]]; then
    k -n lifeboat-system set env deploy/lifeboat-operator "LIFEBOAT_PLAIN_HTTP_REGISTRIES=$plain_before" \
      "LIFEBOAT_COPY_DEADLINE_BASE_SECONDS=$deadline_before" \
      "LIFEBOAT_COPIES_PER_ROUTE=$per_route_before" >/dev/null 2>&1
    k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s >/dev/null 2>&1
  fi
}
on_exit cleanup

install_operator
if [[ "${LIFEBOAT_E2E_RELEASE:-}" == 1 ]]; then
  release=true
  check "release images build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh" --release
fi
plain_before="$(env_before LIFEBOAT_PLAIN_HTTP_REGISTRIES)"
deadline_before="$(env_before LIFEBOAT_COPY_DEADLINE_BASE_SECONDS)"
per_route_before="$(env_before LIFEBOAT_COPIES_PER_ROUTE)"
k -n lifeboat-system set env deploy/lifeboat-operator \
  "LIFEBOAT_PLAIN_HTTP_REGISTRIES=${plain_before:+$plain_before,}$hostile" \
  "LIFEBOAT_COPY_DEADLINE_BASE_SECONDS=$deadline_base" "LIFEBOAT_COPIES_PER_ROUTE=4" >/dev/null
restart_operator

pod="$(operator_pod)"
node="$(k -n lifeboat-system get pod "$pod" -o jsonpath='{.spec.nodeName}')"
restarts() { k -n lifeboat-system get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
restarts_before="$(restarts)"
# The operator's process on this host (nodes are network namespaces here).
operator_rss_kib() {
  local pid
  for pid in $(pgrep -f '^/usr/local/bin/lifeboat-operator' || true); do
    awk '/^VmRSS:/{print $2}' "/proc/$pid/status"
  done | sort -n | tail -1
}

for ns in "$fair_ns" "$slow_ns" "$attack_ns"; do
  k create namespace "$ns" >/dev/null
  backup_registry_access "$ns"
  k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: images}
spec:
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
YAML
done

# --- the fair namespace's usual latency, before any trickle ----------------------
backup_has() { # REPO DIGEST
  local got; got="$(backup_digest "e2e/$fair_ns/127.0.0.1-5001/$1" "$2")"
  [[ -n "$2" && "$got" == "$2" ]]
}
new_image_latency() { # NAME TAG: seconds from creating a Deployment to its image in the backup
  local digest started
  digest="$(registry_digest demo/web "$2")"
  started=$(date +%s.%N)
  k -n "$fair_ns" create deployment "$1" --image="$SOURCE_REGISTRY/demo/web:$2" >/dev/null
  eventually 60 backup_has demo/web "$digest" || return 1
  echo "$(date +%s.%N) - $started" | bc
}
sleep 5 # the policies' first (empty) runs
usual="$(new_image_latency first 1.0)"
check "with no trickle, the fair namespace's new image is backed up (${usual}s)" test -n "$usual"
rss_idle="$(operator_rss_kib)"
echo "  measured: new image -> backed up, no trickle: ${usual}s; operator VmRSS idle: ${rss_idle} KiB"

# --- the hostile registry and its victims ----------------------------------------
k -n "$slow_ns" create configmap hostile-www --from-file=setup.sh="$(dirname "${BASH_SOURCE[0]}")/hostile-www/setup.sh" >/dev/null
k apply -n "$slow_ns" -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: hostile-registry}
spec:
  nodeName: $node
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  volumes: [{name: setup, configMap: {name: hostile-www}}]
  containers:
  - name: httpd
    image: $SOURCE_REGISTRY/demo/web:1.0
    volumeMounts: [{name: setup, mountPath: /setup}]
    command: [/bin/sh, -c, "sh /setup/setup.sh && exec httpd -f -p $hostile -h /www -c /www/httpd.conf"]
    readinessProbe: {exec: {command: [/bin/sh, -c, "test -f /www/ready"]}, periodSeconds: 1}
YAML
check "the hostile registry runs on the operator's node ($node)" \
  k -n "$slow_ns" wait --for=condition=Ready pod/hostile-registry --timeout=120s

# Sample the operator's memory from now on.
peak_file="$(mktemp)"
on_exit "rm -f '$peak_file'"
(
  peak=0
  while sleep 0.5; do
    rss="$(operator_rss_kib)"
    ((${rss:-0} > peak)) && peak="$rss" && echo "$peak" >"$peak_file"
  done
) &
sampler=$!

victims() { # NS IMAGE...: a Pod naming the images (never pulled: only seen)
  local ns="$1" i=0 image; shift
  {
    echo "apiVersion: v1"; echo "kind: Pod"; echo "metadata: {name: victim}"
    echo "spec: {nodeSelector: {lifeboat.dev/nothing: matches}, terminationGracePeriodSeconds: 1, containers: ["
    for image in "$@"; do
      printf '%s{name: c%d, image: "%s"}\n' "$( ((i)) && echo ,)" "$i" "$image"; i=$((i + 1))
    done
    echo "]}"
  } | k apply -n "$ns" -f - >/dev/null
}
victims "$slow_ns" "$hostile/slow/app:1.sh" "$hostile/slow/app:2.sh" "$hostile/slow/app:3.sh" \
  "$hostile/slow/app:4.sh" "$hostile/slow/app:5.sh"
victims "$attack_ns" "$hostile/endless/app:1.sh" "$hostile/wide/app:1" "$hostile/deep/app:1"

route="$hostile -> $BACKUP_REGISTRY"
running_on_hostile_route() {
  operator_metrics | grep '^lifeboat_copy_queue_depth{' | grep -F "route=\"$route\"" | grep -F 'state="running"' |
    awk '$NF >= 1 {ok = 1} END {exit !ok}'
}
check "the trickling copies run (lifeboat_copy_queue_depth{route=\"$route\",state=\"running\"} >= 1)" \
  eventually 30 running_on_hostile_route
reconciling_message() { k -n "$slow_ns" get ibp images -o jsonpath='{.status.conditions[?(@.type=="Reconciling")].message}'; }
waiting_shown() { reconciling_message | grep -qF "copies waiting: queued behind" && reconciling_message | grep -qF "copies on $route"; }
check "the slow policy's status says its fifth copy waits, and why" eventually 20 waiting_shown
echo "        Reconciling: $(reconciling_message)"

# --- the fair namespace's new image, while the trickles hold their route -------
during="$(new_image_latency second 1.1)"
check "while the trickles run, the fair namespace's new image is backed up (${during}s)" test -n "$during"
check "... while the trickling copies were still running" running_on_hostile_route
echo "  measured: new image -> backed up, no trickle: ${usual}s; while 5 copies trickle at 1 B/s: ${during}s"
within_usual() { echo "$during <= $usual + 10" | bc | grep -qx 1; }
check "... within its usual seconds (at most 10 s more than without the trickle)" within_usual

# --- the trickles end at their deadline, the attacks with typed errors ---------------
ready_message() { k -n "$1" get ibp images -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}'; }
deadline_reported() {
  # Partially: the hostile registry pod's own image (from the source registry) is protected.
  condition_is "$slow_ns" ibp/images Ready "False BackupPartiallyFailed" >/dev/null || return 1
  ready_message "$slow_ns" | grep -q "CopyDeadlineExceeded: .*cancelled after"
}
check "the trickling copies fail CopyDeadlineExceeded, in the slow policy's status" eventually 90 deadline_reported
echo "        Ready: $(ready_message "$slow_ns")"
deadline_counted() {
  operator_metrics | grep '^lifeboat_copies_cancelled_total{' | grep -F "route=\"$route\"" | awk '$NF >= 5 {ok = 1} END {exit !ok}'
}
check "lifeboat_copies_cancelled_total counts the five" eventually 60 deadline_counted
attacks_reported() {
  local summary; summary="$(k -n "$attack_ns" get ibp images -o jsonpath='{.status.summary.failed}')"
  [[ "$summary" == 3 ]] || { echo "failed: '$summary', want 3; $(ready_message "$attack_ns")"; return 1; }
}
check "the endless, 100,000-entry and 1,000-deep images fail on the attack policy" eventually 90 attacks_reported
typed_errors_logged() {
  local logs; logs="$(k -n lifeboat-system logs "$pod" --since=10m | grep -F "$hostile" | grep -F '"copy failed"')"
  grep -q '"reason":"RegistryResponseTooLarge"' <<<"$logs" || { echo "no RegistryResponseTooLarge copy failure logged"; return 1; }
  grep -q '"reason":"ImageTooComplex"' <<<"$logs" || { echo "no ImageTooComplex copy failure logged"; return 1; }
}
check "... with their typed errors (RegistryResponseTooLarge, ImageTooComplex) in the operator's log" typed_errors_logged
echo "        Ready: $(ready_message "$attack_ns")"

kill "$sampler" 2>/dev/null; sampler=""
rss_peak="$(cat "$peak_file")"
rss_after="$(operator_rss_kib)"
echo "  measured: operator VmRSS idle ${rss_idle} KiB, peak under attack ${rss_peak} KiB, after ${rss_after} KiB ($($release && echo release || echo debug) build)"
bounded() { ((rss_peak - rss_idle <= allowed_growth_kib)) || { echo "grew by $((rss_peak - rss_idle)) KiB"; return 1; }; }
check "the operator's memory grew by at most $((allowed_growth_kib / 1024)) MiB under the attacks" bounded

stayed_up() {
  local now; now="$(operator_pod)"
  [[ "$now" == "$pod" ]] || { echo "operator pod is now '$now', was $pod"; return 1; }
  [[ "$(restarts)" == "$restarts_before" ]] || { echo "restarts: $(restarts), before: $restarts_before"; return 1; }
}
check "the operator stayed up (same pod, no restart)" stayed_up

summary "hostile-copies"
