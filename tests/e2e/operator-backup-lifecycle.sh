#!/usr/bin/env bash
# The backup side over an image's life, on the real cluster:
#   1. a lost image stays reported missing (digest, node, backup target) after
#      its pod restarts into ImagePullBackOff, and after the operator restarts;
#   2. retention deletes old digests (keepLast, maxAgeDays; dry run first) but
#      never one a workload uses, and only Lifeboat's own;
#   3. useWorkloadPullSecrets: a workload's pull secret is what lets the
#      operator read its image (and nothing without the opt-in);
#   4. the operator is SIGKILLed in the middle of copying a big image; the
#      next run completes without copying again what had arrived.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run="$RANDOM$RANDOM"
ns="ibp-life-$run"
work="$(mktemp -d)"
proxy_pid=""
echo "operator backup lifecycle e2e (namespace $ns)"

cleanup() {
  if [[ -n "$proxy_pid" ]]; then kill "$proxy_pid" 2>/dev/null || true; fi
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup

policy() { k -n "$ns" get ibp "$1" -o jsonpath="$2"; }
oci() { python3 "$REPO_ROOT/hack/images/oci-image.py" "$@"; }
days_ago() { date -u -d "-$1 days" +%Y-%m-%dT%H:%M:%SZ; }

deploy_operator

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
target() { backup_target "e2e/{policyNamespace}/$2/{repository}" "$1" "${3:-}" "${4:-}"; } # target NAME SUBPATH [REGISTRY] [SECRET]

# === 1. a lost image after its pod restarts ============================================
lost_repo="e2e/restart-$run"
check "a private image $lost_repo:1 is pushed" source_copy demo/worker:0.9 "$lost_repo:1"
lost_digest="$(registry_digest "$lost_repo" 1 || true)"
# Pulled on every start: a restarted pod asks the registry, as after a node change.
{ pinned_deployment fragile "${NODE_NAMES[0]}" "$SOURCE_REGISTRY/$lost_repo:1"; cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: loss}
spec:
  selector: {images: {include: ["*/e2e/restart-*"]}}
  targets:
$(target backup loss)
YAML
} | k -n "$ns" apply -f - >/dev/null
check "the workload runs" k -n "$ns" rollout status deploy/fragile --timeout=120s
check "the loss policy becomes Ready" k -n "$ns" wait --for=condition=Ready ibp/loss --timeout=120s
check "the image is deleted from the source registry" \
  curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$lost_repo/manifests/$lost_digest"
reported_missing() {
  local got want="$lost_digest [\"${NODE_NAMES[0]}\"] [\"backup\"]"
  got="$(policy loss "{range .status.missingImages[*]}{.digest} {.nodes} {.backupTargets}{'\n'}{end}")"
  [[ "$got" == "$want" ]] || { echo "missingImages: '$got', want '$want'"; return 1; }
  condition_is "$ns" ibp/loss ImagesAvailable "False ImagesMissing"
}
check "the lost image is reported missing (digest, node, backup target)" eventually 60 reported_missing
k -n "$ns" delete pod -l app=fragile --wait=false >/dev/null
pull_failing() {
  k -n "$ns" get pods -l app=fragile -o jsonpath='{.items[*].status.containerStatuses[*].state.waiting.reason}' |
    grep -Eq 'ErrImagePull|ImagePullBackOff'
}
check "the restarted pod cannot pull the lost image" eventually 90 pull_failing
sleep 5 # several reconciles with only the failing pod
check "... and the image is still reported missing with its digest, node and backup target" reported_missing
no_tag_only_copy() {
  local summary; summary="$(policy loss '{.status.summary.selected} {.status.summary.failed} {.status.summary.missing}')"
  [[ "$summary" == "1 0 1" ]] || { echo "selected failed missing: '$summary'"; return 1; }
}
check "... as the one digest (no tag-only image that fails to copy)" no_tag_only_copy
pod_told() {
  local pod; pod="$(k -n "$ns" get pods -l app=fragile -o jsonpath='{.items[0].metadata.name}')"
  k -n "$ns" get events --field-selector "involvedObject.name=$pod,type=Warning" -o jsonpath='{.items[*].reason}' |
    grep -qw ImageMissing
}
check "the restarted pod gets an ImageMissing event" eventually 60 pod_told
k -n lifeboat-system rollout restart deploy/lifeboat-operator >/dev/null
check "the operator restarts (its memory is gone)" k -n lifeboat-system rollout status deploy/lifeboat-operator --timeout=120s
sleep 8
check "after an operator restart the digest is still reported missing (from the status)" eventually 30 reported_missing

