#!/usr/bin/env bash
# Restores into nodes on the local cluster (ImageRestore with
# destination.nodes, node-exporter's import and serve): the source registry is
# killed (no answer at all) and a Deployment pinned onto the node that never
# held its image gets the image written into that node's containerd by an
# ImageRestore naming "the nodes whose pods fail to pull it", from the backup
# registry, and then, with the backup killed too, straight from the other
# node. Digest-exact both ways; a sparse multi-platform index stays exactly
# what the holding node holds. Also: node-exporter trusts the CA bundle it is
# given (the backup registry's private CA) and stops at once on SIGTERM, and
# the peer session refuses requests without its token or for content outside
# the image (those Jobs are written here as YAML, the way the operator builds
# its Jobs: operator/src/controllers/image_restore/jobs.rs).
#
# Once the image is on the node the operator deletes the Deployment's pod
# stuck in ErrImagePull / ImagePullBackOff (destination.nodes.deleteStuckPods,
# on by default) and says so in an Event on its ReplicaSet: the replacement
# starts at once instead of after the kubelet's back-off.
#
# Timings (registry killed -> replacement pod Running, split into pull
# failure seen, restore to import Job start, bytes, Ready seen and pod start)
# are printed as "measured:" lines; docs/benchmarks.md quotes them.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Figures go to the suite's own output even from inside a check (which
# shows a check's output only when it fails).
exec {MEASURED_FD}>&1
measured() { echo "  measured: $*" >&"$MEASURED_FD"; }

run="$RANDOM$RANDOM"
# NODE_IMPORT_DEAD_REGISTRY=HOST:PORT: the needy pods name that registry,
# where nothing listens, instead of the shared source registry being killed
# (same answer: none); the backup then stays up but the node-to-node import
# is given no registry at all. For when the shared registries must not stop.
dead_registry="${NODE_IMPORT_DEAD_REGISTRY:-}"
pod_registry="${dead_registry:-$SOURCE_REGISTRY}"
ns="node-import-$run"
holder="${NODE_NAMES[0]}"
needy="${NODE_NAMES[1]}"
holder_ip="$(node_ip "$holder")"
echo "node-exporter import on the cluster (namespace $ns)"
# --release (hack/bench.sh node-import): the figures for docs/benchmarks.md
# come from release builds; hack/test.sh runs the debug build the other
# suites already built (a release build would cost CI minutes for nothing
# the checks need).
profile=debug build_flags=()
[[ "${1:-}" == --release ]] && profile=release build_flags=(--release)
check "Lifeboat images ($profile build) build and load into the nodes" "$REPO_ROOT/hack/images/lifeboat-images.sh" "${build_flags[@]}"
check "CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd"
check "operator manifests apply" k apply -f "$REPO_ROOT/config/operator"
restart_operator

needy_ctr() { ctr -a "$(node_containerd_socket "$needy")" -n k8s.io "$@"; }
holder_ctr() { ctr -a "$(node_containerd_socket "$holder")" -n k8s.io "$@"; }
layout="$(mktemp -d)"
on_exit "rm -rf '$layout'"
# This run's images leave the nodes with it (containerd collects the content).
forget_run_images() {
  local names
  for node in "$holder" "$needy"; do
    names="$(ctr -a "$(node_containerd_socket "$node")" -n k8s.io images ls -q | grep -E "nodeimport/[a-z]+-$run[:@]")" &&
      ctr -a "$(node_containerd_socket "$node")" -n k8s.io images rm $names
  done
}
on_exit forget_run_images
k create namespace "$ns" >/dev/null
on_exit "'$KUBECTL' delete namespace '$ns' --wait=false"

### Registries: killed inside this suite only, always back on exit. ##########
# hack/cluster/registry.sh: stop is a SIGKILL (no answer at all), start waits
# until the registry answers and leaves it without the e2e lock's descriptor.
kill_registry() { "$REPO_ROOT/hack/cluster/registry.sh" stop "$1"; }
start_registry() { "$REPO_ROOT/hack/cluster/registry.sh" start "$1" --wait; }
on_exit "start_registry source; start_registry backup"

