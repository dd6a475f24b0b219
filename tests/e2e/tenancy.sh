#!/usr/bin/env bash
# Tenants cannot reach each other (issue 14), tried on the real cluster the
# way a tenant would attack it:
#
# - namespace "victim" runs a private image, then loses it from the registry
#   (only a node's containerd still holds it);
# - namespace "attacker" has its own policy, Secret and image. Its policy
#   reports CredentialsForbidden until it creates the RoleBinding, then
#   becomes Ready with no operator restart;
# - its ImageRestores naming the victim's digest (as is, and under its own
#   repository name), from NodeCache and from BackupRegistry, are refused
#   (Stalled ImageOutOfScope) with no Job created and nothing pushed; a
#   toleration outside the admin's allowlist is refused (NodeAccessNotAllowed);
# - its restore of its own lost image works (the rule refuses only what it
#   must), and that export Job's pod is hardened: seccomp RuntimeDefault,
#   requests and limits, no token, read-only root; Pod Security `restricted`
#   objects only to what a containerd reader cannot do without (hostPath,
#   root);
# - the operator cannot read Secrets in namespaces that did not grant it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

started=$SECONDS
victim="tenancy-victim-$RANDOM"
attacker="tenancy-attacker-$RANDOM"
base="e2e/tenancy-$RANDOM"
node1="${NODE_NAMES[0]}"
node2="${NODE_NAMES[1]}"
sa="system:serviceaccount:lifeboat-system:lifeboat-operator"
echo "tenancy e2e (victim $victim, attacker $attacker, images under $SOURCE_REGISTRY/$base)"

work="$(mktemp -d)"
cleanup() {
  k delete namespace "$victim" "$attacker" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup

# --- the operator ------------------------------------------------------------------
check "Lifeboat images build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh"
check "CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd"
check "operator manifests apply" k apply -f "$REPO_ROOT/config/operator"
k -n lifeboat-system rollout restart deploy/lifeboat-operator >/dev/null
check "the operator becomes available" k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s

# --- two teams, two private images ------------------------------------------------------
make_image() { push_busybox_image "$base/$1:1" 262144; } # make_image NAME: a random layer of its own
push_both() { make_image private-app && make_image own-app; }
check "the victim's and the attacker's images are pushed" push_both
victim_digest="$(registry_digest "$base/private-app" 1)"
own_digest="$(registry_digest "$base/own-app" 1)"
check "both have digests" test "${victim_digest:0:7}${own_digest:0:7}" == "sha256:sha256:"

k create namespace "$victim" >/dev/null
k create namespace "$attacker" >/dev/null
run() { # run NAMESPACE NAME NODE: a Deployment of NAME's own image, pinned to NODE
  pinned_deployment "$2" "$3" "$SOURCE_REGISTRY/$base/$2:1" | k -n "$1" apply -f - >/dev/null
}
run "$victim" private-app "$node1"
run "$attacker" own-app "$node2"
both_run() {
  k -n "$victim" rollout status deploy/private-app --timeout=120s && k -n "$attacker" rollout status deploy/own-app --timeout=120s
}
check "the victim's pod runs on $node1, the attacker's on $node2" both_run

# --- Secrets only where granted -------------------------------------------------------------
can_i() { k auth can-i --as="$sa" "$@" 2>/dev/null; }
no_cluster_wide_read() {
  [[ "$(can_i get secrets -n default)" == no && "$(can_i get secrets -n kube-system)" == no &&
     "$(can_i get secrets -n "$attacker")" == no && "$(can_i get configmaps -n default)" == no &&
     "$(can_i get secrets -n lifeboat-system)" == yes ]]
}
check "can-i get secrets -n default / kube-system / a fresh tenant: no (own namespace: yes)" no_cluster_wide_read

# The attacker team's own backup set-up, without the RoleBinding yet.
backup_registry_secrets "$attacker"
k -n "$attacker" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: own}
spec:
  selector: {images: {include: ["**/${base#e2e/}/own-app"]}}
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
YAML
ready_of() { # ready_of KIND NS NAME -> "status reason"
  k -n "$2" get "$1" "$3" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}'
}
forbidden() {
  local got message
  got="$(ready_of ibp "$attacker" own)"
  [[ "$got" == "False CredentialsForbidden" ]] || { echo "Ready: $got"; return 1; }
  message="$(k -n "$attacker" get ibp own -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
  [[ "$message" == *"kubectl create rolebinding lifeboat-credentials-reader --namespace $attacker --clusterrole lifeboat-credentials-reader --serviceaccount lifeboat-system:lifeboat-operator"* ]] ||
    { echo "message: $message"; return 1; }
}
check "without a RoleBinding the tenant policy is Ready False CredentialsForbidden, naming the RoleBinding to create" eventually 60 forbidden
operator_pod="$(k -n lifeboat-system get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].metadata.name}')"
# The tenant does what the message says (tests/e2e/lib.sh grant_credentials).
grant_credentials "$attacker"
check "after the tenant creates the RoleBinding the policy becomes Ready" \
  k -n "$attacker" wait --for=condition=Ready ibp/own --timeout=120s
