#!/usr/bin/env bash
# The admission webhook's cost (docs/benchmarks.md#admission-webhook), on the
# local cluster, with the operator deployed as tests/e2e/admission.sh deploys
# it (--deploy: release build, then that deployment):
#
#  1. the webhook alone: N AdmissionReviews of a pod in Warn mode posted to
#     the operator over one kept-alive TLS connection (curl), per-request time;
#  2. what it adds to a pod create: N server-side dry-run pod creates
#     (`?dryRun=All`: admission runs, nothing is stored or scheduled) in a
#     namespace a Warn policy covers, against N in a namespace none covers
#     (the webhook's namespaceSelector leaves it out: this machine's floor,
#     measured in the same run).
#
#   hack/bench-admission.sh [--deploy] [N=500]
#
# Prints a Markdown table (p50/p99 in ms). Not part of hack/test.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"

deploy=false
[[ "${1:-}" == "--deploy" ]] && { deploy=true; shift; }
count="${1:-500}"
ns="bench-adm-$RANDOM"
bare="bench-bare-$RANDOM"
webhook=lifeboat-operator-admission
work="$(mktemp -d)"
on_exit "k delete namespace '$ns' '$bare' --wait=false --ignore-not-found; rm -rf '$work'"
if $deploy; then
  # As tests/e2e/admission.sh leaves it: the usual operator, no webhook.
  on_exit "k delete validatingwebhookconfiguration '$webhook' --ignore-not-found; k -n lifeboat-system delete secret '$webhook-tls' --ignore-not-found; k apply -f '$REPO_ROOT/config/operator'"
fi

if $deploy; then
  "$REPO_ROOT/hack/images/lifeboat-images.sh" --release >&2
  k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd" >/dev/null
  "$REPO_ROOT/hack/build-helm.sh" >/dev/null
  "$LIFEBOAT_BIN_CACHE/helm-$HELM_VERSION/helm" template lifeboat "$REPO_ROOT/helm/lifeboat" \
    --namespace lifeboat-system -f "$REPO_ROOT/hack/values-local.yaml" --set replicaCount=1 \
    --set admission.enabled=true --set admission.endpoint=podIP |
    awk '/^# Source: /{keep = ($3 !~ /namespace.yaml$/)} keep' | k apply -f - >/dev/null
  k -n lifeboat-system rollout restart deploy/lifeboat-operator >/dev/null
  k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s >&2
fi

k create namespace "$ns" >/dev/null
k create namespace "$bare" >/dev/null
backup_registry_access "$ns"
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: warn}
spec:
  targets:
$(backup_target "bench/{policyNamespace}/{registry}/{repository}")
YAML
covered() {
  k get validatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].namespaceSelector.matchExpressions[0].values}' | grep -q "\"$ns\""
}
eventually 30 covered || { echo "the webhook never covered $ns" >&2; exit 1; }
eventually 30 condition_is "$ns" ibp/warn Ready "True Protected" >/dev/null

pod_json() {
  jq -cn --arg ns "$1" --arg image "$SOURCE_REGISTRY/demo/web:1.0" \
    '{apiVersion: "v1", kind: "Pod", metadata: {generateName: "bench-", namespace: $ns},
      spec: {containers: [{name: "main", image: $image}]}}'
}

# percentiles FILE: "p50 p99" in ms of the seconds in FILE, one a line.
percentiles() {
  sort -g "$1" | awk '{ v[NR] = $1 } END {
    p50 = v[int(NR * 0.50 + 0.5)]; p99 = v[int(NR * 0.99 + 0.5)]
    printf "%.1f %.1f\n", p50 * 1000, p99 * 1000 }'
}

