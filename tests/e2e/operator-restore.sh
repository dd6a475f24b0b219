#!/usr/bin/env bash
# The operator's restore side on the real cluster. Images built for this run
# only (unique content, so exactly one node holds each) are run by
# Deployments pinned to a node, then deleted from the source registry:
#
# - a restore from the backup registry brings back the same digest, and a
#   restarted pod pulls it;
# - with no backup, the restore exports the image from the node that holds
#   it (not the other one) with a hardened Job, and a pod on the other node
#   pulls it;
# - an image no node holds fails with Stalled ImageNotFound and a clear message;
# - an export pod killed midway is retried and the image is restored once;
# - an operator restarted during a restore creates no second Job;
# - a policy with restore.automatic brings a lost image back by itself;
# - a multi-platform index (a copy of demo/multiarch) is backed up whole and,
#   deleted from the source with every platform manifest, restored whole.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="ir-e2e-$RANDOM"
base="e2e/restore-$RANDOM"
node1="${NODE_NAMES[0]}"
node2="${NODE_NAMES[1]}"
echo "operator restore e2e (namespace $ns, images under $SOURCE_REGISTRY/$base)"

work="$(mktemp -d)"
cleanup() {
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup

deploy_operator

# --- images only this run uses ----------------------------------------------------------
# make_image NAME BYTES: a busybox image with one random layer of its own.
make_image() { push_busybox_image "$base/$1:1" "$2"; }
names=(backup node killed restart auto)
build_images() {
  local spec
  for spec in backup:262144 node:262144 killed:8388608 restart:262144 auto:262144; do
    make_image "${spec%%:*}" "${spec##*:}" || return 1
  done
}
check "five single-use images are pushed" build_images
# (check runs its command in a subshell: what it learns is read again here.)
declare -A digest
for name in "${names[@]}"; do digest[$name]="$(registry_digest "$base/$name" 1)"; done
have_digests() { for name in "${names[@]}"; do [[ "${digest[$name]}" == sha256:* ]] || { echo "no digest for $name"; return 1; }; done; }
check "each has a digest" have_digests
ref() { echo "$SOURCE_REGISTRY/$base/$1:1@${digest[$1]}"; }

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"

# deployment NAME NODE: runs image NAME on NODE, pulling on every start.
deployment() { pinned_deployment "$1" "$2" "$SOURCE_REGISTRY/$base/$1:1"; }
{
  deployment backup "$node1"; deployment node "$node2"; deployment killed "$node1"
  deployment restart "$node2"; deployment auto "$node1"
} | k apply -n "$ns" -f - >/dev/null
workloads_run() {
  local d
  for d in backup node killed restart auto; do
    k -n "$ns" rollout status "deploy/$d" --timeout=120s >/dev/null || { echo "deploy/$d did not roll out"; return 1; }
  done
}
check "the workloads run on their nodes" workloads_run

# Policies: one backs up only the "backup" image, one only the "auto" image
# and restores automatically.
policy() { # policy NAME IMAGE [extra yaml]
  cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: $1}
spec:
  selector: {images: {include: ["**/${base#e2e/}/$2"]}}
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
${3:-}
---
YAML
}
{ policy backup backup; policy auto auto "  restore: {automatic: true}"; } | k apply -n "$ns" -f - >/dev/null
check "the backup policy becomes Ready (image in the backup registry)" k -n "$ns" wait --for=condition=Ready ibp/backup --timeout=120s

lose() { # lose NAME: delete the manifest (and its tag) from the source registry
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$base/$1/manifests/${digest[$1]}" >/dev/null || return 1
  [[ "$(manifest_status "$base/$1" "${digest[$1]}")" == 404 ]] || { echo "manifest still served"; return 1; }
}
restore() { # restore NAME IMAGE-REF [source yaml]
  k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata:
  name: $1
  labels: {team: checkout}
  annotations: {example.com/note: "not for Jobs"}
spec:
  images: ["$2"]
  ${3:-}
YAML
}
field() { k -n "$ns" get imagerestore "$1" -o jsonpath="$2"; }
image_field() { field "$1" "{.status.images[0].$2}"; }
restore_jobs() { # restore_jobs NAME -> names of its export Jobs
  local uid; uid="$(field "$1" '{.metadata.uid}')"
  k -n lifeboat-system get jobs -l "lifeboat.dev/restore-uid=$uid" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}
