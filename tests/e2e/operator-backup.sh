#!/usr/bin/env bash
# The operator's backup side on the real cluster: workloads of every kind run
# images from the source registry, an ImageBackupPolicy copies them into the
# backup registry (checked there by digest), a new Deployment is backed up
# within seconds, an image deleted from the source registry is reported
# missing with the node that runs it, and invalid schedules, time zones and
# missing Secrets are reported as designed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="ibp-e2e-$RANDOM"
other="ibp-other-$RANDOM"
lost_repo="e2e/lost-$RANDOM"
echo "operator backup e2e (namespace $ns)"

cleanup() {
  k delete namespace "$ns" "$other" --wait=false --ignore-not-found >/dev/null 2>&1
}
on_exit cleanup

# Where the policy below puts a source repository in the backup registry.
backup_repo() { echo "e2e/$ns/127.0.0.1-5001/$1"; }
# Passes when the backup registry holds repo@digest.
backup_has() {
  local repo="$1" digest="$2" got
  [[ -n "$digest" ]] || { echo "no digest given for $repo"; return 1; }
  got="$(backup_digest "$(backup_repo "$repo")" "$digest")"
  [[ "$got" == "$digest" ]] || { echo "backup has '$got' for $(backup_repo "$repo")@$digest"; return 1; }
  # And skopeo, a client that is not ours, reads it too.
  skopeo inspect --raw --creds "$BACKUP_CREDS" --cert-dir "$BACKUP_CERT_DIR" \
    "docker://$BACKUP_REGISTRY/$(backup_repo "$repo")@$digest" >/dev/null
}

# The digest a pod's container reports (status.containerStatuses[].imageID).
pod_digest() {
  local selector="$1" field="$2" name="$3"
  k -n "$ns" get pods -l "$selector" -o jsonpath="{.items[0].status.$field[?(@.name==\"$name\")].imageID}" | sed 's/.*@//'
}

deploy_operator

# --- an image only this run uses, so deleting it harms nobody ----------------------
check "a private copy of demo/worker:0.9 is pushed as $lost_repo:0.9" source_copy demo/worker:0.9 "$lost_repo:0.9"
lost_digest="$(registry_digest "$lost_repo" 0.9)"

# --- workloads of every kind ---------------------------------------------------------
k create namespace "$ns" >/dev/null
k create namespace "$other" >/dev/null
backup_registry_access "$ns"
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: ${NODE_NAMES[0]}}
      terminationGracePeriodSeconds: 1
      initContainers:
      - {name: init, image: $SOURCE_REGISTRY/demo/init:1, command: [/bin/sh, -c, "true"]}
      containers:
      - {name: web, image: $SOURCE_REGISTRY/demo/web:1.0}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: api}
spec:
  replicas: 1
  serviceName: api
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: api, image: $SOURCE_REGISTRY/demo/api:2.3}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: sidecar}
spec:
  selector: {matchLabels: {app: sidecar}}
  template:
    metadata: {labels: {app: sidecar}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: sidecar, image: $SOURCE_REGISTRY/demo/sidecar:3}
---
apiVersion: batch/v1
kind: Job
metadata: {name: batch}
spec:
  backoffLimit: 0
  template:
    metadata: {labels: {app: batch}}
    spec:
      restartPolicy: Never
      containers:
      - {name: batch, image: $SOURCE_REGISTRY/demo/batch:5, command: [/bin/sh, -c, "sleep 3600"]}
---
# Between runs: only the template names the image (by tag).
apiVersion: batch/v1
kind: CronJob
metadata: {name: cron}
spec:
  schedule: "0 0 1 1 *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: cron, image: $SOURCE_REGISTRY/demo/cron:1}
---
# Scaled to zero: only the template names the image (by tag).
apiVersion: apps/v1
kind: Deployment
metadata: {name: idle}
spec:
  replicas: 0
  selector: {matchLabels: {app: idle}}
  template:
    metadata: {labels: {app: idle}}
    spec:
      containers:
      - {name: idle, image: $SOURCE_REGISTRY/demo/web:1.1}
---
# Runs the image that will be lost, on the second node.
apiVersion: apps/v1
kind: Deployment
metadata: {name: lost}
spec:
  replicas: 1
  selector: {matchLabels: {app: lost}}
  template:
    metadata: {labels: {app: lost}}
    spec:
      nodeSelector: {kubernetes.io/hostname: ${NODE_NAMES[1]}}
      terminationGracePeriodSeconds: 1
      containers:
      - {name: lost, image: $SOURCE_REGISTRY/$lost_repo:0.9}