# === 2. retention ==========================================================================
ret_repo="e2e/ret-$run"
declare -A created=([v0]=50 [v1]=2000 [v2]=1000 [v3]=100 [v4]=1)
declare -A ret_digest=()
push_dated() {
  local tag="$1"
  oci image --layout "$work/ret" --ref "$tag" --busybox --random-layer "4096:ret-$run-$tag" \
    --created "$(days_ago "${created[$tag]}")" --entrypoint "$RUN_FOREVER" >/dev/null &&
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/ret:$tag" "docker://$SOURCE_REGISTRY/$ret_repo:$tag"
}
pushed_all() { for t in v0 v1 v2 v3 v4; do push_dated "$t" || return 1; done; }
check "five dated images of $ret_repo are pushed (created 1 to 2000 days ago)" pushed_all
for t in v0 v1 v2 v3 v4; do ret_digest[$t]="$(registry_digest "$ret_repo" "$t" || true)"; done
{
  # v1, the oldest, runs; the others are named by digest by idle Deployments.
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: ret-v1}
spec:
  replicas: 1
  selector: {matchLabels: {app: ret-v1}}
  template:
    metadata: {labels: {app: ret-v1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: app, image: $SOURCE_REGISTRY/$ret_repo:v1}]
---
YAML
  for t in v0 v2 v3 v4; do idle_deployment "ret-$t" "$SOURCE_REGISTRY/$ret_repo@${ret_digest[$t]}"; done
  cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: keep}
spec:
  selector: {images: {include: ["*/e2e/ret-*"]}}
  targets:
$(target backup ret)
YAML
} | k -n "$ns" apply -f - >/dev/null
ret_backup="e2e/$ns/ret/$ret_repo"
check "the retention workload runs" k -n "$ns" rollout status deploy/ret-v1 --timeout=120s
check "the keep policy becomes Ready" k -n "$ns" wait --for=condition=Ready ibp/keep --timeout=120s
held() { [[ "$(backup_digest "$ret_backup" "$1")" == "$1" ]]; }
all_five_held() {
  for t in v0 v1 v2 v3 v4; do held "${ret_digest[$t]}" || { echo "$t (${ret_digest[$t]}) not in the backup"; return 1; }; done
}
check "all five digests are in the backup, under Lifeboat's tags" eventually 30 all_five_held
# Someone else's image in the same repository (old, undated, no Lifeboat
# tag): never Lifeboat's to delete.
check "an image pushed by hand into the backup repository" skopeo copy --quiet --dest-cert-dir "$BACKUP_CERT_DIR" \
  --dest-creds "$BACKUP_CREDS" --src-tls-verify=false "docker://$SOURCE_REGISTRY/demo/sidecar:3" "docker://$BACKUP_REGISTRY/$ret_backup:by-hand"
by_hand="$(backup_digest "$ret_backup" by-hand || true)"
k -n "$ns" delete deploy ret-v0 ret-v2 ret-v3 ret-v4 >/dev/null
# Newest first: v4 (1 day), v0 (50), v3 (100), v2 (1000), v1 (2000, in use).
# keepLast 2 keeps v4 and v0; v3 goes for keepLast, v2 for both; v1 is in use.
k -n "$ns" patch ibp keep --type merge -p '{"spec":{"dryRun":true,"retention":{"keepLast":2,"maxAgeDays":500}}}' >/dev/null
planned() {
  local total list
  total="$(policy keep '{.status.plan.wouldDeleteTotal}')"
  list="$(policy keep '{.status.plan.wouldDelete}')"
  [[ "$total" == 2 && "$list" == *"${ret_digest[v2]}"* && "$list" == *"${ret_digest[v3]}"* ]] ||
    { echo "wouldDelete ($total): $list"; return 1; }
}
check "dry run: the plan names v2 and v3 (and nothing else)" eventually 60 planned
check "dry run: nothing is deleted" all_five_held
k -n "$ns" patch ibp keep --type merge -p '{"spec":{"dryRun":false}}' >/dev/null
deleted_as_planned() {
  held "${ret_digest[v2]}" && { echo "v2 still held"; return 1; }
  held "${ret_digest[v3]}" && { echo "v3 still held"; return 1; }
  return 0
}
check "retention deletes v3 (beyond keepLast) and v2 (older than maxAgeDays)" eventually 60 deleted_as_planned
kept() {
  held "${ret_digest[v4]}" && held "${ret_digest[v0]}" || { echo "a kept digest is gone"; return 1; }
  held "${ret_digest[v1]}" || { echo "v1, in use, was deleted"; return 1; }
}
check "the newest two and the oldest (in use) stay" kept
by_hand_kept() { [[ -n "$by_hand" && "$(backup_digest "$ret_backup" by-hand)" == "$by_hand" ]]; }
check "the image pushed by hand stays" by_hand_kept
left_tags() {
  local tags; tags="$(backup_tags "$ret_backup")"
  for t in v0 v1 v4; do grep -q "lifeboat-sha256-${ret_digest[$t]#sha256:}" <<<"$tags" || { echo "tags: $tags"; return 1; }; done
  ! grep -q "lifeboat-sha256-${ret_digest[v3]#sha256:}" <<<"$tags" || { echo "v3's tag left: $tags"; return 1; }
}
check "the backup's Lifeboat tags are exactly those of the kept digests" left_tags
# In some record, not necessarily the newest: when ret-v1 was first copied by
# tag (its pod not yet running), the copy by its digest (Lifeboat's tag, no
# bytes) can be a run of its own after the deletions.
recorded() {
  local deleted; deleted="$(policy keep '{.status.history[*].deleted}')"
  grep -qw 2 <<<"$deleted" || { echo "history deleted counts '$deleted': $(policy keep '{.status.history}')"; return 1; }
  grep -qw RetentionDeleted <<<"$(event_reasons "$ns" keep)" || { echo "events: $(event_reasons "$ns" keep)"; return 1; }
}
check "the deletions are in the history and a RetentionDeleted event" eventually 30 recorded
retention_metric() { operator_metrics | grep -E '^lifeboat_retention_deleted_total\{.*name="keep".*\} 2$'; }
check "metric lifeboat_retention_deleted_total counts them" eventually 30 retention_metric
stays_kept() { sleep 15; kept; }
check "a later pass (the 10 s interval) deletes nothing more" stays_kept