# restore_reconciles: how many ImageRestore reconciles the operator counted
# (lifeboat_reconciles_total; one operator replica, so one counter).
restore_reconciles() {
  local pod; pod="$(k -n lifeboat-system get pods -l app.kubernetes.io/component=operator --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')"
  k get --raw "/api/v1/namespaces/lifeboat-system/pods/$pod:18080/proxy/metrics" |
    awk '/^lifeboat_reconciles_total\{/ && /kind="ImageRestore"/ {n += $NF} END {print n + 0}'
}
events() { # events NAME REASON -> how many
  event_reasons "$ns" "$1" | tr ' ' '\n' | grep -cx "$2"
}
pod_pulls() { # pod_pulls NAME NODE IMAGE: a fresh pod on NODE pulls IMAGE and runs
  k -n "$ns" delete pod "$1" --ignore-not-found --wait=true >/dev/null 2>&1
  pinned_pod "$1" "$2" "$3" | k -n "$ns" apply -f - >/dev/null || return 1
  k -n "$ns" wait --for=condition=Ready "pod/$1" --timeout=90s
}

# --- 1. from the backup registry ----------------------------------------------------------
check "the backup image is deleted from the source registry" lose backup
reconciles_before="$(restore_reconciles)"
restore from-backup "$(ref backup)" "source: {type: Auto, backup: {policyName: backup}}"
check "restore from-backup becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/from-backup --timeout=90s
sleep 5 # re-entries after Ready count too
from_backup_reconciles=$(($(restore_reconciles) - reconciles_before))
# Before the restore controller ignored its own status writes it took 2.
check "... in one reconcile ($from_backup_reconciles): its own status write does not wake it again" test "$from_backup_reconciles" -le 1
from_backup_status() {
  local got
  got="$(image_field from-backup 'state') $(image_field from-backup 'source.kind')/$(image_field from-backup 'source.name') $(image_field from-backup 'restoredDigest') $(image_field from-backup 'digestPreserved')"
  [[ "$got" == "Restored BackupRegistry/backup ${digest[backup]} true" ]] || { echo "status: $got"; return 1; }
  [[ "$(field from-backup '{.status.progress.restored}/{.status.progress.total}')" == 1/1 ]] || return 1
  [[ -n "$(field from-backup '{.status.completionTime}')" ]] || { echo "no completionTime"; return 1; }
}
check "its status: Restored from backup target 'backup', same digest, digest preserved, completed" from_backup_status
check "the source registry serves the digest and the tag again" \
  test "$(registry_digest "$base/backup" 1)" == "${digest[backup]}"
restart_pulls() {
  k -n "$ns" rollout restart deploy/backup >/dev/null && k -n "$ns" rollout status deploy/backup --timeout=90s
}
check "the Deployment restarts and pulls it" restart_pulls
check "an ImageRestored event is recorded" test "$(events from-backup ImageRestored)" -ge 1