YAML
# Another team's namespace, which a policy in $ns must never reach.
k apply -n "$other" -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: other}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: other, image: $SOURCE_REGISTRY/demo/worker:0.9}
YAML

workloads_run() {
  k -n "$ns" rollout status deploy/web --timeout=120s &&
  k -n "$ns" rollout status statefulset/api --timeout=120s &&
  k -n "$ns" rollout status daemonset/sidecar --timeout=120s &&
  k -n "$ns" rollout status deploy/lost --timeout=120s &&
  k -n "$ns" wait --for=condition=Ready pod -l app=batch --timeout=60s
}
check "the workloads run" workloads_run

# --- the policy: a tenant policy (outside lifeboat-system) ---------------------------
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: everything}
spec:
  selector:
    includedNamespaces: ["$ns", "$other"]
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
YAML

# Scheduled policies next to it: every minute, one suspended, and one daily in
# Asia/Kolkata (UTC+05:30) at the wall-clock minute that is the start of the
# minute after next there. Read as UTC, that cron would be 5 h 30 min off
# (its minute field alone 30 min off): only a schedule evaluated in the zone
# fires within the next two minutes. Checked later.
zone_fire="$(( ($(date +%s) / 60 + 2) * 60 ))"
zone_cron="$(TZ=Asia/Kolkata date -d "@$zone_fire" '+%-M %-H * * *')"
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: kolkata}
spec:
  schedule: "$zone_cron"
  timeZone: Asia/Kolkata
  continuous: false
  selector: {images: {include: ["*/demo/sidecar*"]}}
  targets:
$(backup_target "e2e/{policyNamespace}/kolkata/{repository}")
---
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: every-minute}
spec:
  schedule: "* * * * *"
  continuous: false
  selector: {images: {include: ["*/demo/api*"]}}
  targets:
$(backup_target "e2e/{policyNamespace}/scheduled/{repository}")
---
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: suspended}
spec:
  schedule: "* * * * *"
  suspend: true
  selector: {images: {include: ["*/demo/api*"]}}
  targets:
$(backup_target "e2e/{policyNamespace}/suspended/{repository}")
YAML

zone_fire_utc="$(date -u -d "@$zone_fire" +%Y-%m-%dT%H:%M:%SZ)"
# kolkata_epoch JSONPATH: the policy kolkata's time at JSONPATH as seconds since the epoch.
kolkata_epoch() {
  local t; t="$(k -n "$ns" get ibp kolkata -o jsonpath="$1")"
  [[ -n "$t" ]] && date -u -d "$t" +%s
}
zoned_next() {
  [[ "$(kolkata_epoch '{.status.nextScheduleTime}')" == "$zone_fire" ]] ||
    { echo "nextScheduleTime: '$(k -n "$ns" get ibp kolkata -o jsonpath='{.status.nextScheduleTime}')', want $zone_fire_utc"; return 1; }
}
check "a daily schedule in Asia/Kolkata ('$zone_cron') is next due at $zone_fire_utc" eventually 30 zoned_next

check "the policy becomes Ready (every image in the backup registry)" \
  k -n "$ns" wait --for=condition=Ready ibp/everything --timeout=180s