# === 3. useWorkloadPullSecrets ============================================================
private_repo="e2e/private-$run/app"
check "a private image is pushed to the authenticated registry" skopeo copy --quiet --src-tls-verify=false \
  --dest-cert-dir "$BACKUP_CERT_DIR" --dest-creds "$BACKUP_CREDS" \
  "docker://$SOURCE_REGISTRY/demo/init:1" "docker://$BACKUP_REGISTRY/$private_repo:1"
private_digest="$(backup_digest "$private_repo" 1 || true)"
registry_secret "$ns" private-pull "$BACKUP_REGISTRY"
{ idle_deployment private "$BACKUP_REGISTRY/$private_repo:1" "      imagePullSecrets: [{name: private-pull}]"; cat <<YAML
# No credentials of its own: only the workload's pull secret can open the
# registry (the CA bundle is for TLS only).
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: private}
spec:
  selector: {images: {include: ["*/e2e/private-*/app"]}}
  targets:
  - name: mirror
    registry: $BACKUP_REGISTRY
    repositoryTemplate: "e2e/{policyNamespace}/mirror/{repository}"
    caBundle: {configMapKeyRef: {name: backup-ca, key: ca.crt}}
YAML
} | k -n "$ns" apply -f - >/dev/null
check "without the opt-in the image cannot be read (Ready False BackupFailed)" \
  eventually 60 condition_is "$ns" ibp/private Ready "False BackupFailed"
failed_unauthorized() {
  [[ "$(policy private '{.status.conditions[?(@.type=="Ready")].message}')" == *Unauthorized* ]] ||
    { policy private '{.status.conditions[?(@.type=="Ready")].message}'; return 1; }
}
check "... because the registry refuses anonymous access" failed_unauthorized
k -n "$ns" patch ibp private --type merge -p '{"spec":{"sourceCredentials":{"useWorkloadPullSecrets":true}}}' >/dev/null
check "with useWorkloadPullSecrets the policy becomes Ready" k -n "$ns" wait --for=condition=Ready ibp/private --timeout=90s
mirrored() { [[ "$(backup_digest "e2e/$ns/mirror/$private_repo" 1)" == "$private_digest" ]]; }
check "... and the mirror holds the private image, same digest" eventually 30 mirrored

# === 4. SIGKILL in the middle of a big copy ==============================================
# Four layers of 8, 16, 24 and 32 MiB, unique to this run, copied through a
# throttling relay (8 MiB/s per connection) so that the layers arrive one
# after another and the kill lands between them.
big_repo="e2e/big-$run"
layers=(8388608 16777216 25165824 33554432)
big_args=()
for i in "${!layers[@]}"; do big_args+=(--random-layer "${layers[$i]}:big-$run-$i"); done
check "an 80 MiB four-layer image is pushed" bash -c "python3 '$REPO_ROOT/hack/images/oci-image.py' image --layout '$work/big' --ref big --compression none ${big_args[*]} >/dev/null &&
  skopeo copy --quiet --dest-tls-verify=false 'oci:$work/big:big' 'docker://$SOURCE_REGISTRY/$big_repo:1'"