# timed_posts URL BODY-FILE OUT STATUS CURL-CONFIG-LINES: COUNT POSTs of
# BODY-FILE to URL over one curl (one kept-alive connection), each request's
# time_total to OUT; fails unless every answer has HTTP STATUS. Each POST is
# an operation of its own (`next`): without it curl appends every body to one
# and sends that to every URL (the run of 00:53 measured 400 answers so).
timed_posts() {
  local url="$1" body="$2" out="$3" status="$4" options="$5"
  local config="$work/curl.config" i
  : >"$config"
  for ((i = 1; i <= count; i++)); do
    ((i == 1)) || echo next >>"$config"
    printf 'url = "%s"\ndata-binary = "@%s"\noutput = "/dev/null"\nheader = "Content-Type: application/json"\nwrite-out = "%%{http_code} %%{time_total}\\n"\n%s\n' \
      "$url" "$body" "$options" >>"$config"
  done
  curl -s -K "$config" >"$out.answers"
  awk -v want="$status" -v n="$count" '$1 == want { good++ } END { exit !(good == n && NR == n) }' "$out.answers" || {
    echo "POSTs to $url: not all $count answered $status:" >&2
    sort "$out.answers" | awk '{ print $1 }' | uniq -c >&2
    exit 1
  }
  awk '{ print $2 }' "$out.answers" >"$out"
}

# 1. The webhook alone.
k -n lifeboat-system get secret "$webhook-tls" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/ca.crt"
url="$(k get validatingwebhookconfiguration "$webhook" -o jsonpath='{.webhooks[0].clientConfig.url}')"
jq -cn --argjson pod "$(pod_json "$ns")" --arg ns "$ns" '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
  request: {uid: "bench", kind: {group: "", version: "v1", kind: "Pod"},
    resource: {group: "", version: "v1", resource: "pods"}, namespace: $ns, operation: "CREATE",
    userInfo: {username: "bench"}, object: $pod, dryRun: true}}' >"$work/review.json"
timed_posts "$url" "$work/review.json" "$work/direct" 200 "cacert = \"$work/ca.crt\""
warned="$(curl -s --cacert "$work/ca.crt" -H 'Content-Type: application/json' --data-binary "@$work/review.json" "$url" | jq -r '.response.warnings | length')"

# 2. Pod creates through the API server, covered and not.
api="https://127.0.0.1:$APISERVER_PORT"
tls="$(printf 'cacert = "%s"\ncert = "%s"\nkey = "%s"' "$CLUSTER_PKI/ca.crt" "$CLUSTER_PKI/admin.crt" "$CLUSTER_PKI/admin.key")"
pod_json "$ns" >"$work/covered.json"
pod_json "$bare" >"$work/bare.json"
# The proof that the covered creates went through the webhook and the bare
# ones did not: the operator's own count of the reviews it answered, read
# around each run (Warn mode answers "warned" for this uncovered-by-backup pod
# or "allowed"; any verdict counts).
reviews_answered() {
  operator_metrics | awk '/^lifeboat_admissions_total\{/ { sum += $NF } END { printf "%d\n", sum }'
}
before_covered="$(reviews_answered)"
timed_posts "$api/api/v1/namespaces/$ns/pods?dryRun=All" "$work/covered.json" "$work/covered" 201 "$tls"
after_covered="$(reviews_answered)"
timed_posts "$api/api/v1/namespaces/$bare/pods?dryRun=All" "$work/bare.json" "$work/bare" 201 "$tls"
after_bare="$(reviews_answered)"
covered_calls=$((after_covered - before_covered))
bare_calls=$((after_bare - after_covered))

read -r d50 d99 < <(percentiles "$work/direct")
read -r c50 c99 < <(percentiles "$work/covered")
read -r b50 b99 < <(percentiles "$work/bare")
echo "| measurement ($count requests, $(nproc) cores) | p50 (ms) | p99 (ms) |"
echo "|---|---:|---:|"
echo "| the webhook alone: AdmissionReview of a pod, Warn mode ($warned warning each), one TLS connection | $d50 | $d99 |"
echo "| dry-run pod create, namespace the webhook covers ($covered_calls webhook calls counted by the operator) | $c50 | $c99 |"
echo "| dry-run pod create, namespace it does not (floor; $bare_calls webhook calls) | $b50 | $b99 |"
awk -v c50="$c50" -v b50="$b50" -v c99="$c99" -v b99="$b99" \
  'BEGIN { printf "| added by the webhook (covered - floor) | %.1f | %.1f |\n", c50 - b50, c99 - b99 }'
if ((covered_calls < count || bare_calls != 0)); then
  echo "the API server did not call the webhook once per covered create ($covered_calls of $count) or called it for the bare namespace ($bare_calls): the figures above do not measure the webhook" >&2
  exit 1
fi