# --- 1b. a multi-platform index, whole ------------------------------------------------------
# A copy of demo/multiarch:1.0 (two platforms; only the amd64 one runs here)
# under this run's prefix: the same index digest, and deleting it harms nobody.
# (push-test-images.sh pushes it again when a garbage collection took its
# platform manifests, which no tag names.)
multi="$base/multiarch"
copy_multiarch() { "$REPO_ROOT/hack/images/push-test-images.sh" >/dev/null && source_copy demo/multiarch:1.0 "$multi:1"; }
check "demo/multiarch:1.0 is whole in the source registry and copied as $multi:1" copy_multiarch
digest[multiarch]="$(registry_digest "$multi" 1 || true)"
multi_children="$(curl -sf -H "$MANIFEST_ACCEPT" "http://$SOURCE_REGISTRY/v2/$multi/manifests/1" | jq -r '.manifests[]?.digest' || true)"
same_index() {
  local original; original="$(registry_digest demo/multiarch 1.0 || true)"
  [[ -n "$original" && "${digest[multiarch]}" == "$original" ]] || { echo "copy '${digest[multiarch]}', demo/multiarch '$original'"; return 1; }
  [[ "$(wc -w <<<"$multi_children")" == 2 ]] || { echo "platform manifests: $multi_children"; return 1; }
}
check "the copy is the same index (same digest), with two platform manifests" same_index
{ deployment multiarch "$node1"; policy multiarch multiarch; } | k apply -n "$ns" -f - >/dev/null
check "a Deployment runs the index" k -n "$ns" rollout status deploy/multiarch --timeout=120s
runs_index() {
  local id; id="$(k -n "$ns" get pods -l app=multiarch -o jsonpath='{.items[0].status.containerStatuses[0].imageID}')"
  [[ "${id##*@}" == "${digest[multiarch]}" ]] || { echo "the pod reports $id, the index is ${digest[multiarch]}"; return 1; }
}
check "its pod reports the index digest (not its platform's)" runs_index
check "the multiarch policy becomes Ready" k -n "$ns" wait --for=condition=Ready ibp/multiarch --timeout=120s
multi_backup="e2e/$ns/${SOURCE_REGISTRY/:/-}/$multi"
# whole_at GET REPO: REPO serves the index and each platform manifest under
# their digests, as GET (registry_digest or backup_digest) reads them.
whole_at() {
  local get="$1" repo="$2" d got
  for d in "${digest[multiarch]}" $multi_children; do
    got="$("$get" "$repo" "$d")"
    [[ "$got" == "$d" ]] || { echo "$repo@$d: '$got'"; return 1; }
  done
}
backed_up_whole() {
  whole_at backup_digest "$multi_backup" || return 1
  # Every blob of every platform, read and re-hashed by skopeo.
  skopeo copy --all --quiet --src-creds "$BACKUP_CREDS" --src-cert-dir "$BACKUP_CERT_DIR" \
    "docker://$BACKUP_REGISTRY/$multi_backup@${digest[multiarch]}" "oci:$work/multi-backup:x"
}
check "the backup holds the index under its digest, every platform manifest and every blob" backed_up_whole
lose_whole() {
  lose multiarch || return 1
  local d
  for d in $multi_children; do
    curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$multi/manifests/$d" >/dev/null || return 1
    [[ "$(manifest_status "$multi" "$d")" == 404 ]] || { echo "$d still served"; return 1; }
  done
}
check "the index and both platform manifests are deleted from the source registry" lose_whole
restore multiarch "$(ref multiarch)" "source: {type: BackupRegistry, backup: {policyName: multiarch}}"
check "restore multiarch (from the backup registry) becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/multiarch --timeout=120s
multi_status() {
  local got
  got="$(image_field multiarch 'state') $(image_field multiarch 'source.kind')/$(image_field multiarch 'source.name') $(image_field multiarch 'restoredDigest') $(image_field multiarch 'digestPreserved')"
  [[ "$got" == "Restored BackupRegistry/backup ${digest[multiarch]} true" ]] || { echo "status: $got"; return 1; }
}
check "its status: Restored from the policy's backup target 'backup', the index digest preserved" multi_status
restored_whole() {
  whole_at registry_digest "$multi" || return 1
  [[ "$(registry_digest "$multi" 1)" == "${digest[multiarch]}" ]] || { echo "the tag is not back"; return 1; }
  skopeo copy --all --quiet --src-tls-verify=false "docker://$SOURCE_REGISTRY/$multi@${digest[multiarch]}" "oci:$work/multi-restored:x"
}
check "the source serves the index, its tag and both platforms again, every blob readable" restored_whole

# --- 2. from the node that holds it ---------------------------------------------------------
lose_with_blobs() {
  lose node || return 1
  # Blobs go too, so every byte must come back from the node.
  source_garbage_collect
}
check "the node image is deleted from the source registry and garbage-collected" lose_with_blobs
reconciles_before="$(restore_reconciles)"
# Every Job created while the restore runs, as the API server announces them.
timeout 150 "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" -n lifeboat-system get jobs --watch-only \
  -o 'custom-columns=NAME:.metadata.name,NODE:.metadata.labels.lifeboat\.dev/node' --no-headers \
  >"$work/from-node-jobs" 2>/dev/null &
