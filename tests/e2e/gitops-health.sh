#!/usr/bin/env bash
# What Flux and Argo CD make of real Lifeboat objects: the operator runs,
# objects are brought into each state on the cluster (fresh, spec changed but
# not yet observed, progressing, ready, suspended, images missing, stalled,
# blocked on a missing Secret), fetched from the API server, and judged by
# hack/tools/lifeboat-health: kstatus (sigs.k8s.io/cli-utils, what Flux
# computes) and the Argo CD health scripts of config/gitops/argocd/argocd-cm.yaml
# in an embedded Lua interpreter.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="gitops-$RANDOM"
argocd_cm="$REPO_ROOT/config/gitops/argocd/argocd-cm.yaml"
work="$(mktemp -d)"
hang_pid=""
echo "GitOps health e2e (namespace $ns)"

cleanup() {
  [[ -n "$hang_pid" ]] && kill "$hang_pid" 2>/dev/null
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup

health_bin="$("$REPO_ROOT/hack/build-lifeboat-health.sh")" || { echo "cannot build lifeboat-health"; exit 1; }

# judge < OBJECT-JSON  ->  "kstatus/argocd", e.g. "Current/Healthy"
judge() { "$health_bin" --argocd-cm "$argocd_cm" | jq -r '"\(.kstatus.status)/\(.argocd.status)"'; }
# health_is KIND NAME WANT: the object as the API server has it now is judged WANT.
health_is() {
  local json got
  json="$(k -n "$ns" get "$1" "$2" -o json)" || return 1
  got="$(judge <<<"$json")" || return 1
  [[ "$got" == "$3" ]] || {
    echo "$1/$2 is $got, want $3"
    "$health_bin" --argocd-cm "$argocd_cm" <<<"$json"
    jq -c '{generation: .metadata.generation, status: .status | {observedGeneration, conditions: [.conditions[]? | {type, status, reason}]}}' <<<"$json"
    return 1
  }
}
# created_as FILE WANT: creates FILE's object and judges the create response,
# which is the stored object read back from etcd: nobody has reconciled it yet,
# whatever the operator does next.
created_as() {
  local json got
  json="$(k create -f "$1" -o json)" || return 1
  got="$(judge <<<"$json")"
  [[ "$got" == "$2" ]] || { echo "a fresh object is $got, want $2"; jq -c .status <<<"$json"; return 1; }
}
deploy_operator

# --- a namespace with one workload and backup credentials --------------------------
k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: web, image: $SOURCE_REGISTRY/demo/web:1.0}
YAML
# A second workload runs an image only this run uses, so deleting it from the
# source registry later harms nobody.
lost_repo="gitops/lost-$RANDOM"
check "a private copy of demo/worker:0.9 is pushed as $lost_repo:0.9" source_copy demo/worker:0.9 "$lost_repo:0.9"
lost_digest="$(registry_digest "$lost_repo" 0.9)"
k -n "$ns" run lost --image="$SOURCE_REGISTRY/$lost_repo:0.9" --restart=Never >/dev/null
check "the workloads run in $ns" k -n "$ns" wait --for=condition=Ready pod/web pod/lost --timeout=120s

policy() { # policy NAME TARGET-YAML [EXTRA-SPEC-YAML]: a policy manifest
  cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: $1, namespace: $ns}
spec:
  targets:
  - $2
${3:-}
YAML
}
backup_target="{name: backup, registry: $BACKUP_REGISTRY, repositoryTemplate: \"gitops/{policyNamespace}/{policyName}/{repository}\", secretRef: {name: backup-credentials}, caBundle: {configMapKeyRef: {name: backup-ca, key: ca.crt}}}"

# --- fresh: what the API server stores before the operator has looked --------------
policy ready "$backup_target" >"$work/ready.yaml"
check "fresh policy: kstatus InProgress, Argo CD Progressing" created_as "$work/ready.yaml" "InProgress/Progressing"
# Another policy like it, which stays unsuspended to see a loss later.
policy guard "$backup_target" | k apply -f - >/dev/null

# --- ready ---------------------------------------------------------------------------
check "ready policy (its image backed up): kstatus Current, Argo CD Healthy" \
  eventually 120 health_is ibp ready "Current/Healthy"
check "... because Ready is True (Protected)" condition_is "$ns" ibp/ready Ready "True Protected"

# --- a spec change the operator has not seen yet, then suspended ------------------
suspend_policy() {
  local json got
  # The patch response is the stored object: generation 2, status still about 1.
  json="$(k -n "$ns" patch ibp ready --type merge -p '{"spec":{"suspend":true}}' -o json)" || return 1
  got="$(judge <<<"$json")"
  [[ "$got" == "InProgress/Progressing" ]] || { echo "right after the spec change: $got"; jq -c '{g: .metadata.generation, o: .status.observedGeneration}' <<<"$json"; return 1; }
}
check "spec changed, not yet observed: kstatus InProgress, Argo CD Progressing" suspend_policy
check "suspended policy (observed): kstatus Current, Argo CD Suspended" \
  eventually 60 health_is ibp ready "Current/Suspended"

