#!/usr/bin/env bash
# `kubectl lifeboat` through the real kubectl: the plugin is built, put on
# PATH as kubectl-lifeboat and run as `kubectl lifeboat ...` against a policy
# that backs up a private image. status (json checked with jq, table),
# backup --wait (the run recorded), why (target and node named, then the
# image lost and explained), restore --missing --wait (the digest served by
# the source registry again).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="klb-e2e-$RANDOM"
repo="e2e/klb-$RANDOM"
echo "kubectl plugin e2e (namespace $ns)"

cleanup() {
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$repo/manifests/$digest" >/dev/null 2>&1 || true
}
on_exit cleanup

deploy_operator
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LIFEBOAT_CACHE/cargo-target}"
check "kubectl-lifeboat builds" bash -c "cd '$REPO_ROOT' && cargo build --quiet -p kubectl-lifeboat"
plugin_dir="$(mktemp -d)"
on_exit "rm -rf '$plugin_dir'"
ln -s "$CARGO_TARGET_DIR/debug/kubectl-lifeboat" "$plugin_dir/kubectl-lifeboat"
export PATH="$plugin_dir:$PATH"
check "kubectl finds the plugin" bash -c "'$KUBECTL' plugin list 2>/dev/null | grep -q '$plugin_dir/kubectl-lifeboat'"
lb() { k lifeboat "$@"; }

# --- a policy protecting one private image -------------------------------------------
check "a private copy of demo/worker:0.9 is pushed as $repo:1" source_copy demo/worker:0.9 "$repo:1"
digest="$(registry_digest "$repo" 1)"
k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
{ pinned_deployment app "${NODE_NAMES[0]}" "$SOURCE_REGISTRY/$repo:1"; cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: images}
spec:
  targets:
$(backup_target "e2e/{policyNamespace}/{repository}" offsite)
YAML
} | k apply -n "$ns" -f - >/dev/null
check "the app runs and the policy becomes Ready" bash -c \
  "'$KUBECTL' -n $ns rollout status deploy/app --timeout=90s && '$KUBECTL' -n $ns wait --for=condition=Ready ibp/images --timeout=90s"

# --- status ---------------------------------------------------------------------------
status_json() {
  local got; got="$(lb status -n "$ns" -o json)" || return 1
  jq -e '.policies | length == 1 and .[0].name == "images" and .[0].selected == 1 and .[0].protected == 1
         and .[0].missing == 0 and .[0].unreachable == 0 and .[0].ready.status == "True"
         and .[0].lastSuccessfulTime != null' <<<"$got" >/dev/null || { echo "$got"; return 1; }
}
check "status -o json: one policy, 1 selected, 1 protected, 0 missing, Ready" status_json
status_table() {
  local got; got="$(lb status -n "$ns")" || return 1
  grep -Eq "^$ns +images +1 +1 +0 +0 " <<<"$got" || { echo "$got"; return 1; }
  ! grep -q $'\x1b' <<<"$got" || { echo "color escapes off a terminal"; return 1; }
}
check "status table: the policy's counts, no color off a terminal" status_table
check "status -o yaml parses" bash -c "'$KUBECTL' lifeboat status -n $ns -o yaml | grep -q '^policies:'"

# --- backup --wait -------------------------------------------------------------------
backup_waits() {
  local out handled annotation trigger
  out="$(lb backup images -n "$ns" --wait --timeout 60s)" || { echo "exit $?: $out"; return 1; }
  grep -q '^succeeded: 1/1 images protected' <<<"$out" || { echo "$out"; return 1; }
  annotation="$(k -n "$ns" get ibp images -o jsonpath='{.metadata.annotations.lifeboat\.dev/requestedAt}')"
  handled="$(k -n "$ns" get ibp images -o jsonpath='{.status.lastHandledReconcileAt}')"
  trigger="$(k -n "$ns" get ibp images -o jsonpath='{.status.history[0].trigger} {.status.history[0].result}')"
  [[ -n "$annotation" && "$handled" == "$annotation" && "$trigger" == "OnDemand Succeeded" ]] ||
    { echo "requestedAt '$annotation', handled '$handled', history[0] '$trigger'"; return 1; }
}
check "backup --wait exits 0 and the on-demand run is recorded" backup_waits
check "backup of a policy that does not exist exits non-zero" bash -c "! '$KUBECTL' lifeboat backup nope -n $ns --wait"

# --- why ------------------------------------------------------------------------------
why_protected() {
  local got; got="$(lb why "$SOURCE_REGISTRY/$repo" -n "$ns")" || return 1
  grep -q "no loss reported; backed up to target(s) offsite" <<<"$got" &&
    grep -q "on node ${NODE_NAMES[0]} .*@$digest" <<<"$got" || { echo "$got"; return 1; }
}
check "why: a protected image names the target and the node that runs it" why_protected

# --- lost, explained, restored ------------------------------------------------------
check "the image is deleted from the source registry" \
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$repo/manifests/$digest"
lb backup images -n "$ns" --wait --timeout 30s >/dev/null 2>&1 || true # a full run re-checks the source
why_missing() {
  local got; got="$(lb why "$SOURCE_REGISTRY/$repo:1" -n "$ns")" || return 1
  grep -q "is MISSING from its source registry" <<<"$got" && grep -q "backups: offsite" <<<"$got" &&
    grep -q "nodes holding it: .*${NODE_NAMES[0]}" <<<"$got" &&
    grep -q "a restore would: copy it back from backup target offsite" <<<"$got" || { echo "$got"; return 1; }
}
check "why: the lost image is missing, held by target offsite and node ${NODE_NAMES[0]}" eventually 30 why_missing
restore_waits() {
  local out; out="$(lb restore --policy images --missing -n "$ns" --wait --timeout 90s)" || { echo "exit $?: $out"; return 1; }
  grep -q "^restored .* $digest -> .* from BackupRegistry offsite" <<<"$out" || { echo "$out"; return 1; }
  [[ "$(registry_digest "$repo" "$digest")" == "$digest" ]] || { echo "source registry does not serve $digest"; return 1; }
}
check "restore --policy --missing --wait prints the digest, which the source serves again" restore_waits
restore_fails() {
  local out rc=0
  out="$(lb restore "$SOURCE_REGISTRY/e2e/none-$RANDOM@sha256:$(printf '0%.0s' {1..64})" -n "$ns" --wait --timeout 45s)" || rc=$?
  [[ "$rc" == 1 ]] && grep -q '^failed: ImageOutOfScope' <<<"$out" || { echo "exit $rc: $out"; return 1; }
}
check "restore of a digest nothing holds fails (exit code 1, ImageOutOfScope)" restore_fails

summary kubectl-plugin