web_digest="$(pod_digest app=web containerStatuses web)"
init_digest="$(pod_digest app=web initContainerStatuses init)"
api_digest="$(pod_digest app=api containerStatuses api)"
sidecar_digest="$(pod_digest app=sidecar containerStatuses sidecar)"
batch_digest="$(pod_digest app=batch containerStatuses batch)"
check "Deployment: the running digest of demo/web is in the backup" eventually 30 backup_has demo/web "$web_digest"
check "init container: demo/init is in the backup" eventually 30 backup_has demo/init "$init_digest"
check "StatefulSet: demo/api is in the backup" eventually 30 backup_has demo/api "$api_digest"
check "DaemonSet: demo/sidecar is in the backup" eventually 30 backup_has demo/sidecar "$sidecar_digest"
check "Job: demo/batch is in the backup" eventually 30 backup_has demo/batch "$batch_digest"
cron_backed_up() {
  local want got
  want="$(registry_digest demo/cron 1)"
  got="$(backup_digest "$(backup_repo demo/cron)" 1)"
  [[ -n "$want" && "$got" == "$want" ]] || { echo "backup demo/cron:1 is '$got', source '$want'"; return 1; }
}
check "CronJob between runs: demo/cron:1 is in the backup by tag, same digest" eventually 30 cron_backed_up
idle_backed_up() {
  local want got
  want="$(registry_digest demo/web 1.1)"
  got="$(backup_digest "$(backup_repo demo/web)" 1.1)"
  [[ -n "$want" && "$got" == "$want" ]] || { echo "backup demo/web:1.1 is '$got', source '$want'"; return 1; }
}
check "scaled-to-zero Deployment: demo/web:1.1 is in the backup by tag, same digest" eventually 30 idle_backed_up
idle_digest="$(registry_digest demo/web 1.1)"
idle_lifeboat_tag() {
  local got; got="$(backup_digest "$(backup_repo demo/web)" "lifeboat-sha256-${idle_digest#sha256:}")"
  [[ -n "$idle_digest" && "$got" == "$idle_digest" ]] ||
    { echo "lifeboat-sha256-${idle_digest#sha256:} gives '$got', want '$idle_digest'"; return 1; }
}
check "... and under Lifeboat's tag for the digest its tag pointed at" eventually 30 idle_lifeboat_tag
# Once a pod runs it, the image is known by that digest: the by-tag copy
# already holds it, so the policy stays Ready and protected throughout. A
# watch sees every status the operator writes, so a moment of NoBackupYet
# between two writes cannot slip past.
protected_before="$(k -n "$ns" get ibp everything -o jsonpath='{.status.summary.protected}')"
statuses="$(mktemp)"; on_exit "rm -f '$statuses'"
"$KUBECTL" -n "$ns" get ibp everything --watch \
  -o jsonpath='{.status.summary.protected} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}{"\n"}' \
  >"$statuses" 2>/dev/null &
status_watch=$!
k -n "$ns" scale deploy/idle --replicas=1 >/dev/null
idle_runs_digest() { [[ "$(pod_digest app=idle containerStatuses idle)" == "$idle_digest" ]]; }
check "the scaled-up pod runs demo/web:1.1 at $idle_digest" eventually 90 idle_runs_digest
sleep 15
kill "$status_watch" 2>/dev/null || true; wait "$status_watch" 2>/dev/null || true
stayed_protected() {
  local writes; writes="$(wc -l <"$statuses")"
  [[ "$writes" -ge 1 ]] || { echo "the watch saw no status"; return 1; }
  ! grep -v -x "$protected_before True [A-Za-z]*" "$statuses" ||
    { echo "(statuses written: $writes; protected before: $protected_before)"; return 1; }
}
check "its by-tag copy keeps the image protected once a pod runs it (every status written: Ready, $protected_before protected)" stayed_protected
deterministic_tag() {
  local got; got="$(backup_digest "$(backup_repo demo/web)" "lifeboat-sha256-${web_digest#sha256:}")"
  [[ "$got" == "$web_digest" ]] || { echo "deterministic tag gives '$got'"; return 1; }
}
check "the digest is also under Lifeboat's deterministic tag" deterministic_tag
generation_observed() {
  [[ "$(k -n "$ns" get ibp everything -o jsonpath='{.status.observedGeneration}')" == \
     "$(k -n "$ns" get ibp everything -o jsonpath='{.metadata.generation}')" ]]
}
check "Ready is about the current generation" generation_observed

tenant_scoped() {
  condition_is "$ns" ibp/everything ScopeRestricted "True OwnNamespaceOnly" || return 1
  local got; got="$(backup_digest "e2e/$ns/127.0.0.1-5001/demo/worker" 0.9)"
  [[ -z "$got" ]] || { echo "demo/worker of namespace $other was backed up: $got"; return 1; }
  k -n "$ns" get ibp everything -o jsonpath='{.status.summary.workloads}' | grep -qx 7 || {
    echo "workloads: $(k -n "$ns" get ibp everything -o jsonpath='{.status.summary}')"; return 1; }
}
check "a tenant policy protects only its own namespace and says so (ScopeRestricted)" tenant_scoped
check "ImagesAvailable is True" condition_is "$ns" ibp/everything ImagesAvailable "True AllImagesAvailable"
check "LastBackupSucceeded is True" condition_is "$ns" ibp/everything LastBackupSucceeded "True BackupSucceeded"
succeeded_event() { grep -qw BackupSucceeded <<<"$(event_reasons "$ns" everything)"; }
check "a BackupSucceeded event is recorded on the policy" eventually 10 succeeded_event

# --- a new Deployment is backed up within seconds --------------------------------
worker_digest="$(registry_digest demo/worker 0.9)"
started=$(date +%s.%N)
k -n "$ns" create deployment newcomer --image="$SOURCE_REGISTRY/demo/worker:0.9" >/dev/null
check "a new Deployment's image arrives in the backup within 60 s" eventually 60 backup_has demo/worker "$worker_digest"
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
echo "  measured: new Deployment -> image verified in the backup registry: ${elapsed}s"

# --- an ephemeral container's image --------------------------------------------------
# A repository only this run uses, so nothing but the ephemeral container can
# have brought it into the backup.
debug_repo="e2e/debug-$RANDOM"
check "a private copy of demo/worker:0.9 is pushed as $debug_repo:1" source_copy demo/worker:0.9 "$debug_repo:1"
debug_digest="$(registry_digest "$debug_repo" 1)"
web_pod="$(k -n "$ns" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')"
check "kubectl debug adds an ephemeral container running $debug_repo:1 to $web_pod" \
  k -n "$ns" debug "pod/$web_pod" --container=debugger --image="$SOURCE_REGISTRY/$debug_repo:1" -- sleep 3600
debugger_runs() {
  local id; id="$(k -n "$ns" get pod "$web_pod" -o jsonpath='{.status.ephemeralContainerStatuses[?(@.name=="debugger")].imageID}')"
  [[ "${id##*@}" == "$debug_digest" ]] || { echo "the debugger reports '$id', the source serves $debug_digest"; return 1; }
}
check "the ephemeral container runs the source's digest" eventually 60 debugger_runs
check "its image arrives in the backup registry with the same digest" eventually 60 backup_has "$debug_repo" "$debug_digest"

# --- on-demand run -----------------------------------------------------------------
stamp="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
k -n "$ns" annotate ibp everything "lifeboat.dev/requestedAt=$stamp" --overwrite >/dev/null
handled() {
  [[ "$(k -n "$ns" get ibp everything -o jsonpath='{.status.lastHandledReconcileAt}')" == "$stamp" ]] || return 1
  k -n "$ns" get ibp everything -o jsonpath='{.status.history[*].trigger}' | grep -qw OnDemand
}
check "an on-demand run is echoed in lastHandledReconcileAt and history" eventually 60 handled

# --- a restarted operator resumes without copying again -------------------------
k -n lifeboat-system rollout restart deploy/lifeboat-operator >/dev/null
check "the operator restarts" k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s
stamp2="$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)"
k -n "$ns" annotate ibp everything "lifeboat.dev/requestedAt=$stamp2" --overwrite >/dev/null
nothing_recopied() {
  [[ "$(k -n "$ns" get ibp everything -o jsonpath='{.status.lastHandledReconcileAt}')" == "$stamp2" ]] || return 1
  local run
  run="$(k -n "$ns" get ibp everything -o jsonpath='{range .status.history[?(@.trigger=="OnDemand")]}{.copied} {.upToDate} {.bytesCopied}{"\n"}{end}' | head -1)"
  # No blob bytes move again (a tag may be re-pointed, which counts as a copy).
  [[ "$run" =~ ^[0-9]+\ [1-9][0-9]*\ 0$ ]] || { echo "newest on-demand run (copied upToDate bytes): '$run'"; return 1; }
}
check "after a restart, a full run finds everything in place and copies no bytes" eventually 90 nothing_recopied

# --- loss: the image disappears from the source registry --------------------------
lost_node="$(k -n "$ns" get pods -l app=lost -o jsonpath='{.items[0].spec.nodeName}')"
check "the soon-lost image is backed up first" eventually 30 backup_has "$lost_repo" "$lost_digest"
check "the image is deleted from the source registry" \
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$lost_repo/manifests/$lost_digest"
reported_missing() {
  local got
  got="$(k -n "$ns" get ibp everything -o jsonpath="{range .status.missingImages[*]}{.digest} {.nodes} {.backupTargets}{'\n'}{end}")"
  grep -q "^$lost_digest \[\"$lost_node\"\] \[\"backup\"\]$" <<<"$got" || { echo "missingImages: $got"; return 1; }
  condition_is "$ns" ibp/everything ImagesAvailable "False ImagesMissing"
}
check "the lost image is reported missing with node $lost_node and the backup target" eventually 90 reported_missing
missing_event() { grep -qw ImageMissing <<<"$(event_reasons "$ns" everything Warning)"; }
check "an ImageMissing Warning event is recorded" eventually 10 missing_event
# A new pod that needs the lost image where no node has it fails to pull:
# the operator looks at once and tells that pod.
k -n "$ns" run lost-again --image="$SOURCE_REGISTRY/$lost_repo@$lost_digest" \
  --overrides="{\"spec\":{\"nodeSelector\":{\"kubernetes.io/hostname\":\"${NODE_NAMES[0]}\"}}}" >/dev/null
pod_told() {
  k -n "$ns" get events --field-selector involvedObject.name=lost-again,involvedObject.kind=Pod,type=Warning \
    -o jsonpath='{range .items[*]}{.reason}{"\n"}{end}' | grep -qx ImageMissing
}
check "a pod failing to pull the lost image gets an ImageMissing Warning event" eventually 60 pod_told
missing_counted() { [[ "$(k -n "$ns" get ibp everything -o jsonpath='{.status.summary.missing}')" == 1 ]]; }
check "the summary counts it" missing_counted

# --- invalid specs and missing credentials ------------------------------------------
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: bad-schedule}
spec:
  schedule: "61 * * * *"
  targets: [{name: backup, registry: $BACKUP_REGISTRY, secretRef: {name: backup-credentials}}]
---
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: bad-zone}
spec:
  schedule: "0 3 * * *"
  timeZone: Mars/Olympus_Mons
  targets: [{name: backup, registry: $BACKUP_REGISTRY, secretRef: {name: backup-credentials}}]