# --- backed up, but an image is gone from its source registry -----------------------
check "the guarding policy is ready: kstatus Current, Argo CD Healthy" \
  eventually 120 health_is ibp guard "Current/Healthy"
check "the private image is deleted from the source registry" \
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$lost_repo/manifests/$lost_digest"
check "the policy reports it missing (ImagesAvailable False, ImagesMissing)" eventually 90 condition_is "$ns" ibp/guard ImagesAvailable "False ImagesMissing"
check "images missing, backups fine: kstatus Current (Ready True), Argo CD Degraded" \
  health_is ibp guard "Current/Degraded"

# --- progressing: a backup run that is copying -------------------------------------
# A registry that accepts connections and never answers, on the host's side
# of the nodes' bridge: the run stays in progress (Reconciling=True) until the
# transfer engine's timeouts, long after these checks.
bridge_ip="${NODE_BRIDGE_CIDR%/*}"
python3 - "$bridge_ip" "$work/hang.port" <<'PY' &
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 0))
server.listen(64)
open(sys.argv[2], "w").write(str(server.getsockname()[1]))
held = []
while True:
    connection, _ = server.accept()
    held.append(connection)  # never answered, never closed
PY
hang_pid=$!
port_known() { [[ -s "$work/hang.port" ]]; }
check "a registry that never answers listens on $bridge_ip" eventually 10 port_known
# Only demo/web: for an image missing at its source (the one deleted above) the
# operator asks the targets whether they hold it before any run, and that
# question would hang too.
policy slow "{name: slow, registry: \"$bridge_ip:$(cat "$work/hang.port" 2>/dev/null)\"}" \
  '  selector: {images: {include: ["*/demo/web*"]}}' | k apply -f - >/dev/null
check "a backup run into it is in progress (Reconciling True, BackupRunning)" eventually 60 condition_is "$ns" ibp/slow Reconciling "True BackupRunning"
check "progressing policy: kstatus InProgress, Argo CD Progressing" health_is ibp slow "InProgress/Progressing"

# --- stalled: a spec the operator cannot act on ------------------------------------
policy bad-zone "$backup_target" '  schedule: "0 3 * * *"
  timeZone: Mars/Olympus_Mons' | k apply -f - >/dev/null
check "stalled policy (unknown time zone): kstatus Failed, Argo CD Degraded" \
  eventually 60 health_is ibp bad-zone "Failed/Degraded"
check "... because Stalled is True (InvalidTimeZone)" condition_is "$ns" ibp/bad-zone Stalled "True InvalidTimeZone"

# --- blocked, not stalled: a missing Secret ---------------------------------------
policy no-secret "{name: backup, registry: $BACKUP_REGISTRY, secretRef: {name: does-not-exist}}" | k apply -f - >/dev/null
check "policy waiting for a Secret: kstatus InProgress (Ready False), Argo CD Degraded" \
  eventually 60 health_is ibp no-secret "InProgress/Degraded"

# --- ImageRestore ------------------------------------------------------------------
web_digest="$(registry_digest demo/web 1.0)"
cat >"$work/restore.yaml" <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: restore-web, namespace: $ns}
spec:
  images: ["$SOURCE_REGISTRY/demo/web:1.0@$web_digest"]
  source: {type: BackupRegistry, backup: {policyName: ready}}
YAML
check "fresh restore: kstatus InProgress, Argo CD Progressing" created_as "$work/restore.yaml" "InProgress/Progressing"

observed() { [[ "$(k -n "$ns" get imagerestore restore-web -o jsonpath='{.status.observedGeneration}')" == 1 ]]; }
check "the restore controller observes the restore" eventually 30 observed
check "restored (the image from the backup registry): kstatus Current, Argo CD Healthy" \
  eventually 120 health_is imagerestore restore-web "Current/Healthy"
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: restore-nothing}
spec:
  images: ["$SOURCE_REGISTRY/gitops/never-existed@sha256:$(printf '0%.0s' {1..64})"]
  source: {type: BackupRegistry, backup: {policyName: ready}}
YAML
check "failed restore (no source holds the digest): kstatus Failed, Argo CD Degraded" \
  eventually 120 health_is imagerestore restore-nothing "Failed/Degraded"

# --- every Lifeboat object at once, as a List (what `flux`/Argo see in bulk) ---------
all_judged() {
  local want got
  want="$(k -n "$ns" get lifeboat -o name | wc -l)"
  got="$(k -n "$ns" get lifeboat -o json | "$health_bin" --argocd-cm "$argocd_cm" | jq -r '.kind + "/" + .name' | sort -u | wc -l)" || return 1
  [[ "$want" -ge 5 && "$got" == "$want" ]] || { echo "$got of $want objects judged"; return 1; }
}
check "every object of the namespace is judged from one List" all_judged

k -n "$ns" delete ibp slow --wait=false >/dev/null 2>&1
summary "gitops-health"
