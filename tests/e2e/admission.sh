#!/usr/bin/env bash
# The optional admission webhook on the real API server (docs/admission.md):
# the chart rendered with admission.enabled (the local cluster's API server
# cannot reach Service IPs: endpoint podIP), one namespace with a policy per
# mode, selected by workload label:
#  - warn: `kubectl apply` prints a warning for an image no policy protects,
#    and for one gone from its source, naming the backup to restore from;
#  - ensure: the image is in the backup registry when the Deployment's pod
#    is created (looked up the moment the pod object appears);
#  - enforce: an image that exists nowhere is denied with what to do; the
#    same manifest passes once the image is pushed;
#  - rotation: a 45 s certificate is renewed (new CA, old one still in the
#    caBundle) and the webhook keeps answering;
#  - a second tenant naming the first one's lost image hears nothing of it;
#  - the operator scaled to 0: pods are still admitted, within the timeout.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="adm-e2e-$RANDOM"
attacker="adm-attacker-$RANDOM"
lost_repo="e2e/adm-lost-$RANDOM"
ensure_repo="e2e/adm-ensure-$RANDOM"
bare_repo="e2e/adm-bare-$RANDOM"
nowhere_repo="e2e/adm-nowhere-$RANDOM"
webhook=lifeboat-operator-admission
timeout_seconds=10
echo "admission webhook e2e (namespace $ns)"

cleanup() {
  k delete namespace "$ns" "$attacker" --wait=false --ignore-not-found
  k delete validatingwebhookconfiguration "$webhook" --ignore-not-found
  k -n lifeboat-system delete secret "$webhook-tls" --ignore-not-found
  k -n lifeboat-system delete service "$webhook" --ignore-not-found
  # Back to the local cluster's usual operator (no webhook); the next suite
  # restarts it anyway.
  k apply -f "$REPO_ROOT/config/operator"
}
on_exit cleanup

# The chart with the webhook on, as config/operator is rendered otherwise.
"$REPO_ROOT/hack/build-helm.sh" >/dev/null
helm="$LIFEBOAT_BIN_CACHE/helm-$HELM_VERSION/helm"
admission_manifests() {
  "$helm" template lifeboat "$REPO_ROOT/helm/lifeboat" --namespace lifeboat-system \
    -f "$REPO_ROOT/hack/values-local.yaml" --set replicaCount=1 \
    --set admission.enabled=true --set admission.endpoint=podIP \
    --set admission.certValiditySeconds=45 --set admission.timeoutSeconds=$timeout_seconds \
    --set operator.sourceCheckIntervalSeconds=5 |
    awk '/^# Source: /{keep = ($3 !~ /namespace.yaml$/)} keep'
}

install_operator
apply_admission() { admission_manifests | k apply -f - >/dev/null; }
check "the operator with the webhook applies" apply_admission
restart_operator
# Nothing below means anything without the webhook.
((E2E_FAILED == 0)) || { summary admission; exit 1; }

# A Deployment NAME with workload label guard=GUARD running IMAGE (on the
# first node, pulled once).
guarded() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, labels: {guard: $2}}
spec:
  replicas: 1
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      nodeSelector: {kubernetes.io/hostname: ${NODE_NAMES[0]}}
      terminationGracePeriodSeconds: 1
      containers: [{name: main, image: "$3", imagePullPolicy: IfNotPresent}]
YAML
}
# apply_guarded NAME GUARD IMAGE: kubectl apply's output, stderr (the
# warnings) included; fails as the apply does.
apply_guarded() { guarded "$@" | k -n "$ns" apply -f - 2>&1; }
policy() {
  cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: $1}