---
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: no-secret}
spec:
  targets: [{name: backup, registry: $BACKUP_REGISTRY, secretRef: {name: does-not-exist}}]
YAML
check "an invalid schedule gives Stalled InvalidSchedule" eventually 30 condition_is "$ns" ibp/bad-schedule Stalled "True InvalidSchedule"
ready_names_field() {
  condition_is "$ns" ibp/bad-schedule Ready "False InvalidSchedule" || return 1
  local message; message="$(k -n "$ns" get ibp bad-schedule -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
  [[ "$message" == *spec.schedule* ]] || { echo "message: $message"; return 1; }
}
check "... and Ready False with the same reason and the field in the message" ready_names_field
check "an unknown time zone gives Stalled InvalidTimeZone" eventually 30 condition_is "$ns" ibp/bad-zone Stalled "True InvalidTimeZone"
check "a missing Secret gives Ready False CredentialsNotFound" eventually 30 condition_is "$ns" ibp/no-secret Ready "False CredentialsNotFound"
not_stalled() { [[ -z "$(k -n "$ns" get ibp no-secret -o jsonpath='{.status.conditions[?(@.type=="Stalled")].status}')" ]]; }
check "... and not Stalled (it may still be created)" not_stalled
stalled_version="$(k -n "$ns" get ibp bad-schedule -o jsonpath='{.metadata.resourceVersion}')"
sleep 5
not_rewritten() { [[ "$(k -n "$ns" get ibp bad-schedule -o jsonpath='{.metadata.resourceVersion}')" == "$stalled_version" ]]; }
check "a stalled policy is not rewritten in a loop" not_rewritten

