#!/usr/bin/env bash
# Issue 16, the outage state: the source registry is killed (no 404, no
# answer at all). A pod that must pull the image fails; the policy reports
# the image as unreachable (never missing), with the reason and where the
# image can be had, on the policy and on the failing pod; the metric says so
# and a real Prometheus, scraping the operator with the shipped alert rules,
# fires LifeboatSourceUnreachable. The registry comes back: everything turns
# back to normal by itself; automatic restores (on) only ever import the
# image into the failing pod's node, never push it into a registry. Last, a
# deleted policy's gauges disappear.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="outage-e2e-$RANDOM"
repo="e2e/outage-$RANDOM"
policy=outage
echo "source outage e2e (namespace $ns)"

prometheus_dir="$(mktemp -d)"
prometheus_port=$((30000 + RANDOM % 10000))
prometheus_pid=""
cleanup() {
  # Whatever happened, the source registry answers again for the next suite.
  "$REPO_ROOT/hack/cluster/registry.sh" start source --wait >/dev/null 2>&1
  [[ -n "$prometheus_pid" ]] && kill "$prometheus_pid" 2>/dev/null
  rm -rf "$prometheus_dir"
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
}
on_exit cleanup

deploy_operator

check "a private copy of demo/web:1.0 is pushed as $repo:1.0" source_copy demo/web:1.0 "$repo:1.0"
image="$SOURCE_REGISTRY/$repo:1.0"
digest="$(registry_digest "$repo" 1.0)"

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
{
  cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: $policy}
spec:
  continuous: true
  restore: {automatic: true}
  targets:
$(backup_target "e2e/$ns/{registry}/{repository}")
---
YAML
  pinned_deployment web "${NODE_NAMES[0]}" "$image"
} | k apply -n "$ns" -f - >/dev/null
check "the policy becomes Ready (the image is in the backup registry)" \
  k -n "$ns" wait --for=condition=Ready "ibp/$policy" --timeout=120s

# --- a real Prometheus scrapes the operator with the shipped rules ---------------------
# The rules are config/monitoring/prometheus-rules.yaml as shipped, except
# that every `for:` is cut to 5 s so the suite need not wait out 3 minutes
# (promtool's unit tests prove the durations themselves).
operator_node="$(k -n lifeboat-system get pod "$(operator_pod)" -o jsonpath='{.spec.nodeName}')"
sed -E 's/^( *)for: .*/\1for: 5s/' "$REPO_ROOT/config/monitoring/prometheus-rules.yaml" >"$prometheus_dir/rules.yaml"
cat >"$prometheus_dir/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [rules.yaml]
scrape_configs:
  - job_name: lifeboat-operator-metrics
    honor_labels: true
    static_configs: [{targets: ["$(node_ip "$operator_node"):18080"]}]
YAML
prometheus --config.file="$prometheus_dir/prometheus.yml" --storage.tsdb.path="$prometheus_dir/data" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$prometheus_dir/prometheus.log" 2>&1 &
prometheus_pid=$!
prometheus_up() { curl -sf "http://127.0.0.1:$prometheus_port/api/v1/query?query=up" | jq -e '.data.result[] | select(.value[1]=="1")' >/dev/null; }
check "Prometheus scrapes the operator" eventually 60 prometheus_up
# alert_state NAME: the state of alert NAME for this policy ("" when none).
alert_state() {
  curl -sf "http://127.0.0.1:$prometheus_port/api/v1/alerts" |
    jq -r --arg a "$1" --arg ns "$ns" '[.data.alerts[] | select(.labels.alertname==$a and .labels.namespace==$ns) | .state] | first // ""'
}
alert_is() { [[ "$(alert_state "$1")" == "$2" ]] || { echo "$1 is '$(alert_state "$1")', want '$2'"; return 1; }; }
check "no outage alert while the registry answers" alert_is LifeboatSourceUnreachable ""

# --- the source registry dies ----------------------------------------------------------
"$REPO_ROOT/hack/cluster/registry.sh" stop source
killed_at=$SECONDS
registry_silent() { ! curl -s -m 3 "http://$SOURCE_REGISTRY/v2/" >/dev/null; }
check "the source registry no longer answers" registry_silent
# The Deployment moves to the node that never had the image: its new
# replica must pull (pullPolicy Always) and fails, while the old replica
# keeps running (a rolling update of one replica keeps it until the new one
# is ready).
k -n "$ns" patch deploy web --type merge \
  -p "{\"spec\":{\"template\":{\"spec\":{\"nodeSelector\":{\"kubernetes.io/hostname\":\"${NODE_NAMES[1]}\"}}}}}" >/dev/null
newcomer_pod=""
newcomer_fails() {
  local reason
  newcomer_pod="$(k -n "$ns" get pods -l app=web --field-selector spec.nodeName="${NODE_NAMES[1]}" -o jsonpath='{.items[0].metadata.name}')"
  reason="$(k -n "$ns" get pod "$newcomer_pod" -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
  [[ "$reason" == ErrImagePull || "$reason" == ImagePullBackOff ]] || { echo "new replica ($newcomer_pod) waiting: '$reason'"; return 1; }
}
check "the new replica fails to pull" eventually 60 newcomer_fails
newcomer_fails >/dev/null 2>&1 # sets newcomer_pod in this shell