spec:
  selector: {workloadSelector: {matchLabels: {guard: $1}}}
  admission: {mode: $2}
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
---
YAML
}

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
check "a private copy of demo/worker:0.9 is pushed" source_copy demo/worker:0.9 "$lost_repo:0.9"
check "a private copy of demo/api:2.3 is pushed" source_copy demo/api:2.3 "$ensure_repo:1"
lost_digest="$(registry_digest "$lost_repo" 0.9)"
{ policy warn Warn; policy ensure Ensure; policy enforce Enforce; } | k -n "$ns" apply -f - >/dev/null
# A second tenant with a Warn policy of its own: the attacker below.
k create namespace "$attacker" >/dev/null
backup_registry_access "$attacker"
policy warn Warn | k -n "$attacker" apply -f - >/dev/null
# What the API server calls the webhook for: the namespaces some policy covers.
selector_names_ns() {
  local values
  values="$(k get validatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].namespaceSelector.matchExpressions[0].values}')"
  grep -q "\"$ns\"" <<<"$values" && grep -q "\"$attacker\"" <<<"$values"
}
check "the webhook's namespaceSelector names the covered namespaces" eventually 30 selector_names_ns
policies_ready() {
  for p in warn ensure enforce; do condition_is "$ns" "ibp/$p" Ready "True Protected" >/dev/null || return 1; done
}
check "the three policies are ready" eventually 30 policies_ready
first_not_after="$(k -n lifeboat-system get secret "$webhook-tls" -o jsonpath='{.metadata.annotations.lifeboat\.dev/not-after}' || true)"
check "the operator wrote its serving certificate into a Secret" test -n "$first_not_after"

# --- warn: the image lost from its source starts first (its loss takes a check) -----
check "a Deployment of the soon-lost image applies" apply_guarded lost warn "$SOURCE_REGISTRY/$lost_repo:0.9"
lost_backed_up() { [[ "$(backup_digest "e2e/$ns/127.0.0.1-5001/$lost_repo" "$lost_digest")" == "$lost_digest" ]]; }
check "the warn policy backs it up" eventually 30 lost_backed_up
curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$lost_repo/manifests/$lost_digest"

# uncovered_warning NAME: a new Deployment NAME (kubectl sends nothing for an
# unchanged one) of an image no policy selects.
uncovered_warning() {
  local out; out="$(apply_guarded "$1" none "$SOURCE_REGISTRY/demo/web:1.0")" || { echo "$out"; return 1; }
  grep -q "Warning: lifeboat: image $SOURCE_REGISTRY/demo/web:1.0 is not protected" <<<"$out" || { echo "$out"; return 1; }
}
check "kubectl apply warns about an image no policy protects" uncovered_warning loose

# --- ensure: the backup exists before the pod does ------------------------------------
ensure_out="$(apply_guarded ensured ensure "$SOURCE_REGISTRY/$ensure_repo:1")"
ensure_pod() { [[ -n "$(k -n "$ns" get pods -l app=ensured -o name)" ]]; }
eventually 20 ensure_pod
ensure_backup="$(backup_digest "e2e/$ns/127.0.0.1-5001/$ensure_repo" 1)"
check "ensure: the image is in the backup registry when the pod is created" \
  test "$ensure_backup" == "$(registry_digest "$ensure_repo" 1)"
# A bare Pod is in no cache while its review waits (nothing owns it that a
# policy could have seen first): the webhook hands it to the policy's discovery.
check "a private copy of demo/web:1.0 for a bare Pod is pushed" source_copy demo/web:1.0 "$bare_repo:1"
bare_started="$(date +%s%N)"
bare_out="$(k -n "$ns" run bare-ensured --image "$SOURCE_REGISTRY/$bare_repo:1" --labels guard=ensure \
  --restart=Never --overrides "{\"spec\": {\"nodeSelector\": {\"kubernetes.io/hostname\": \"${NODE_NAMES[0]}\"}}}" 2>&1)"
bare_ms=$((($(date +%s%N) - bare_started) / 1000000))
bare_backup="$(backup_digest "e2e/$ns/127.0.0.1-5001/$bare_repo" 1)"
echo "  measured: a bare Pod of a new image, Ensure mode: created after $bare_ms ms"
check "ensure: a bare Pod's new image is in the backup registry when the pod is created" \
  test "$bare_backup" == "$(registry_digest "$bare_repo" 1)"
check "... and the pod did not wait out the Ensure wait (8 s)" test "$bare_ms" -lt 8000
grep -q 'pod/bare-ensured created' <<<"$bare_out" || echo "$bare_out"
ensure_not_waited_out() {
  ! operator_metrics | grep -E '^lifeboat_admissions_total\{.*mode="Ensure".*verdict="waited"' | grep -vq ' 0$'
}
check "ensure: the pod's admission did not run out of time" ensure_not_waited_out
check "ensure: applying the Deployment said the pods wait for the backup" grep -q "not backed up yet by $ns/ensure" <<<"$ensure_out"