### Images of this run: content no node has ever held. ######################
oci() { python3 "$REPO_ROOT/hack/images/oci-image.py" "$@" >/dev/null; }
push_layout() { skopeo copy --quiet --all --dest-tls-verify=false "oci:$layout:$1" "docker://$SOURCE_REGISTRY/$2"; }
backup_copy() {
  skopeo copy --quiet --all --src-tls-verify=false --dest-cert-dir "$BACKUP_CERT_DIR" --dest-creds "$BACKUP_CREDS" \
    "docker://$SOURCE_REGISTRY/$1" "docker://$BACKUP_REGISTRY/nodeimport/$1"
}
auto="nodeimport/auto-$run"
small="nodeimport/small-$run"
big="nodeimport/big-$run"
multi="nodeimport/multiarch-$run"
build_images() {
  oci image --layout "$layout" --ref small --busybox --random-layer 2097152:shared-runtime \
    --random-layer "1048576:small-$run" --entrypoint "$RUN_FOREVER" &&
  oci image --layout "$layout" --ref big --busybox --random-layer "104857600:big-$run" --entrypoint "$RUN_FOREVER" &&
  oci image --layout "$layout" --ref multi-amd64 --platform linux/amd64 --busybox \
    --random-layer 2097152:shared-runtime --random-layer "262144:multi-amd64-$run" --entrypoint "$RUN_FOREVER" &&
  oci image --layout "$layout" --ref multi-arm64 --platform linux/arm64 --busybox \
    --random-layer 2097152:shared-runtime --random-layer "262144:multi-arm64-$run" --entrypoint "$RUN_FOREVER" &&
  oci index --layout "$layout" --ref multi --manifests multi-amd64,multi-arm64 &&
  oci image --layout "$layout" --ref auto --busybox --random-layer 2097152:shared-runtime \
    --random-layer "1048576:auto-$run" --entrypoint "$RUN_FOREVER" && push_layout auto "$auto:1" &&
  push_layout small "$small:1" && push_layout big "$big:1" && push_layout multi "$multi:1.0" &&
  backup_copy "$small:1" && backup_copy "$big:1"
}
check "this run's images (3 MiB twice, 100 MiB, a two-platform index) are in the source registry, two in the backup" build_images
auto_digest="$(registry_digest "$auto" 1)"
small_digest="$(registry_digest "$small" 1)"
big_digest="$(registry_digest "$big" 1)"
multi_digest="$(registry_digest "$multi" 1.0)"
check "the backup holds them under the same digests" \
  test "$(backup_digest "nodeimport/$small" 1)|$(backup_digest "nodeimport/$big" 1)" == "$small_digest|$big_digest"

# deployment NAME NODE IMAGE: one replica of IMAGE on NODE, pulled only if not
# present (the default for tagged images).
deployment() { pinned_deployment "$1" "$2" "$3" IfNotPresent | k -n "$ns" apply -f - >/dev/null; }
deployment holder-small "$holder" "$SOURCE_REGISTRY/$small:1"
deployment holder-big "$holder" "$SOURCE_REGISTRY/$big:1"
deployment holder-multi "$holder" "$SOURCE_REGISTRY/$multi@$multi_digest"
deployment auto "$holder" "$SOURCE_REGISTRY/$auto:1"
check "the holder runs all four on $holder" bash -c "
  '$KUBECTL' -n '$ns' wait --for=condition=Available deploy/holder-small deploy/holder-big deploy/holder-multi deploy/auto --timeout=180s"

### Job credentials, CA and the peer session's token. ########################
backup_registry_access "$ns"
# The backup the restores look in: this policy's target (it backs nothing up
# itself: its selector matches no image).
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: backup}
spec:
  selector: {images: {include: ["nodeimport-nothing/**"]}}
  targets:
$(backup_target "nodeimport/{repository}")
YAML
# A policy that protects the "auto" Deployment's image and restores by itself:
# it backs the image up now, and during the outage below imports it into the
# node a pod of the Deployment fails to pull it on.
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: auto}
spec:
  selector: {images: {include: ["**/auto-$run"]}}
  targets:
$(backup_target "nodeimport/{repository}")
  restore: {automatic: true}
YAML
token="$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
k -n "$ns" create secret generic peer-token --from-literal=token="$token" >/dev/null
CA_ARG="$BACKUP_REGISTRY=/var/run/lifeboat/ca/ca.crt"
DOCKER_CONFIG_ARG=/var/run/lifeboat/registry/config.json
TOKEN_ARG=/var/run/lifeboat/token/token
SOCKET_ARG=/run/containerd/containerd.sock

# node_pod_spec NODE GRACE ARG... : the pod spec of a node-exporter Job.
node_pod_spec() {
  local node="$1" grace="$2"; shift 2
  local args; args="$(printf '%s\n' "$@" | jq -R . | jq -sc .)"
  cat <<YAML
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      hostNetwork: true
      terminationGracePeriodSeconds: $grace
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchFields: [{key: metadata.name, operator: In, values: [$node]}]
      containers:
      - name: node-exporter
        image: lifeboat.local/node-exporter:dev
        imagePullPolicy: Never
        args: $args
        terminationMessagePolicy: File
        securityContext:
          runAsUser: 0
          runAsNonRoot: false
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          privileged: false
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: containerd, mountPath: $SOCKET_ARG}
        - {name: registry-credentials, mountPath: /var/run/lifeboat/registry, readOnly: true}
        - {name: ca, mountPath: /var/run/lifeboat/ca, readOnly: true}
        - {name: token, mountPath: /var/run/lifeboat/token, readOnly: true}
      volumes:
      - name: containerd
        hostPath: {path: $(node_containerd_socket "$node"), type: Socket}
      - name: registry-credentials
        secret: {secretName: backup-credentials, defaultMode: 0400, items: [{key: .dockerconfigjson, path: config.json}]}
      - name: ca
        configMap: {name: backup-ca}
      - name: token
        secret: {secretName: peer-token, defaultMode: 0400}
YAML
}
# node_job NAME NODE ARG... : runs node-exporter with ARGS as a Job on NODE.
node_job() {
  local name="$1" node="$2"; shift 2
  { cat <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 300
  template:
    spec:
YAML
    node_pod_spec "$node" 10 "$@"; } | k -n "$ns" apply -f - >/dev/null
}
job_pod() { k -n "$ns" get pods -l "job-name=$1" -o jsonpath='{.items[0].metadata.name}'; }
termination_message() {
  k -n "$ns" get pods -l "job-name=$1" -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}'
}
job_complete() { [[ "$(k -n "$ns" get job "$1" -o jsonpath='{.status.succeeded}')" == 1 ]]; }
job_failed() { [[ "$(k -n "$ns" get job "$1" -o jsonpath='{.status.failed}')" == 1 ]]; }
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# log_time JOB PATTERN: when node-exporter logged the first line matching PATTERN.
log_time() {
  local line; line="$(k -n lifeboat-system logs "job/$1" 2>/dev/null | grep -m1 -E "$2")" || return 1
  date -d "$(awk '{print $1}' <<<"$line")" +%s.%N
}

### Step 3: CA bundles and SIGTERM. ##########################################
export_to_backup() {
  node_job "$1" "$holder" export --image "$SOURCE_REGISTRY/$small:1@$small_digest=$BACKUP_REGISTRY/nodeimport-ca-$run/small:1" \
    --docker-config "$DOCKER_CONFIG_ARG" --socket "$SOCKET_ARG" "${@:2}"
}
export_to_backup export-with-ca --ca-bundle "$CA_ARG"
export_to_backup export-without-ca
check "an export to the TLS backup registry (private CA) succeeds with --ca-bundle" \
  eventually 120 job_complete export-with-ca