status_json() { k -n "$ns" get "ibp/$policy" -o json; }
reported_unreachable() {
  local s; s="$(status_json)"
  jq -e --arg d "$digest" '.status.summary.unreachable == 1 and .status.summary.missing == 0
    and (.status.missingImages // [] | length) == 0
    and (.status.unreachableImages[0] | .digest == $d and (.reason | length) > 0
         and (.backupTargets | index("backup")) != null and (.nodes | length) > 0)' <<<"$s" >/dev/null ||
    { jq '.status | {summary, missingImages, unreachableImages}' <<<"$s"; return 1; }
}
check "the image is reported unreachable (reason, backup target, node), not missing" eventually 60 reported_unreachable
detected_s=$((SECONDS - killed_at))
check "ImagesAvailable is False with reason SourceUnreachable" \
  condition_is "$ns" "ibp/$policy" ImagesAvailable "False SourceUnreachable"
check "Ready stays True: the backup itself is fine" condition_is "$ns" "ibp/$policy" Ready "True Protected"
has_event() { [[ " $(event_reasons "$ns" "$policy" "$1") " == *" $2 "* ]] || { echo "events: $(event_reasons "$ns" "$policy")"; return 1; }; }
check "a Warning SourceUnreachable event is on the policy" eventually 30 has_event Warning SourceUnreachable
pod_told() {
  local messages
  messages="$(k -n "$ns" get events --field-selector "involvedObject.name=$newcomer_pod,reason=SourceUnreachable" -o jsonpath='{.items[*].message}')"
  [[ "$messages" == *'backup targets holding it: ["backup"]'* ]] || { echo "events on $newcomer_pod: '$messages'"; return 1; }
}
check "the failing pod gets a SourceUnreachable event naming the backup target" eventually 30 pod_told
gauge() { # gauge STATE: the policy's lifeboat_images value for STATE
  operator_metrics | grep '^lifeboat_images{' | grep "namespace=\"$ns\"" | grep "state=\"$1\"" | awk '{print $NF}'
}
gauges_say_unreachable() {
  [[ "$(gauge unreachable)" == 1 && "$(gauge missing)" == 0 ]] ||
    { echo "unreachable '$(gauge unreachable)', missing '$(gauge missing)'"; return 1; }
}
check "lifeboat_images{state=unreachable} is 1, {state=missing} 0" eventually 20 gauges_say_unreachable
check "Prometheus fires LifeboatSourceUnreachable" eventually 60 alert_is LifeboatSourceUnreachable firing
check "LifeboatImagesMissing does not fire" alert_is LifeboatImagesMissing ""
# restore.automatic may import the image into the failing pod's node (issue
# 16: the pod need not wait for the registry), but nothing is pushed into a
# registry for an image that was never lost.
registry_restores() {
  k -n "$ns" get imagerestores -o json |
    jq -r '.items[] | select(.spec.destination.nodes == null) | .metadata.name'
}
only_node_imports() {
  local r; r="$(registry_restores)" || return 1
  [[ -z "$r" ]] || { echo "restores into a registry: $r"; return 1; }
}
check "no ImageRestore into a registry is created for an image that is only unreachable" only_node_imports

# --- the registry comes back ------------------------------------------------------------
"$REPO_ROOT/hack/cluster/registry.sh" start source --wait
back_at=$SECONDS
back_to_normal() {
  local s; s="$(status_json)"
  jq -e '.status.summary.unreachable == 0 and (.status.unreachableImages // [] | length) == 0' <<<"$s" >/dev/null &&
    condition_is "$ns" "ibp/$policy" ImagesAvailable "True AllImagesAvailable"
}
check "the policy turns back to AllImagesAvailable by itself" eventually 60 back_to_normal
recovered_s=$((SECONDS - back_at))
restores_before="$(k -n "$ns" get imagerestores -o name | sort)"
check "a Normal SourceReachable event says so" eventually 20 has_event Normal SourceReachable
check "the outage alert resolves" eventually 60 alert_is LifeboatSourceUnreachable ""
check "still no ImageRestore into a registry" only_node_imports
no_new_restores() {
  [[ "$(k -n "$ns" get imagerestores -o name | sort)" == "$restores_before" ]] ||
    { echo "before: $restores_before"; k -n "$ns" get imagerestores -o name; return 1; }
}
check "no restore is created once the registry answers again" no_new_restores

# --- a deleted policy's gauges disappear ------------------------------------------------
k -n "$ns" delete "ibp/$policy" --wait=true >/dev/null
no_series() { [[ -z "$(operator_metrics | grep -E '^lifeboat_(images|backup_last_success)' | grep "namespace=\"$ns\"")" ]]; }
check "the deleted policy's lifeboat_images and last-success series disappear" eventually 30 no_series

echo "  measured: registry killed -> status SourceUnreachable in ${detected_s}s (the pull failure triggers the check); registry back -> AllImagesAvailable in ${recovered_s}s"
summary source-outage