# --- enforce: denied while the image exists nowhere, admitted once it exists -----------
denied() {
  local out; if out="$(apply_guarded nowhere enforce "$SOURCE_REGISTRY/$nowhere_repo:1")"; then echo "admitted: $out"; return 1; fi
  grep -q "image $SOURCE_REGISTRY/$nowhere_repo:1 exists nowhere" <<<"$out" && grep -q "Push the image" <<<"$out" || { echo "$out"; return 1; }
}
check "enforce: an image that exists nowhere is denied, saying what to do" denied
admission_metrics() {
  local metrics; metrics="$(operator_metrics)"
  grep -E '^lifeboat_admissions_total\{.*mode="Enforce".*verdict="denied".*\} [1-9]' <<<"$metrics" &&
    grep -E '^lifeboat_admissions_total\{.*mode="none".*verdict="warned".*\} [1-9]' <<<"$metrics" &&
    grep -E '^lifeboat_admission_duration_seconds_count\{.*mode="Enforce".*\} [1-9]' <<<"$metrics" ||
    { grep '^lifeboat_admission' <<<"$metrics"; return 1; }
}
check "metrics count the denial and the warning, and time them" admission_metrics
check "enforce: the image is pushed" source_copy demo/web:1.0 "$nowhere_repo:1"
check "enforce: the same manifest is admitted once the image exists" apply_guarded nowhere enforce "$SOURCE_REGISTRY/$nowhere_repo:1"

# --- warn: the lost image, named again, points at its backup ----------------------------
lost_reported() { k -n "$ns" get ibp warn -o jsonpath='{.status.missingImages[*].digest}' | grep -q "$lost_digest"; }
check "the warn policy reports the deleted image missing" eventually 30 lost_reported
lost_warning() {
  local out; out="$(apply_guarded lost-again warn "$SOURCE_REGISTRY/$lost_repo:0.9")" || { echo "$out"; return 1; }
  grep -q "Warning: lifeboat: image $SOURCE_REGISTRY/$lost_repo:0.9 is gone from its source registry; a restore can come from the backup in backup (policy $ns/warn)" <<<"$out" || { echo "$out"; return 1; }
}
check "kubectl apply warns that the image is gone, naming the backup" lost_warning
# The attacker names the victim's lost image: what the webhook says must come
# from the attacker's own namespace only (docs/security.md), never that the
# image is gone, nor where the victim's backup of it is.
attacker_learns_nothing() {
  local out; out="$(guarded steal warn "$SOURCE_REGISTRY/$lost_repo:0.9" | k -n "$attacker" apply -f - 2>&1)" || { echo "$out"; return 1; }
  grep -q "Warning: lifeboat:" <<<"$out" || { echo "no warning at all (was the webhook asked?): $out"; return 1; }
  if grep -Eq "gone from its source|$ns|backup in backup" <<<"$out"; then echo "leaked: $out"; return 1; fi
}
check "another tenant naming that image learns nothing of the first tenant's facts" attacker_learns_nothing

# --- rotation: the 45 s certificate is renewed, the webhook still answers ---------------
rotated() {
  local now; now="$(k -n lifeboat-system get secret "$webhook-tls" -o jsonpath='{.metadata.annotations.lifeboat\.dev/not-after}')"
  [[ -n "$now" && "$now" != "$first_not_after" ]] || { echo "not-after still '$now'"; return 1; }
}
check "the serving certificate is renewed before it expires" eventually 40 rotated
two_cas() {
  local n; n="$(k get validatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | base64 -d | grep -c 'BEGIN CERTIFICATE')"
  [[ "$n" == 2 ]] || { echo "$n CAs in the caBundle"; return 1; }
}
check "the caBundle holds the new CA and the previous one" two_cas
check "kubectl apply still gets the webhook's warnings after the renewal" uncovered_warning loose-after-renewal

# --- the operator stopped: pods are still admitted, within the timeout ------------------
k -n lifeboat-system scale deploy/lifeboat-operator --replicas=0 >/dev/null
no_operator() { [[ -z "$(k -n lifeboat-system get pods -l app.kubernetes.io/component=operator -o name)" ]]; }
check "the operator is scaled to 0" eventually 60 no_operator
started=$(date +%s%N)
check "with the operator down, a Deployment of an image that exists nowhere is admitted" \
  apply_guarded stopped enforce "$SOURCE_REGISTRY/e2e/adm-never-$RANDOM:1"
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
echo "  measured: the apply took $elapsed_ms ms with the webhook unreachable (timeout ${timeout_seconds} s)"
check "and the API server waited less than the webhook timeout" test "$elapsed_ms" -lt $((timeout_seconds * 1000))

summary admission