# --- dry run writes nothing -----------------------------------------------------------
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: dry}
spec:
  dryRun: true
  targets:
$(backup_target "e2e/{policyNamespace}-dry/{repository}")
YAML
dry_planned() {
  local total; total="$(k -n "$ns" get ibp dry -o jsonpath='{.status.plan.wouldCopyTotal}')"
  [[ "${total:-0}" -ge 7 ]] || { echo "wouldCopyTotal '$total'"; return 1; }
  condition_is "$ns" ibp/dry Ready "True DryRun"
}
check "a dry-run policy reports what it would copy" eventually 60 dry_planned
dry_wrote_nothing() {
  local catalog
  catalog="$(backup_curl "_catalog?n=1000")" || return 1
  ! grep -q "e2e/$ns-dry/" <<<"$catalog"
}
check "... and writes nothing to the registry" dry_wrote_nothing

# --- schedules ----------------------------------------------------------------------
scheduled_ran() {
  k -n "$ns" get ibp every-minute -o jsonpath='{.status.history[*].trigger}' | grep -qw Schedule || {
    echo "history: $(k -n "$ns" get ibp every-minute -o jsonpath='{.status.history}')"; return 1; }
  [[ -n "$(k -n "$ns" get ibp every-minute -o jsonpath='{.status.lastScheduleTime}')" ]] &&
  [[ -n "$(k -n "$ns" get ibp every-minute -o jsonpath='{.status.nextScheduleTime}')" ]]
}
check "a schedule fires (history has a Schedule run, last and next times are set)" eventually 90 scheduled_ran
scheduled_copied() {
  backup_digest "e2e/$ns/scheduled/demo/api" "$api_digest" | grep -qx "$api_digest" || {
    echo "history: $(k -n "$ns" get ibp every-minute -o jsonpath='{.status.history}')"; return 1; }
}
check "... and a scheduled run copied its image" eventually 70 scheduled_copied
zoned_fired() {
  local history; history="$(k -n "$ns" get ibp kolkata -o jsonpath='{range .status.history[?(@.trigger=="Schedule")]}{.scheduledTime}{"\n"}{end}')"
  local first; first="$(head -1 <<<"$history")"
  [[ -n "$first" && "$(date -u -d "$first" +%s)" == "$zone_fire" ]] ||
    { echo "scheduled runs: '$history', want one for $zone_fire_utc (cron '$zone_cron' in Asia/Kolkata)"; return 1; }
  [[ "$(kolkata_epoch '{.status.lastScheduleTime}')" == "$zone_fire" ]] || { echo "lastScheduleTime: $(k -n "$ns" get ibp kolkata -o jsonpath='{.status.lastScheduleTime}')"; return 1; }
  # Next: the same wall-clock minute tomorrow in Kolkata (a day later: no DST there).
  [[ "$(kolkata_epoch '{.status.nextScheduleTime}')" == "$((zone_fire + 86400))" ]] ||
    { echo "nextScheduleTime: $(k -n "$ns" get ibp kolkata -o jsonpath='{.status.nextScheduleTime}')"; return 1; }
  backup_digest "e2e/$ns/kolkata/demo/sidecar" "$sidecar_digest" | grep -qx "$sidecar_digest" || { echo "the run copied nothing"; return 1; }
}
# Bounded: until 90 s past the fire time (about 2 min from the policy's creation).
check "a daily schedule in Asia/Kolkata ('$zone_cron') fires at $zone_fire_utc and copies its image" \
  eventually "$((zone_fire + 90 - $(date +%s)))" zoned_fired