same_operator() {
  [[ "$(k -n lifeboat-system get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].metadata.name}')" == "$operator_pod" ]] &&
  [[ "$(k -n lifeboat-system get pod "$operator_pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')" == 0 ]]
}
check "... with no operator restart" same_operator
check "the grant is the attacker's namespace only: can-i get secrets -n victim is still no" \
  test "$(can_i get secrets -n "$victim")" == no

# --- the theft attempts of issue 14 -------------------------------------------------------------
lose() { # lose NAME DIGEST: the manifest goes from the source registry
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$base/$1/manifests/$2" >/dev/null
}
lose_both() { lose private-app "$victim_digest" && lose own-app "$own_digest"; }
check "the victim's and the attacker's images are deleted from the source registry" lose_both
restore() { # restore NAME IMAGE SOURCE-YAML
  k -n "$attacker" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: $1}
spec:
  images: ["$2"]
  source: $3
YAML
}
loot="$SOURCE_REGISTRY/e2e/attacker-loot-$RANDOM"
restore by-digest "$SOURCE_REGISTRY/$base/private-app@$victim_digest" "{type: NodeCache}"
restore renamed "$loot@$victim_digest" "{type: NodeCache}"
restore from-backup "$loot@$victim_digest" "{type: BackupRegistry, backup: {policyName: own}}"
restore wide-toleration "$SOURCE_REGISTRY/$base/own-app@$own_digest" \
  "{type: NodeCache, nodeCache: {tolerations: [{operator: Exists}]}}"
stalled_as() { # stalled_as NAME REASON WORD...: Stalled True REASON, the message names each WORD
  local got message word
  got="$(k -n "$attacker" get imagerestore "$1" -o jsonpath='{.status.conditions[?(@.type=="Stalled")].status} {.status.conditions[?(@.type=="Stalled")].reason}')"
  [[ "$got" == "True $2" ]] || { echo "Stalled: $got"; return 1; }
  message="$(k -n "$attacker" get imagerestore "$1" -o jsonpath='{.status.conditions[?(@.type=="Stalled")].message}')"
  for word in "${@:3}"; do
    [[ "$message" == *"$word"* ]] || { echo "message lacks $word: $message"; return 1; }
  done
}
check "the victim's digest by digest alone (NodeCache): Stalled ImageOutOfScope naming the image" \
  eventually 60 stalled_as by-digest ImageOutOfScope "$victim_digest" "restore scope"
check "the victim's digest under the attacker's repository (NodeCache): refused the same way" \
  eventually 60 stalled_as renamed ImageOutOfScope "$victim_digest" "$loot"
check "the victim's digest from the attacker's backup target (BackupRegistry): refused the same way" \
  eventually 60 stalled_as from-backup ImageOutOfScope "$victim_digest"
check "a toleration outside the admin's allowlist ({operator: Exists}): Stalled NodeAccessNotAllowed" \
  eventually 60 stalled_as wide-toleration NodeAccessNotAllowed "allowlist" "Exists"
nothing_ran() {
  local name uid jobs
  for name in by-digest renamed from-backup wide-toleration; do
    uid="$(k -n "$attacker" get imagerestore "$name" -o jsonpath='{.metadata.uid}')"
    jobs="$(k -n lifeboat-system get jobs,pods -l "lifeboat.dev/restore-uid=$uid" -o name)"
    [[ -z "$jobs" ]] || { echo "$name created: $jobs"; return 1; }
    # No image entry: no node was asked, nothing is pending.
    [[ -z "$(k -n "$attacker" get imagerestore "$name" -o jsonpath='{.status.images}')" ]] ||
      { echo "$name has image entries"; return 1; }
  done
  # And nothing from the victim's node landed anywhere the attacker reads.
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -I "http://$SOURCE_REGISTRY/v2/${loot#"$SOURCE_REGISTRY"/}/manifests/$victim_digest")" == 404 ]] ||
    { echo "the loot repository serves the victim's digest"; return 1; }
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -I "http://$SOURCE_REGISTRY/v2/$base/private-app/manifests/$victim_digest")" == 404 ]] ||
    { echo "the victim's image was pushed back by someone"; return 1; }
}
check "no export or inventory Job for any refused restore, no image entry, no byte pushed" nothing_ran
sleep 10
check "... and still none ten seconds later (the refusal holds on requeue)" nothing_ran