big_manifest="$(curl -sf -H "$MANIFEST_ACCEPT" "http://$SOURCE_REGISTRY/v2/$big_repo/manifests/1" || true)"
mapfile -t big_layers < <(python3 -c 'import json,sys; [print(l["digest"], l["size"]) for l in json.load(sys.stdin)["layers"]]' <<<"$big_manifest")
blob_stored() { [[ -f "$CLUSTER_DIR/registries/backup/docker/registry/v2/blobs/sha256/${1:7:2}/${1#sha256:}/data" ]]; }
stored_bytes() { # bytes of this image's layers committed in the backup registry
  local total=0 d s
  for entry in "${big_layers[@]}"; do read -r d s <<<"$entry"; blob_stored "$d" && total=$((total + s)); done
  echo "$total"
}
total_bytes=0
for entry in "${big_layers[@]}"; do total_bytes=$((total_bytes + ${entry#* })); done

op_pod="$(operator_pod)"
op_node="$(k -n lifeboat-system get pod "$op_pod" -o jsonpath='{.spec.nodeName}')"
cat >"$work/throttle.py" <<'PY'
import asyncio, sys, time
listen_port, target_port, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
async def pipe(reader, writer, limit):
    start, sent = time.monotonic(), 0
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if limit:
                ahead = sent / limit - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer, rate), pipe(server_reader, client_writer, 0))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
slow_port=5012
nsenter "--net=/run/netns/$(node_netns "$op_node")" python3 "$work/throttle.py" "$slow_port" "${BACKUP_REGISTRY##*:}" 8388608 &
proxy_pid=$!
registry_secret "$ns" slow-credentials "127.0.0.1:$slow_port"
{ idle_deployment big "$SOURCE_REGISTRY/$big_repo:1"; cat <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: big}
spec:
  selector: {images: {include: ["*/e2e/big-*"]}}
  targets:
$(target slow big "127.0.0.1:$slow_port" slow-credentials)
YAML
} | k -n "$ns" apply -f - >/dev/null
# Kill as soon as the first layer has arrived (and before the last).
killed_at=""
stored_at_kill=0
deadline=$((SECONDS + 90))
while ((SECONDS < deadline)); do
  stored="$(stored_bytes)"
  if ((stored > 0)); then
    container="$(k -n lifeboat-system get pod "$op_pod" -o jsonpath='{.status.containerStatuses[0].containerID}')"
    pid="$(ctr -a "$(node_containerd_socket "$op_node")" -n k8s.io task ls | awk -v id="${container#containerd://}" '$1==id{print $2}' || true)"
    [[ -n "$pid" ]] && kill -KILL "$pid"
    killed_at=$(date +%s.%N)
    stored_at_kill="$(stored_bytes)"
    break
  fi
  sleep 0.1
done
killed_midway() {
  [[ -n "$killed_at" ]] || { echo "no layer arrived within 90 s"; return 1; }
  ((stored_at_kill > 0 && stored_at_kill < total_bytes)) ||
    { echo "at the kill $stored_at_kill of $total_bytes bytes were in the backup"; return 1; }
}
check "the operator is SIGKILLed with part of the image in the backup ($stored_at_kill of $total_bytes layer bytes)" killed_midway
restarted() {
  [[ "$(k -n lifeboat-system get pod "$op_pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')" -ge 1 ]]
}
check "the operator container restarts" eventually 60 restarted
check "the next run completes: the big policy becomes Ready" k -n "$ns" wait --for=condition=Ready ibp/big --timeout=180s
resumed_s=$(echo "$(date +%s.%N) - ${killed_at:-0}" | bc || true)
big_held() {
  local want; want="$(registry_digest "$big_repo" 1)"
  [[ "$(backup_digest "e2e/$ns/big/$big_repo" 1 || true)" == "$want" ]] || { echo "backup does not hold $big_repo:1 ($want)"; return 1; }
}
check "the backup holds the image, same digest" big_held
resumed_bytes="$(policy big '{.status.history[0].bytesCopied}' || true)"
not_recopied() {
  # The run after the kill copied at most what had not arrived (plus the
  # small config, and the busybox base if it was not there yet).
  local allowance=$((total_bytes - stored_at_kill + 2 * 1048576))
  [[ -n "$resumed_bytes" ]] && ((resumed_bytes <= allowance && resumed_bytes < total_bytes)) ||
    { echo "resumed run copied '$resumed_bytes' bytes; $stored_at_kill of $total_bytes were there at the kill"; policy big '{.status.history}'; return 1; }
}
check "the resumed run does not copy again what had arrived" not_recopied
echo "  measured: SIGKILL -> policy Ready again: ${resumed_s}s; at the kill $stored_at_kill of $total_bytes layer bytes were in the backup; the resumed run copied $resumed_bytes bytes"
kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""

k delete ibp -n "$ns" --all --wait=false >/dev/null 2>&1
summary operator-backup-lifecycle