jobs_watch=$!
sleep 0.5
restore from-node "$(ref node)"
check "restore from-node (no backup holds it) becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/from-node --timeout=120s
kill "$jobs_watch" 2>/dev/null; wait "$jobs_watch" 2>/dev/null || true
one_round_on_the_holder() {
  # node2's kubelet lists the digest in status.images, or the namespace's
  # pod on node2 runs it: either points at node2, so the export Job goes
  # there at once, with no inventory Job on any node (one round of Jobs).
  local seen; seen="$(awk '{print $1, $2}' "$work/from-node-jobs" | sort -u)"
  grep -q '^lifeboat-inventory-' <<<"$seen" && { echo "inventory Jobs were created: $seen"; return 1; }
  local mine; mine="$(grep '^lifeboat-restore-from-node-' <<<"$seen")"
  [[ -n "$mine" ]] || { echo "no export Job seen: $seen"; return 1; }
  ! grep -qv " $node2\$" <<<"$mine" || { echo "an export Job off $node2: $mine"; return 1; }
}
check "one round of Jobs: an export Job on $node2 only, no inventory Job" one_round_on_the_holder
sleep 5 # re-entries after Ready count too
from_node_reconciles=$(($(restore_reconciles) - reconciles_before))
# Creation, the export Job's end (before: 8, woken
# by its own status writes, every Job change and a 2 s / 5 s poll).
check "... in at most 6 reconciles ($from_node_reconciles): woken by finished Jobs, not by polls or its own writes" test "$from_node_reconciles" -le 6
# $node2 discards compressed layers once unpacked (hack/cluster/up.sh), as
# managed clusters' nodes often do: what it holds comes back rebuilt, under a
# new digest, and the status says so (docs/restore.md).
from_node_status() {
  local got restored
  got="$(image_field from-node 'state') $(image_field from-node 'source.kind')/$(image_field from-node 'source.name') $(image_field from-node 'requestedDigest') $(image_field from-node 'digestPreserved')"
  [[ "$got" == "Restored NodeCache/$node2 ${digest[node]} false" ]] || { echo "status: $got (want the image from $node2, not $node1, rebuilt)"; return 1; }
  restored="$(image_field from-node 'restoredDigest')"
  [[ "$restored" == sha256:* && "$restored" != "${digest[node]}" ]] || { echo "restoredDigest '$restored'"; return 1; }
  [[ "$(registry_digest "$base/node" 1)" == "$restored" ]] || { echo "the tag is not the rebuilt image"; return 1; }
}
check "it was exported from $node2, which holds it (not $node1): rebuilt, both digests reported, the tag serves it" from_node_status
job="$(image_field from-node jobName)"
job_is_hardened() {
  local j; j="$(k -n lifeboat-system get job "$job" -o json)" || { echo "no Job $job"; return 1; }
  jq -e --arg node "$node2" '
    .spec.backoffLimit > 0 and .spec.activeDeadlineSeconds > 0 and .spec.ttlSecondsAfterFinished > 0 and
    (.spec.podFailurePolicy.rules | length) >= 2 and
    (.spec.template.spec | .automountServiceAccountToken == false and (has("nodeName") | not) and
      .affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key == "metadata.name" and
      .affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values == [$node] and
      (.volumes[] | select(.name == "containerd") | .hostPath.type) == "Socket") and
    (.spec.template.spec.containers[0].securityContext | .readOnlyRootFilesystem == true and .capabilities.drop == ["ALL"]) and
    (.metadata.labels | has("team") | not) and (.metadata.annotations | has("example.com/note") | not) and
    (.metadata.name | length) <= 63' <<<"$j" >/dev/null || { echo "$j" | jq '.metadata, .spec'; return 1; }
}
check "the export Job ($job) is pinned by node affinity, hardened, bounded, and carries none of the CR's labels" job_is_hardened
# The content store is mounted read-only and blobs come from its files, not
# through containerd's API (docs/node-exporter.md).
read_content_files() {
  local j logs
  j="$(k -n lifeboat-system get job "$job" -o json)" || { echo "no Job $job"; return 1; }
  jq -e '.spec.template.spec as $pod |
    ($pod.volumes[] | select(.name == "containerd-content") | .hostPath.type == "Directory") and
    ($pod.containers[0].volumeMounts[] | select(.name == "containerd-content") | .readOnly == true)' <<<"$j" >/dev/null ||
    { echo "no read-only content store mount:"; jq '.spec.template.spec.volumes' <<<"$j"; return 1; }
  logs="$(k -n lifeboat-system logs "job/$job" 2>&1)"
  grep -q "content store file" <<<"$logs" ||
    { echo "the export read no blob from a content file:"; tail -n 20 <<<"$logs"; return 1; }
}
check "... mounts the node's content store read-only and reads blobs from its files" read_content_files
check "a pod on $node1 (which never had it) pulls the rebuilt image by its tag" pod_pulls repull "$node1" "$SOURCE_REGISTRY/$base/node:1"