check "and the backup registry serves the exported digest" \
  test "$(backup_digest "nodeimport-ca-$run/small" 1)" == "$small_digest"
refused_without_ca() {
  eventually 120 job_failed export-without-ca || { echo "the export without the CA did not fail"; return 1; }
  local message; message="$(termination_message export-without-ca)"
  jq -e '.results[0].reason == "PushFailed"' <<<"$message" >/dev/null &&
    grep -qi "certificate\|tls\|unknownissuer" <<<"$message" || { echo "$message"; return 1; }
}
check "without it the export fails on the certificate (no fallback to insecure)" refused_without_ca

# A serve that no importer ends: attacked, then stopped by deleting its pod.
port=$((20000 + RANDOM % 20000))
{ cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: lonely-serve}
spec:
YAML
  node_pod_spec "$holder" 30 serve --image "$SOURCE_REGISTRY/$small:1@$small_digest" --listen "$port" \
    --token-file "$TOKEN_ARG" --socket "$SOCKET_ARG" | sed 's/^  //'; } | k -n "$ns" apply -f - >/dev/null
serve_url="http://$holder_ip:$port"
check "a serve session listens on $holder" eventually 60 curl -s -o /dev/null "$serve_url/v2/"
status_of() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
refuses_strangers() {
  local manifest="$serve_url/v2/$small/manifests/$small_digest"
  [[ "$(status_of "$manifest")" == 401 ]] || { echo "no token: $(status_of "$manifest")"; return 1; }
  [[ "$(status_of -u "lifeboat:wrong-$token" "$manifest")" == 401 ]] || { echo "wrong token accepted"; return 1; }
  [[ "$(status_of -u "lifeboat:$token" "$manifest")" == 200 ]] || { echo "the token is refused"; return 1; }
  # Content the node holds but the session is not about: the pause image.
  local pause; pause="$(holder_ctr images ls | awk -v n="$PAUSE_IMAGE" '$1==n {print $3}')"
  [[ -n "$pause" ]] || { echo "no pause image digest"; return 1; }
  [[ "$(status_of -u "lifeboat:$token" "$serve_url/v2/$small/manifests/$pause")" == 404 ]] || { echo "pause served"; return 1; }
  # Tags: only the session image's own (what `kubectl lifeboat export
  # --from-node` asks by), and only to its digest; any other is unknown.
  [[ "$(status_of -u "lifeboat:$token" "$serve_url/v2/$small/manifests/other-tag")" == 404 ]] || { echo "another tag served"; return 1; }
  local pause_repo="${PAUSE_IMAGE#*/}"
  [[ "$(status_of -u "lifeboat:$token" "$serve_url/v2/${pause_repo%:*}/manifests/${PAUSE_IMAGE##*:}")" == 404 ]] ||
    { echo "the pause image's tag served"; return 1; }
  local own; own="$(curl -s -o /dev/null -D - -u "lifeboat:$token" "$serve_url/v2/$small/manifests/1" | tr -d '\r' |
    awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')"
  [[ "$own" == "$small_digest" ]] || { echo "the session's own tag resolves to '$own'"; return 1; }
  [[ "$(status_of -u "lifeboat:$token" -X PUT "$serve_url/v2/$small/manifests/$small_digest")" == 404 ]] || { echo "PUT accepted"; return 1; }
}
check "the session refuses a missing or wrong token, other content, other tags and writes" refuses_strangers
stops_on_sigterm() {
  local watch_file; watch_file="$(mktemp)"
  # kubectl itself in the background (not the k function, whose subshell
  # would leave kubectl holding this check's output open).
  "$KUBECTL" -n "$ns" get pod lonely-serve -w \
    -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}{"\n"}' >"$watch_file" 2>/dev/null &
  local watcher=$! started; started="$(now)"
  k -n "$ns" delete pod lonely-serve --wait=true --timeout=60s >/dev/null
  local took; took="$(seconds "$started" "$(now)")"
  kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
  measured "pod deletion (grace 30 s) took $took s"
  grep -qx 143 "$watch_file" || { echo "exit codes seen: $(tr '\n' ' ' <"$watch_file")"; return 1; }
  awk -v t="$took" 'BEGIN { exit !(t < 10) }' || { echo "took $took s: the signal was ignored"; return 1; }
}
check "SIGTERM stops node-exporter at once (exit 143), not after the grace period" stops_on_sigterm

### The import timeline, from the registry killed to the pod Running. #########
app_pod() { k -n "$ns" get pods -l "app=$1" -o jsonpath='{.items[0].metadata.name}'; }
pull_failed() {
  local reason; reason="$(k -n "$ns" get pods -l "app=$1" -o jsonpath='{.items[0].status.containerStatuses[0].state.waiting.reason}')"
  [[ "$reason" == ErrImagePull || "$reason" == ImagePullBackOff ]]
}
any_running() { [[ -n "$(k -n "$ns" get pods -l "app=$1" --field-selector=status.phase=Running -o name)" ]]; }
replacement_running() {
  local phase; phase="$(k -n "$ns" get pods -l "app=$1" --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}')"
  [[ -n "$phase" && "$phase" != "$2" ]]
}
fast_until() { local timeout="$1"; shift; local deadline=$((SECONDS + timeout)); until "$@"; do ((SECONDS < deadline)) || return 1; sleep 0.1; done; }

# restore_into_nodes NAME IMAGE: an ImageRestore of IMAGE into the nodes
# whose pods in this namespace fail to pull it.
restore_into_nodes() {
  k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: $1}
spec:
  images: ["$2"]
  destination: {nodes: {failingPods: true}}
YAML
}
ready_status() { k -n "$ns" get imagerestore "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'; }
restore_ended() { [[ "$(ready_status "$1")" == True || "$(ready_status "$1")" == False ]]; }
node_entry() { k -n "$ns" get imagerestore "$1" -o jsonpath="{.status.nodes[0].$2}"; }

# import_timeline APP IMAGE RESTORE-IMAGE: applies APP on the needy node, waits
# for its pull to fail, creates an ImageRestore of RESTORE-IMAGE into the
# failing pods' nodes, waits for it to be Ready and for the replacement of the
# stuck pod (the operator deletes it) to run, and prints the split.
import_timeline() {
  local app="$1" image="$2" wanted="$3" started failed created done running stuck
  started="$(now)"
  deployment "$app" "$needy" "$image"
  fast_until 60 pull_failed "$app" || { echo "$app: the pull did not fail"; return 1; }
  failed="$(now)"
  stuck="$(app_pod "$app")"
  restore_into_nodes "$app" "$wanted"
  created="$(now)"
  fast_until 180 restore_ended "$app" || { echo "$app: the restore did not end"; k -n "$ns" get imagerestore "$app" -o yaml; return 1; }
  done="$(now)"
  [[ "$(ready_status "$app")" == True ]] || { echo "$app: the restore failed"; k -n "$ns" get imagerestore "$app" -o jsonpath='{.status}'; return 1; }
  # The kubelet's own retry may win on a slow import (its back-off starts at
  # 10 s); the Event check below holds the operator to the small image.
  fast_until 60 any_running "$app" || { echo "$app: no pod Running"; return 1; }
  running="$(now)"
  local importer job_started bytes_done
  importer="$(node_entry "$app" jobName)"
  job_started="$(log_time "$importer" "connecting to containerd")" || job_started="$created"
  bytes_done="$(log_time "$importer" " imported ")" || bytes_done="$done"
  measured "$app: Running $(seconds "$started" "$running") s after the Deployment was applied with the registry dead" \
    "(pull failure seen $(seconds "$started" "$failed") s; restore created to import Job started $(seconds "$created" "$job_started") s;" \
    "bytes $(seconds "$job_started" "$bytes_done") s; to restore Ready seen $(seconds "$bytes_done" "$done") s;" \
    "stuck pod replaced and Running $(seconds "$done" "$running") s)"
}
pod_digest() {
  local id; id="$(k -n "$ns" get pods -l "app=$1" --field-selector=status.phase=Running -o jsonpath='{.items[0].status.containerStatuses[0].imageID}')"
  echo "${id##*@}"
}
# collect_garbage: a synchronous containerd GC on the needy node (what a
# lease deletion with --sync does), so unreferenced content is really gone.
collect_garbage() { needy_ctr leases create --id "gc-$run" >/dev/null && needy_ctr leases delete --sync "gc-$run" >/dev/null; }
record_digest() { needy_ctr images ls | awk -v n="$1" '$1==n {print $3}'; }
complete_after_gc() {
  collect_garbage || return 1
  local line; line="$(needy_ctr images check "name==$1" 2>&1)"
  grep -q "complete" <<<"$line" || { echo "$line"; return 1; }
}
cri_lists() {
  # (An image with neither tag nor digest names is listed without names.)
  k get node "$needy" -o json | jq -e --arg n "$1" '[.status.images[] | .names // [] | .[]] | index($n) != null' >/dev/null
}
# restore_says APP DIGEST KIND SOURCE: the restore's entry for the needy node
# names the digest containerd recorded, where the bytes came from, how many.
restore_says() {
  local entry; entry="$(k -n "$ns" get imagerestore "$1" -o json | jq -c '.status.nodes')"
  jq -e --arg n "$needy" --arg d "$2" --arg k "$3" --arg s "$4" 'length == 1 and .[0].node == $n
    and .[0].state == "Restored" and .[0].importedDigest == $d and .[0].source.kind == $k
    and .[0].source.name == $s and .[0].bytes > 0' <<<"$entry" >/dev/null || { echo "$entry"; return 1; }
  [[ "$(k -n "$ns" get imagerestore "$1" -o jsonpath='{.status.images[0].digestPreserved}')" == true ]] || { echo "digest not preserved"; return 1; }
}

# (Its first backup ran meanwhile.)
check "the automatic policy has backed its image up (Ready)" k -n "$ns" wait --for=condition=Ready ibp/auto --timeout=120s
if [[ -z "$dead_registry" ]]; then
  check "the source registry is killed (no answer)" kill_registry source
fi
check "the pods' registry answers nothing" bash -c "! curl -s -m 2 -o /dev/null 'http://$pod_registry/v2/'"
for size in small big; do
  repo="${!size}"; digest_var="${size}_digest"; digest="${!digest_var}"
  import_from_backup() { import_timeline "from-backup-$size" "$pod_registry/$repo:1" "$pod_registry/$repo:1@$digest"; }
  check "$size: a pod on $needy whose registry is dead runs once the image is imported from the backup" import_from_backup
  check "$size: the pod runs the original digest" test "$(pod_digest "from-backup-$size")" == "$digest"
  [[ "$size" == small ]] && check "$size: the stuck pod was replaced, and its ReplicaSet has the operator's StuckPodDeleted Event" \
    eventually 10 bash -c "'$KUBECTL' -n '$ns' get events --field-selector reason=StuckPodDeleted -o jsonpath='{.items[*].involvedObject.name}' |
      grep -qw \"\$('$KUBECTL' -n '$ns' get rs -l app=from-backup-$size -o jsonpath='{.items[0].metadata.name}')\""
  check "$size: containerd on $needy records the pod's reference at the original digest" \
    test "$(record_digest "$pod_registry/$repo:1")|$(record_digest "$pod_registry/$repo@$digest")" == "$digest|$digest"
  check "$size: ctr images check says complete after a synchronous GC" complete_after_gc "$pod_registry/$repo:1"
  check "$size: the restore's status names $needy, the digest, the backup target and the bytes" \
    restore_says "from-backup-$size" "$digest" BackupRegistry backup
  check "$size: the kubelet lists it among the node's images (CRI)" eventually 60 cri_lists "$pod_registry/$repo:1"
done

# restore.automatic during the outage: the Deployment moves onto the needy
# node; its new pod cannot pull, the policy creates an ImageRestore into that
# node (from the backup), the operator deletes the stuck pod, and its
# replacement runs the original digest.
auto_running_on_needy() {
  [[ -n "$(k -n "$ns" get pods -l app=auto --field-selector="status.phase=Running,spec.nodeName=$needy" -o name)" ]]
}
automatic_outage_restore() {
  local started; started="$(now)"
  k -n "$ns" patch deploy auto --type merge \
    -p "{\"spec\":{\"template\":{\"spec\":{\"nodeSelector\":{\"kubernetes.io/hostname\":\"$needy\"}}}}}" >/dev/null || return 1
  fast_until 120 auto_running_on_needy || {
    echo "no pod of deploy/auto Running on $needy"; k -n "$ns" get pods -l app=auto -o wide
    k -n "$ns" get ibp auto -o jsonpath='{.status.unreachableImages}{"\n"}{.status.automaticRestore}{"\n"}'; return 1; }
  measured "automatic: deploy/auto Running on $needy $(seconds "$started" "$(now)") s after it was moved there with the source dead"
}
check "restore.automatic: a Deployment moved onto $needy with its source dead runs there" automatic_outage_restore
auto_restore_says() {
  local name; name="$(k -n "$ns" get ibp auto -o jsonpath='{.status.automaticRestore.name}')"
  [[ "$name" == auto-import-* ]] || { echo "policy links '$name'"; return 1; }
  restore_says "$name" "$auto_digest" BackupRegistry backup
}
check "restore.automatic: the policy links its ImageRestore, which imported the digest from the backup into $needy" \
  eventually 30 auto_restore_says
check "restore.automatic: the pod on $needy runs the original digest" \
  test "$(k -n "$ns" get pods -l app=auto --field-selector="status.phase=Running,spec.nodeName=$needy" \
    -o jsonpath='{.items[0].status.containerStatuses[0].imageID}' | sed 's/.*@//')" == "$auto_digest"

# This machine's floors, in the same run: a Job that does nothing on the
# needy node (what any Job costs), and the big image's layer fetched from the
# backup registry by curl on the host (what the registry can deliver).
floor_job() {
  local started; started="$(now)"
  node_job floor-job "$needy" --version
  fast_until 120 job_complete floor-job || return 1
  measured "floor: a Job that only prints its version, created -> Complete seen: $(seconds "$started" "$(now)") s"
}
check "floor: an empty Job on $needy completes" floor_job
floor_bytes() {
  local layer size started
  layer="$(backup_curl "nodeimport/$big/manifests/$big_digest" -H "$MANIFEST_ACCEPT" | jq -r '.layers | max_by(.size) | .digest')" || return 1
  started="$(now)"
  size="$(backup_curl "nodeimport/$big/blobs/$layer" -L -o /dev/null -w '%{size_download}')" || return 1
  measured "floor: curl of the $size-byte layer from the backup registry: $(seconds "$started" "$(now)") s"
}
check "floor: the big layer comes from the backup registry by curl" floor_bytes

### Node to node, with the backup dead too. #################################
if [[ -z "$dead_registry" ]]; then
  check "the backup registry is killed too" kill_registry backup
fi
# The big image goes again, node to node: forget it on the needy node first.
forget_big() {
  k -n "$ns" delete deploy from-backup-big --wait=true >/dev/null || return 1
  eventually 60 bash -c "[[ -z \"\$('$KUBECTL' -n '$ns' get pods -l app=from-backup-big -o name)\" ]]" || return 1
  # The pod's reference, its digest form and CRI's image-ID record.
  local names; names="$(needy_ctr images ls | awk -v d="$big_digest" '$3==d {print $1}')"
  echo "removing: $names"
  [[ -n "$names" ]] && needy_ctr images rm $names >/dev/null
  collect_garbage
  ! needy_ctr content ls -q | grep -qx "$big_digest"
}
check "the big image is forgotten on $needy (records removed, content collected)" forget_big
for case in multi big; do
  repo="${!case}"; digest_var="${case}_digest"; digest="${!digest_var}"
  reference="$pod_registry/$repo:1"; [[ "$case" == multi ]] && reference="$pod_registry/$repo@$digest"
  pinned="$pod_registry/$repo:1@$digest"; [[ "$case" == multi ]] && pinned="$pod_registry/$repo:1.0@$digest"
  # source.type Auto: the backup is asked first and does not answer.
  import_from_node() { import_timeline "from-node-$case" "$reference" "$pinned"; }
  check "$case: with source and backup dead, a pod on $needy runs once the image comes from $holder" import_from_node
  check "$case: the pod runs the original digest" test "$(pod_digest "from-node-$case")" == "$digest"
  check "$case: ctr images check says complete after a synchronous GC" complete_after_gc "$reference"
  check "$case: the restore's status names $needy, the digest, $holder as the source and the bytes" \
    restore_says "from-node-$case" "$digest" NodeCache "$holder"
done

# The image's closure (index, manifests, configs, layers) as each node holds it.
closure_on() {
  local sock; sock="$(node_containerd_socket "$1")"
  local index; index="$(holder_ctr content get "$multi_digest")"
  local children; children="$(jq -r '.manifests[].digest' <<<"$index")"
  local wanted; wanted="$multi_digest $children $(for child in $children; do
    holder_ctr content get "$child" 2>/dev/null | jq -r '.config.digest, .layers[].digest'; done)"
  local present; present="$(ctr -a "$sock" -n k8s.io content ls -q)"
  for d in $wanted; do grep -qx "$d" <<<"$present" && echo "$d"; done | sort -u
}
same_closure() {
  local a b; a="$(closure_on "$holder")"; b="$(closure_on "$needy")"
  [[ -n "$a" && "$a" == "$b" ]] || { diff <(echo "$a") <(echo "$b"); return 1; }
  # Sparse: the arm64 manifest is on neither node.
  local arm; arm="$(ctr -a "$(node_containerd_socket "$holder")" -n k8s.io content get "$multi_digest" |
    jq -r '.manifests[] | select(.platform.architecture=="arm64") | .digest')"
  [[ -n "$arm" ]] && ! grep -qx "$arm" <<<"$b" || { echo "arm64 manifest $arm on $needy"; return 1; }
  echo "  $(wc -l <<<"$b") blobs of the index on both nodes"
}
check "multi: $needy holds exactly what $holder holds of the index (sparse: no arm64)" same_closure
serve_ended() {
  local uid message
  uid="$(k -n "$ns" get imagerestore from-node-multi -o jsonpath='{.metadata.uid}')"
  message="$(k -n lifeboat-system get pods -l "lifeboat.dev/restore-uid=$uid,app.kubernetes.io/component=serve" \
    -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}')"
  jq -e '.results[0].status == "Preserved" and .results[0].bytes > 0' <<<"$message" >/dev/null || { echo "$message"; return 1; }
}
# Nothing of the sessions stays: the restore's Secret (token, credentials)
# goes when it completes.
secrets_gone() {
  local uid
  for restore in from-backup-small from-node-multi; do
    uid="$(k -n "$ns" get imagerestore "$restore" -o jsonpath='{.metadata.uid}')"
    [[ -z "$(k -n lifeboat-system get secrets -l "lifeboat.dev/restore-uid=$uid" -o name)" ]] || { echo "$restore: Secret left"; return 1; }
  done
}
check "the restores' Secrets (token, backup credentials) are deleted once they complete" eventually 30 secrets_gone
check "the serve Job ended when the importer said it was done, and reports the bytes served" serve_ended

registries_back() { start_registry source && start_registry backup; }
check "the registries come back" registries_back

summary "node-import"
