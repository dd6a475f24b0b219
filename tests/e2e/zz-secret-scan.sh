#!/usr/bin/env bash
# The last e2e step (suites run in glob order): no registry password or token
# the suites used may appear in any operator log line (current and previous
# containers), any node-exporter Job pod's log, any Event, or any
# ImageBackupPolicy/ImageRestore (status included) left in the cluster.
#
# The secrets: the backup registry's fixed test password, its Basic
# `user:password` in base64 (what an Authorization header or a docker config
# `auth` carries), and whatever the suites recorded with record_secret
# (tokens the hostile registry handed out). Secrets themselves are not
# scanned: holding credentials is what they are for.
#
# The scan proves it can fail first: an Event carrying a fresh canary secret
# must be found (then it is deleted), or the suite fails.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "secret scan e2e (secrets file $E2E_SECRETS_FILE)"
work="$(mktemp -d)"
on_exit "rm -rf '$work'"

patterns="$work/patterns"
{
  printf '%s\n' "$BACKUP_REGISTRY_PASSWORD"
  printf '%s' "$BACKUP_REGISTRY_USER:$BACKUP_REGISTRY_PASSWORD" | base64 -w0
  echo
  if [[ -f "$E2E_SECRETS_FILE" ]]; then cat "$E2E_SECRETS_FILE"; fi
} | awk 'length($0) >= 8' | sort -u >"$patterns"
echo "  scanning for $(wc -l <"$patterns") secrets"

# Collects everything to scan into $work/corpus/<source>; prints counts.
collect() {
  rm -rf "$work/corpus" && mkdir -p "$work/corpus"
  local pod
  for pod in $(k -n lifeboat-system get pods -l app.kubernetes.io/component=operator -o name); do
    k -n lifeboat-system logs "$pod" --all-containers >"$work/corpus/log-${pod#pod/}" 2>/dev/null || true
    k -n lifeboat-system logs "$pod" --all-containers --previous >"$work/corpus/previous-${pod#pod/}" 2>/dev/null || true
  done
  local ns name
  while read -r ns name; do
    [[ -n "$name" ]] || continue
    k -n "$ns" logs "$name" --all-containers >"$work/corpus/exporter-$ns-$name" 2>/dev/null || true
  done < <(k get pods -A -l app.kubernetes.io/managed-by=lifeboat-operator \
    -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name}{"\n"}{end}')
  k get events -A -o yaml >"$work/corpus/events.yaml"
  k get imagebackuppolicies,imagerestores -A -o yaml >"$work/corpus/objects.yaml"
}

# Counts of what collect gathered, for the record.
counts() {
  local logs exporters events objects
  logs="$(cat "$work"/corpus/log-* "$work"/corpus/previous-* 2>/dev/null | wc -l)"
  exporters="$(ls "$work"/corpus/exporter-* 2>/dev/null | wc -l)"
  events="$(grep -c '^- apiVersion' "$work/corpus/events.yaml" || true)"
  objects="$(grep -c '^- apiVersion' "$work/corpus/objects.yaml" || true)"
  echo "$logs operator log lines, $exporters node-exporter pods ($(cat "$work"/corpus/exporter-* 2>/dev/null | wc -l) lines), $events events, $objects policies and restores ($(wc -l <"$work/corpus/objects.yaml") lines)"
}

# scan PATTERNS: prints where a secret was found (file and line number,
# never the line: it holds the secret); fails when one was.
scan() {
  local hits
  hits="$(grep -rnF -f "$1" "$work/corpus" | cut -d: -f1,2 | sed "s|$work/corpus/||")"
  if [[ -n "$hits" ]]; then
    echo "secrets found in: $(head -20 <<<"$hits" | tr '\n' ' ')"
    return 1
  fi
}

# The detector first: a canary secret in an Event must be caught.
canary="canary-secret-$RANDOM$RANDOM$RANDOM"
canary_ns="secret-scan-e2e-$RANDOM"
on_exit "k delete namespace '$canary_ns' --wait=false --ignore-not-found"
k create namespace "$canary_ns" >/dev/null
k -n "$canary_ns" create -f - >/dev/null <<YAML
apiVersion: v1
kind: Event
metadata: {name: planted-secret}
involvedObject: {kind: ConfigMap, name: planted, namespace: $canary_ns, apiVersion: v1}
reason: Planted
message: "the password is $canary"
type: Warning
YAML
echo "$canary" >"$work/canary"
collect
finds_the_canary() { ! scan "$work/canary"; }
check "the scan finds a secret planted in an Event (and says where)" finds_the_canary
k -n "$canary_ns" delete event planted-secret >/dev/null
k delete namespace "$canary_ns" --wait=true --timeout=60s >/dev/null 2>&1 || true

collect
echo "  measured: scanned $(counts)"
check "no registry password or token in operator or node-exporter logs, Events, or policy and restore statuses" scan "$patterns"
summary secret-scan
