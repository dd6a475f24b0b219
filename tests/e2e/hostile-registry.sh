#!/usr/bin/env bash
# Issue 15 on the real cluster: a pod names an image on a hostile registry
# whose token service hands out `expires_in: 18446744073709551615` (before the
# fix the operator panicked on it, restarted, reconciled the same policy and
# panicked again). The operator must stay up, report the image's failure on
# the policy naming the registry, never log the token, and keep backing up
# the namespace's other images.
#
# The hostile registry is busybox httpd in a hostNetwork pod on the
# operator's node, bound to that node's 127.0.0.1 (the operator runs with
# hostNetwork), with two CGI scripts: every manifest request gets a 401
# Bearer challenge, the token service the huge lifetime.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="hostile-e2e-$RANDOM"
port=$((20000 + RANDOM % 10000))
hostile="127.0.0.1:$port"
token="hostile-token-$RANDOM$RANDOM"
record_secret "$token"
echo "hostile registry e2e (namespace $ns, registry $hostile)"

plain_before=""
cleanup() {
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  # Leave the operator as the manifests describe it.
  if [[ -n "$plain_before" ]]; then
    k -n lifeboat-system set env deploy/lifeboat-operator "LIFEBOAT_PLAIN_HTTP_REGISTRIES=$plain_before" >/dev/null 2>&1
    k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s >/dev/null 2>&1
  fi
}
on_exit cleanup

install_operator
plain_before="$(k -n lifeboat-system get deploy lifeboat-operator \
  -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="LIFEBOAT_PLAIN_HTTP_REGISTRIES")].value}')"
# The hostile registry speaks plain HTTP, as an admin-listed one would: that
# is what lets the operator reach its token service at all.
k -n lifeboat-system set env deploy/lifeboat-operator \
  "LIFEBOAT_PLAIN_HTTP_REGISTRIES=${plain_before:+$plain_before,}$hostile" >/dev/null
restart_operator

pod="$(operator_pod)"
node="$(k -n lifeboat-system get pod "$pod" -o jsonpath='{.spec.nodeName}')"
restarts() { k -n lifeboat-system get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
restarts_before="$(restarts)"

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: hostile-registry, labels: {app: hostile-registry}}
spec:
  nodeName: $node
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: $SOURCE_REGISTRY/demo/web:1.0
    command:
    - /bin/sh
    - -c
    - |
      mkdir -p /www/v2/evil/app/manifests
      cat > /www/v2/evil/app/manifests/1.sh <<'EOF'
      printf 'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="http://%s/token.sh",service="evil"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}' "\$HTTP_HOST"
      EOF
      cat > /www/token.sh <<'EOF'
      printf 'Content-Type: application/json\r\n\r\n{"token":"$token","expires_in":18446744073709551615}'
      EOF
      echo '*.sh:/bin/sh' > /www/httpd.conf
      exec httpd -f -p $hostile -h /www -c /www/httpd.conf
---
# Names an image on the hostile registry: it never pulls, the policy sees it.
apiVersion: v1
kind: Pod
metadata: {name: victim}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 1
  containers:
  - {name: victim, image: "$hostile/evil/app:1.sh"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: web, image: $SOURCE_REGISTRY/demo/web:1.1}
YAML
check "the hostile registry runs on the operator's node ($node)" \
  k -n "$ns" wait --for=condition=Ready pod/hostile-registry --timeout=60s
hostile_answers() {
  k -n "$ns" exec hostile-registry -- wget -qO- "http://$hostile/token.sh" | grep -q '"expires_in":18446744073709551615'
}
check "its token service hands out expires_in 18446744073709551615" eventually 20 hostile_answers
check "the other workload runs" k -n "$ns" rollout status deploy/web --timeout=120s

k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: everything}
spec:
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
YAML

condition_message() {
  k -n "$ns" get ibp everything -o jsonpath='{.status.conditions[?(@.type=="LastBackupSucceeded")].message}'
}
reported() {
  condition_is "$ns" ibp/everything LastBackupSucceeded "False BackupPartiallyFailed" || return 1
  condition_message | grep -q "$hostile" || { echo "message does not name $hostile: $(condition_message)"; return 1; }
}
check "the policy reports the hostile image as failed, naming the registry" eventually 90 reported
echo "        message: $(condition_message)"

web_digest="$(registry_digest demo/web 1.1)"
web_backed_up() {
  local got; got="$(backup_digest "e2e/$ns/127.0.0.1-5001/demo/web" "$web_digest")"
  [[ -n "$web_digest" && "$got" == "$web_digest" ]] || { echo "backup has '$got', want '$web_digest'"; return 1; }
}
check "the namespace's other image is still backed up" eventually 60 web_backed_up

# A crash loop would show within seconds: the hostile image is retried on
# every reconcile.
sleep 15
stayed_up() {
  local now; now="$(operator_pod)"
  [[ "$now" == "$pod" ]] || { echo "operator pod is now '$now', was $pod"; return 1; }
  [[ "$(restarts)" == "$restarts_before" ]] || { echo "restarts: $(restarts), before: $restarts_before"; return 1; }
}
check "the operator stayed up (same pod, no restart)" stayed_up
token_fetched_and_unlogged() {
  local logs; logs="$(k -n lifeboat-system logs "$pod" --since=10m)"
  grep -q "$hostile" <<<"$logs" || { echo "no log line names $hostile"; return 1; }
  ! grep -q "$token" <<<"$logs" || { echo "the token is in the operator's log"; return 1; }
  ! grep -q "$token" <<<"$(k -n "$ns" get ibp everything -o yaml; k -n "$ns" get events -o yaml)" ||
    { echo "the token is in the policy's status or events"; return 1; }
}
check "the operator logs the failure with the registry, never the token" token_fetched_and_unlogged

summary "hostile-registry"