# --- 3. on no node ------------------------------------------------------------------------
# In the operator's namespace: a team's namespace may not even ask for a
# digest none of its pods ran (tests/e2e/tenancy.sh), so no node is asked there.
tenant_ns="$ns"
ns=lifeboat-system
nowhere_name="nowhere-${base##*-}"
nowhere="$SOURCE_REGISTRY/$base/nowhere:1@sha256:$(head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1)"
restore "$nowhere_name" "$nowhere"
check "an image no node holds: Stalled ImageNotFound" eventually 90 condition_is "$ns" "imagerestore/$nowhere_name" Stalled "True ImageNotFound"
clear_message() {
  local ready message
  ready="$(condition_of "$ns" "imagerestore/$nowhere_name" Ready)"
  message="$(field "$nowhere_name" '{.status.conditions[?(@.type=="Stalled")].message}')"
  [[ "$ready" == "False ImageNotFound" ]] || { echo "Ready: $ready"; return 1; }
  [[ "$message" == *"no node holds"* && "$message" == *"$node1"* && "$message" == *"$node2"* && "$message" == *"backup"* ]] ||
    { echo "message: $message"; return 1; }
  [[ "$(image_field "$nowhere_name" state)/$(image_field "$nowhere_name" reason)" == Failed/ImageNotFound ]]
}
check "... Ready False, and the message says where it looked" clear_message
nowhere_columns() {
  local table; table="$(k -n "$ns" get imagerestores "$nowhere_name")"
  grep -Eq "^$nowhere_name +False +ImageNotFound +0 +1 " <<<"$table" || { echo "$table"; return 1; }
}
check "kubectl get imagerestores shows a stalled restore's state, reason and counts" nowhere_columns
k -n "$ns" delete imagerestore "$nowhere_name" --wait=false >/dev/null 2>&1
ns="$tenant_ns"

# --- 4. an export pod killed midway -----------------------------------------------------
check "the killed image is deleted from the source registry" lose killed
kill_first_pod() {
  # The watch runs before the restore exists, so it sees the Job's first pod
  # the moment it is created (a watch started after the restore lost the race
  # to an 8 MiB export under load: the pod had finished before the kill). It
  # is killed outright (node-exporter is PID 1 and would ignore SIGTERM).
  local seen="$work/killed-watch" pod="" watcher
  timeout 120 "$KUBECTL" -n lifeboat-system get pods -l "lifeboat.dev/restore-namespace=$ns" --watch -o name >"$seen" 2>/dev/null &
  watcher=$!
  sleep 1.5
  restore killed "$(ref killed)" "source: {type: NodeCache}"
  for _ in $(seq 1 600); do
    pod="$(grep -m1 '^pod/lifeboat-restore-killed-' "$seen")" && break
    sleep 0.1
  done
  [[ -n "$pod" ]] && k -n lifeboat-system delete "$pod" --grace-period=0 --force --wait=false >/dev/null 2>&1
  kill "$watcher" 2>/dev/null
  [[ -n "$pod" ]] || { echo "no export pod appeared"; return 1; }
  echo "${pod#pod/}" >"$work/killed-pod"
}
check "the first export pod is killed as soon as it exists" kill_first_pod
check "restore killed still becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/killed --timeout=180s
completed_once() {
  local jobs killed_pod; jobs="$(restore_jobs killed)"; killed_pod="$(cat "$work/killed-pod")"
  [[ "$(wc -l <<<"$jobs")" == 1 ]] || { echo "jobs: $jobs"; return 1; }
  # The restore reads the result from the pod's exit, which can be before the
  # Job controller counts the pod: give it a few seconds to agree.
  local j
  for _ in $(seq 1 50); do
    j="$(k -n lifeboat-system get job "$jobs" -o json)"
    [[ "$(jq -r '.status.succeeded' <<<"$j")" == 1 ]] && break
    sleep 0.2
  done
  [[ "$(jq -r '.status.succeeded' <<<"$j")" == 1 ]] || { echo "succeeded: $(jq -c .status <<<"$j")"; return 1; }
  local winner; winner="$(k -n lifeboat-system get pods -l "job-name=$jobs" --field-selector=status.phase=Succeeded -o jsonpath='{.items[*].metadata.name}')"
  [[ -n "$winner" && "$winner" != "$killed_pod" ]] || { echo "succeeded pod '$winner', killed '$killed_pod'"; return 1; }
  [[ "$(events killed ImageRestored)" == 1 ]] || { echo "ImageRestored events: $(events killed ImageRestored)"; return 1; }
  [[ "$(registry_digest "$base/killed" 1)" == "${digest[killed]}" ]]
}
check "the Job retried in a new pod, succeeded once, one ImageRestored event, the digest is back" completed_once