suspended_idle() {
  [[ -z "$(k -n "$ns" get ibp suspended -o jsonpath='{.status.history}')" ]] || { echo "suspended policy ran"; return 1; }
  [[ -z "$(backup_digest "e2e/$ns/suspended/demo/api" "$api_digest")" ]] || { echo "suspended policy copied"; return 1; }
  # The passed time is recorded so that it is not replayed on resume.
  [[ -n "$(k -n "$ns" get ibp suspended -o jsonpath='{.status.lastScheduleTime}')" ]] || { echo "no lastScheduleTime"; return 1; }
}
check "a suspended policy does not run (and records the skipped time)" eventually 30 suspended_idle

# --- metrics ------------------------------------------------------------------------
metrics_exported() {
  local m; m="$(operator_metrics)" || return 1
  grep -q 'lifeboat_images{.*name="everything".*state="protected"' <<<"$m" &&
  grep -q 'lifeboat_backup_runs_total{' <<<"$m" &&
  grep -q 'lifeboat_copied_bytes_total{' <<<"$m" &&
  grep -q 'lifeboat_image_copy_duration_seconds_bucket{' <<<"$m" || { grep '^lifeboat' <<<"$m" | head; return 1; }
}
check "metrics: images by state, runs, bytes and copy durations are exported" metrics_exported

k delete ibp -n "$ns" --all --wait=false >/dev/null 2>&1
curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$lost_repo/manifests/$lost_digest" >/dev/null 2>&1 || true
summary "operator-backup"