# --- what the tenant may do ---------------------------------------------------------------
restore own "$SOURCE_REGISTRY/$base/own-app@$own_digest" "{type: NodeCache, nodeCache: {nodeSelector: {kubernetes.io/hostname: $node2}}}"
check "the attacker's restore of its own lost image (its pod ran it) becomes Ready" \
  k -n "$attacker" wait --for=condition=Ready imagerestore/own --timeout=180s
# ($node2 discards compressed layers once unpacked: the export rebuilds them.)
own_from_node() {
  local got
  got="$(k -n "$attacker" get imagerestore own -o jsonpath='{.status.images[0].state} {.status.images[0].source.kind}/{.status.images[0].source.name} {.status.images[0].requestedDigest} {.status.images[0].digestPreserved}')"
  [[ "$got" == "Restored NodeCache/$node2 $own_digest false" ]] || { echo "status: $got"; return 1; }
}
check "... exported from $node2, rebuilt from its unpacked layers and reported so" own_from_node
job="$(k -n "$attacker" get imagerestore own -o jsonpath='{.status.images[0].jobName}')"
job_pod_hardened() {
  local uid pod
  uid="$(k -n "$attacker" get imagerestore own -o jsonpath='{.metadata.uid}')"
  pod="$(k -n lifeboat-system get pods -l "lifeboat.dev/restore-uid=$uid" -o json | jq '.items[0]')"
  [[ "$pod" != null ]] || { echo "no export pod for Job $job"; return 1; }
  jq -e '.spec.securityContext.seccompProfile.type == "RuntimeDefault" and
    .spec.automountServiceAccountToken == false and
    (.spec.containers[0] | .securityContext.readOnlyRootFilesystem == true and
      .securityContext.allowPrivilegeEscalation == false and .securityContext.privileged == false and
      .securityContext.capabilities.drop == ["ALL"] and
      .resources.requests.cpu == "100m" and .resources.requests.memory == "64Mi" and
      .resources.limits.cpu == "1" and .resources.limits.memory == "256Mi") and
    ([.spec.volumes[] | select(.hostPath) | .hostPath.type] | sort == ["Directory", "Socket"]) and
    ([.spec.volumes[] | select(.hostPath.type == "Directory") | .name] as $dirs |
      [.spec.containers[0].volumeMounts[] | select(.name as $n | $dirs | index($n)) | .readOnly] == [true])' <<<"$pod" >/dev/null ||
    { jq '.spec | {securityContext, automountServiceAccountToken, containers: [.containers[] | {securityContext, resources}], volumes}' <<<"$pod"; return 1; }
  jq '{apiVersion: "v1", kind: "Pod", metadata: {name: "pss-probe", labels: {}}, spec: .spec | del(.nodeName)}' <<<"$pod" >"$work/probe.json"
}
check "the export Job's pod: seccomp RuntimeDefault, requests and limits, no token, read-only root, no capabilities, host paths only the socket and the content store (read-only)" job_pod_hardened
restricted_only_for_the_socket() {
  # Server-side dry run in a namespace that warns at `restricted`: the API
  # server lists every check the pod fails.
  local warnings
  k label --overwrite namespace "$attacker" pod-security.kubernetes.io/warn=restricted >/dev/null
  warnings="$(k -n "$attacker" create --dry-run=server -f "$work/probe.json" 2>&1 >/dev/null)"
  k label namespace "$attacker" pod-security.kubernetes.io/warn- >/dev/null
  echo "$warnings"
  [[ "$warnings" == *"hostPath"* ]] || return 1
  ! grep -Eiq 'seccompProfile|allowPrivilegeEscalation|unrestricted capabilities|privileged \(' <<<"$warnings"
}
check "Pod Security restricted: the export pod fails only what reading containerd needs (hostPath socket and content store, root), not seccomp, escalation or capabilities" \
  restricted_only_for_the_socket

summary tenancy
status=$?
echo "  measured: $((SECONDS - started)) s from taking the e2e lock to the end"
exit "$status"