# --- 5. the operator restarted during a restore -----------------------------------------
check "the restart image is deleted from the source registry" lose restart
restore restart "$(ref restart)"
job_named() { [[ -n "$(image_field restart jobName)" ]]; }
check "the restore names its export Job" eventually 60 job_named
k -n lifeboat-system delete pod -l app.kubernetes.io/component=operator --wait=false >/dev/null
check "the operator comes back" k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s
check "restore restart becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/restart --timeout=120s
one_job() {
  local jobs; jobs="$(restore_jobs restart)"
  [[ "$(wc -l <<<"$jobs")" == 1 && "$jobs" == "$(image_field restart jobName)" ]] || { echo "jobs: $jobs"; return 1; }
}
check "exactly one export Job exists for it" one_job

# --- 6. automatic restore from a policy ---------------------------------------------------
check "the auto policy becomes Ready" k -n "$ns" wait --for=condition=Ready ibp/auto --timeout=60s
check "the auto image is deleted from the source registry" lose auto
auto_name() { k -n "$ns" get imagerestores -l lifeboat.dev/policy=auto -o jsonpath='{.items[0].metadata.name}'; }
auto_created() { [[ -n "$(auto_name)" ]]; }
check "the policy creates an ImageRestore for the lost image" eventually 120 auto_created
auto_restore="$(auto_name)"
auto_closed() {
  [[ "$(k -n "$ns" get imagerestore "$auto_restore" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] || return 1
  [[ "$(registry_digest "$base/auto" 1)" == "${digest[auto]}" ]] || return 1
  [[ "$(k -n "$ns" get ibp auto -o jsonpath='{.status.automaticRestore.name} {.status.automaticRestore.ready}')" == "$auto_restore True" ]]
}
check "... which restores it, and the policy reports the automatic restore Ready" eventually 120 auto_closed
owned_by_policy() {
  [[ "$(k -n "$ns" get imagerestore "$auto_restore" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')" == ImageBackupPolicy/auto ]]
}
check "the automatic restore is owned by its policy" owned_by_policy
# Lost again once the policy has seen it back: the finished restore is
# replaced by a new one of the same name, which brings it back again.
first_uid="$(k -n "$ns" get imagerestore "$auto_restore" -o jsonpath='{.metadata.uid}')"
seen_back() { [[ "$(k -n "$ns" get ibp auto -o jsonpath='{.status.missingImages}')" == "" ]]; }
check "the policy sees the auto image back (missingImages empty)" eventually 90 seen_back
check "the auto image is lost again" lose auto
restored_again() {
  local uid; uid="$(k -n "$ns" get imagerestore "$auto_restore" -o jsonpath='{.metadata.uid}')"
  [[ -n "$uid" && "$uid" != "$first_uid" ]] || { echo "restore uid '$uid' (first $first_uid)"; return 1; }
  auto_closed
}
check "... which replaces the finished restore, and the image comes back again" eventually 180 restored_again

# --- metrics and the table ----------------------------------------------------------------
metrics_exported() {
  local m; m="$(operator_metrics)" || return 1
  grep -q 'lifeboat_restores_total{.*result="Succeeded"' <<<"$m" &&
  grep -q 'lifeboat_restore_duration_seconds_bucket{' <<<"$m" || { grep lifeboat_restore <<<"$m"; return 1; }
}
check "metrics: restores by result and time to restore" eventually 30 metrics_exported
printer_columns() {
  local table; table="$(k -n "$ns" get imagerestores from-backup)"
  grep -Eq '^from-backup +True +Succeeded +1 +1 ' <<<"$table" || { echo "$table"; return 1; }
}
check "kubectl get imagerestores shows a finished restore's state, reason and counts" printer_columns

# Deleting a restore outside the operator's namespace cleans up its Jobs (finalizer).
cleanup_on_delete() {
  local uid; uid="$(field from-node '{.metadata.uid}')"
  k -n "$ns" delete imagerestore from-node --timeout=60s >/dev/null || return 1
  [[ -z "$(k -n lifeboat-system get jobs -l "lifeboat.dev/restore-uid=$uid" -o name)" ]]
}
check "deleting a restore deletes its export Jobs" eventually 30 cleanup_on_delete

summary "operator-restore"
