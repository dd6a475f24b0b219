#!/usr/bin/env bash
# `kubectl lifeboat` through the real kubectl: the plugin is built, put on
# PATH as kubectl-lifeboat and run as `kubectl lifeboat ...` against a policy
# that backs up a private image. status (json checked with jq, table),
# backup --wait (the run recorded), why (target and node named, then the
# image lost and explained), restore --missing --wait (the digest served by
# the source registry again). Then archives through the API server only
# (export/import through a relay pod reached by port-forward, into and out
# of a registry running as a pod).
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
# Eventually: the policy can be Ready from a first run that copied the
# image by tag (its pod not running yet) while the copy by the digest the
# pod then reports is still under way (protected 0 for a moment).
check "status -o json: one policy, 1 selected, 1 protected, 0 missing, Ready" eventually 30 status_json
status_table() {
  local got; got="$(lb status -n "$ns")" || return 1
  grep -Eq "^$ns +images +1 +1 +0 +0 " <<<"$got" || { echo "$got"; return 1; }
  ! grep -q $'\x1b' <<<"$got" || { echo "color escapes off a terminal"; return 1; }
}
# Eventually too: protected can also drop back to 0 for a moment (the
# by-tag copy's entry does not count for the digest the pod then reports
# until that copy ends; see the stop note of 2026-12-05).
check "status table: the policy's counts, no color off a terminal" eventually 30 status_table
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
restore_deployment() {
  # The Deployment's pods report the digest they run: the restore pins it.
  local out; out="$(lb restore deployment/app -n "$ns" --wait --timeout 60s)" || { echo "exit $?: $out"; return 1; }
  grep -q "^restored $SOURCE_REGISTRY/$repo[:@][^ ]*$digest $digest -> " <<<"$out" || { echo "$out"; return 1; }
}
check "restore deployment/app --wait restores the digest its pod runs" restore_deployment

# --- archives through the API server only ----------------------------------------------
# A registry running as a pod (pod IPs are not routed to this machine), an OCI
# archive made by skopeo, imported and exported by the plugin through a relay
# pod reached by port-forward; digests compared with skopeo.
check "the registry image is on the nodes" in_cluster_registry_image
air_dir="$(mktemp -d)"
on_exit "rm -rf '$air_dir'"
cat <<YAML | k apply -n "$ns" -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: air-registry, labels: {app: air-registry}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${NODE_NAMES[0]}}
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true, runAsUser: 65532}
  containers:
  - name: registry
    image: $E2E_REGISTRY_IMAGE
    imagePullPolicy: Never
    ports: [{containerPort: 5000}]
    readinessProbe: {tcpSocket: {port: 5000}, periodSeconds: 1}
    volumeMounts: [{name: data, mountPath: /var/lib/registry}]
  volumes: [{name: data, emptyDir: {}}]
YAML
check "the in-cluster registry pod is ready" k -n "$ns" wait --for=condition=Ready pod/air-registry --timeout=60s
air="$(k -n "$ns" get pod air-registry -o jsonpath='{.status.podIP}'):5000"
# The local cluster routes no pod traffic between nodes: the relay runs beside the registry.
relay_on="--relay-node ${NODE_NAMES[0]}"
# containerd on the node pulls from it over plain HTTP, as from the other test registries.
air_hosts="$CLUSTER_DIR/nodes/${NODE_NAMES[0]}/certs.d/$air"
mkdir -p "$air_hosts"
printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$air" "$air" >"$air_hosts/hosts.toml"
on_exit "rm -rf '$air_hosts'"
check "the registry at $air is not reachable from this machine" bash -c "! curl -sf --connect-timeout 2 --max-time 3 http://$air/v2/"
check "skopeo writes an OCI archive of demo/worker:0.9" skopeo copy -q --src-tls-verify=false \
  "docker://$SOURCE_REGISTRY/demo/worker:0.9" "oci-archive:$air_dir/worker.tar:0.9"
archive_digest="$(skopeo inspect --format '{{.Digest}}' "oci-archive:$air_dir/worker.tar")"
archive_layers="$(skopeo inspect --format '{{.Layers}}' "oci-archive:$air_dir/worker.tar")"
relays_gone() { [[ -z "$(k -n "$ns" get pods -l app.kubernetes.io/name=lifeboat-relay -o name)" ]]; }
corrupt_import_fails() {
  # One byte of the largest layer flipped, into a registry that holds none of
  # it yet: the copy must stop at the digest check.
  python3 - "$air_dir/worker.tar" "$air_dir/corrupt.tar" <<'PY' || return 1
import shutil, sys, tarfile
shutil.copy(sys.argv[1], sys.argv[2])
with tarfile.open(sys.argv[1]) as t:
    layer = max((m for m in t.getmembers() if m.name.startswith("blobs/")), key=lambda m: m.size)
with open(sys.argv[2], "r+b") as f:
    f.seek(layer.offset_data + layer.size // 2); b = f.read(1); f.seek(-1, 1); f.write(bytes([b[0] ^ 0xFF]))
PY
  local out rc=0 started=$SECONDS
  out="$(lb import "$air_dir/corrupt.tar" --to "$air/air/worker:corrupt" -n "$ns" $relay_on 2>&1)" || rc=$?
  [[ "$rc" != 0 ]] && grep -qi digest <<<"$out" || { echo "exit $rc: $out"; return 1; }
  (( SECONDS - started <= 10 )) || { echo "took $((SECONDS - started)) s to refuse"; return 1; }
  # Cut in the middle of a layer: refused as fast, before any pod is made.
  head -c "$(( $(stat -c %s "$air_dir/worker.tar") / 2 ))" "$air_dir/worker.tar" >"$air_dir/truncated.tar"
  rc=0; started=$SECONDS
  out="$(timeout 60 "$KUBECTL" lifeboat import "$air_dir/truncated.tar" --to "$air/air/worker:cut" -n "$ns" $relay_on 2>&1)" || rc=$?
  [[ "$rc" == 2 ]] && (( SECONDS - started <= 10 )) || { echo "truncated: exit $rc after $((SECONDS - started)) s: $out"; return 1; }
  ! lb export "$air/air/worker:corrupt" -o "$air_dir/none.tar" -n "$ns" $relay_on >/dev/null 2>&1 || { echo "the corrupt image was tagged"; return 1; }
  relays_gone || { echo "relay pod left behind after a failure"; return 1; }
}
check "a corrupted or truncated archive is refused within 10 s (digest), nothing tagged, relay deleted" corrupt_import_fails
import_archive() {
  local out; out="$(lb import "$air_dir/worker.tar" --to "$air/air/worker" -n "$ns" $relay_on 2>"$air_dir/import.err")" ||
    { echo "$out"; cat "$air_dir/import.err"; return 1; }
  [[ "$out" == "$archive_digest" ]] || { echo "import printed '$out', the archive holds $archive_digest"; return 1; }
  # The registry is a pod of the namespace: port-forward straight to it, no relay.
  grep -q "by port-forward to its pod $ns/air-registry" "$air_dir/import.err" || { cat "$air_dir/import.err"; return 1; }
  relays_gone || { echo "relay pod left behind"; return 1; }
  k -n "$ns" get pod air-registry -o name >/dev/null || { echo "the registry pod was deleted"; return 1; }
}
check "import pushes the archive into the in-cluster registry pod by port-forward to it (tag from the archive), no relay" import_archive
pinned_deployment air-app "${NODE_NAMES[0]}" "$air/air/worker:0.9" | k apply -n "$ns" -f - >/dev/null
check "a Deployment runs the imported image, pulled from the in-cluster registry" \
  k -n "$ns" rollout status deploy/air-app --timeout=60s
export_archive() {
  local format="$1" file="$2" out
  out="$(lb export "$air/air/worker:0.9" -o "$file" --format "$format" -n "$ns" $relay_on)" || { echo "$out"; return 1; }
  [[ "$out" == "$archive_digest" ]] || { echo "export printed '$out', want $archive_digest"; return 1; }
}
check "export writes the image back to an OCI archive" export_archive oci "$air_dir/back.tar"
check "skopeo reads the same digest and layers from the exported archive" bash -c \
  "[[ \"\$(skopeo inspect --format '{{.Digest}} {{.Layers}}' oci-archive:$air_dir/back.tar)\" == '$archive_digest $archive_layers' ]]"
docker_archive() {
  # docker-archive's layers are named by the image config's diff IDs (what
  # `docker load` checks); skopeo copy reads every layer and checks them.
  local diff_ids; diff_ids="$(skopeo inspect --config "oci-archive:$air_dir/worker.tar" | jq -c .rootfs.diff_ids)"
  export_archive docker-archive "$air_dir/docker.tar" || return 1
  [[ "$(skopeo inspect "docker-archive:$air_dir/docker.tar" | jq -c .Layers)" == "$diff_ids" ]] ||
    { echo "layers are not the diff IDs $diff_ids"; return 1; }
  skopeo copy -q "docker-archive:$air_dir/docker.tar" "oci:$air_dir/from-docker"
}
check "export --format docker-archive: skopeo reads it (layers = the config's diff IDs) and copies it whole" docker_archive
# --- a TLS registry with basic auth, through the tunnel ------------------------------------
# Its certificate names registry.air.internal (no DNS resolves it), signed by a
# CA made here; the plugin reaches it at its pod address through the relay and
# checks the certificate for that name; credentials from stdin or a Secret.
tls_registry() {
  local d="$air_dir/tls"; mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=air-ca -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null &&
  openssl req -newkey rsa:2048 -nodes -subj /CN=registry.air.internal -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null &&
  printf 'subjectAltName=DNS:registry.air.internal\nextendedKeyUsage=serverAuth\n' >"$d/ext" &&
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 1 -extfile "$d/ext" -out "$d/tls.crt" 2>/dev/null &&
  htpasswd -Bbn air 's3cret-air' >"$d/htpasswd" &&
  k -n "$ns" create secret generic air-tls --from-file="$d/tls.crt" --from-file="$d/tls.key" --from-file="$d/htpasswd" >/dev/null || return 1
  cat <<YAML | k apply -n "$ns" -f - >/dev/null || return 1
apiVersion: v1
kind: Pod
metadata: {name: air-tls-registry}
spec:
  nodeSelector: {kubernetes.io/hostname: ${NODE_NAMES[0]}}
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true, runAsUser: 65532}
  containers:
  - name: registry
    image: $E2E_REGISTRY_IMAGE
    imagePullPolicy: Never
    env:
    - {name: REGISTRY_HTTP_TLS_CERTIFICATE, value: /certs/tls.crt}
    - {name: REGISTRY_HTTP_TLS_KEY, value: /certs/tls.key}
    - {name: REGISTRY_AUTH, value: htpasswd}
    - {name: REGISTRY_AUTH_HTPASSWD_REALM, value: air}
    - {name: REGISTRY_AUTH_HTPASSWD_PATH, value: /certs/htpasswd}
    readinessProbe: {tcpSocket: {port: 5000}, periodSeconds: 1}
    volumeMounts: [{name: certs, mountPath: /certs}, {name: data, mountPath: /var/lib/registry}]
  volumes:
  - {name: certs, secret: {secretName: air-tls, defaultMode: 0444}}
  - {name: data, emptyDir: {}}
YAML
  k -n "$ns" wait --for=condition=Ready pod/air-tls-registry --timeout=60s >/dev/null
}
check "a TLS registry pod with basic auth runs (certificate for registry.air.internal, private CA)" tls_registry
air_tls="$(k -n "$ns" get pod air-tls-registry -o jsonpath='{.status.podIP}'):5000"
# --relay: through a relay pod although the registry is a pod of the namespace.
tls_args=(--ca-file "$air_dir/tls/ca.crt" --tls-server-name registry.air.internal -n "$ns" $relay_on --relay)
tls_round_trip() {
  local out
  out="$(echo 's3cret-air' | lb import "$air_dir/worker.tar" --to "$air_tls/air/worker:tls" --username air --password-stdin "${tls_args[@]}" 2>"$air_dir/tls.err")" ||
    { echo "import: $out"; cat "$air_dir/tls.err"; return 1; }
  [[ "$out" == "$archive_digest" ]] || { echo "import printed '$out', want $archive_digest"; return 1; }
  grep -q "through relay pod $ns/lifeboat-relay-" "$air_dir/tls.err" || { cat "$air_dir/tls.err"; return 1; }
  relays_gone || { echo "relay pod left behind"; return 1; }
  k -n "$ns" create secret docker-registry air-creds --docker-server="$air_tls" --docker-username=air --docker-password='s3cret-air' >/dev/null || return 1
  out="$(lb export "$air_tls/air/worker:tls" -o "$air_dir/tls.tar" --registry-secret air-creds "${tls_args[@]}")" ||
    { echo "export: $out"; return 1; }
  [[ "$out" == "$archive_digest" && "$(skopeo inspect --format '{{.Digest}}' "oci-archive:$air_dir/tls.tar")" == "$archive_digest" ]] ||
    { echo "export printed '$out', want $archive_digest"; return 1; }
}
check "import (password from stdin) and export (docker config Secret) through a relay pod (--relay) over verified TLS, same digest" tls_round_trip
tls_refusals() {
  local out rc=0
  out="$(lb export "$air_tls/air/worker:tls" -o "$air_dir/x.tar" --registry-secret air-creds --tls -n "$ns" $relay_on 2>&1)" && rc=0 || rc=$?
  [[ "$rc" == 2 ]] && grep -qiE "tls|certificate" <<<"$out" || { echo "no CA: exit $rc: $out"; return 1; }
  out="$(lb export "$air_tls/air/worker:tls" -o "$air_dir/x.tar" --registry-secret air-creds --ca-file "$air_dir/tls/ca.crt" \
    --tls-server-name other.air.internal -n "$ns" $relay_on 2>&1)" && rc=0 || rc=$?
  [[ "$rc" == 2 ]] && grep -qiE "tls|certificate" <<<"$out" || { echo "wrong name: exit $rc: $out"; return 1; }
  out="$(echo wrong | lb export "$air_tls/air/worker:tls" -o "$air_dir/x.tar" --username air --password-stdin "${tls_args[@]}" 2>&1)" && rc=0 || rc=$?
  [[ "$rc" == 2 ]] && grep -qiE "unauthorized|credentials" <<<"$out" || { echo "wrong password: exit $rc: $out"; return 1; }
  [[ ! -e "$air_dir/x.tar" ]] || { echo "a file was written"; return 1; }
}
check "refused: a certificate from an untrusted CA, one for another name, a wrong password (exit 2, no file)" tls_refusals

# --- archives into and out of nodes' containerd, through the API server only -------------
# An image no registry has ever held (a random layer of this run), under a
# name no registry serves, imported into node 2's containerd; a pod with
# imagePullPolicy IfNotPresent runs it there; exported back from the node.
airgap_node="${NODE_NAMES[1]}"
airgap="lifeboat.local/klb-airgap/app-$RANDOM:1"
airgap_forget() {
  ctr -a "$(node_containerd_socket "$airgap_node")" -n k8s.io images ls -q | grep -F "${airgap%:1}" |
    xargs -r ctr -a "$(node_containerd_socket "$airgap_node")" -n k8s.io images rm >/dev/null 2>&1
}
on_exit airgap_forget
node_pods_gone() { [[ -z "$(k -n lifeboat-system get pods -l app.kubernetes.io/name=lifeboat-node-access -o name)" ]]; }
check "skopeo writes an OCI archive of an image no registry has" bash -c "
  python3 '$REPO_ROOT/hack/images/oci-image.py' image --layout '$air_dir/airgap' --ref airgap --busybox \
    --random-layer 524288:klb-airgap-\$RANDOM --entrypoint '$RUN_FOREVER' >/dev/null &&
  skopeo copy -q 'oci:$air_dir/airgap:airgap' 'oci-archive:$air_dir/airgap.tar'"
airgap_digest="$(skopeo inspect --format '{{.Digest}}' "oci-archive:$air_dir/airgap.tar")"
airgap_layers="$(skopeo inspect --format '{{.Layers}}' "oci-archive:$air_dir/airgap.tar")"
import_to_node() {
  local out started=$SECONDS
  out="$(lb import "$air_dir/airgap.tar" --to "$airgap" --to-nodes "kubernetes.io/hostname=$airgap_node" --progress plain)" ||
    { echo "$out"; return 1; }
  [[ "$out" == "$airgap_digest" ]] || { echo "import printed '$out', the archive holds $airgap_digest"; return 1; }
  local check; check="$(ctr -a "$(node_containerd_socket "$airgap_node")" -n k8s.io images check "name==$airgap")"
  grep -q "complete" <<<"$check" && grep -qF "$airgap_digest" <<<"$check" || { echo "$check"; return 1; }
  node_pods_gone || { echo "import pod left behind"; return 1; }
  echo "import --to-nodes took $((SECONDS - started)) s"
}
check "import --to-nodes writes the archive into $airgap_node's containerd (digest-exact, complete), pod deleted" import_to_node
pinned_deployment airgap-app "$airgap_node" "$airgap" IfNotPresent | k apply -n "$ns" -f - >/dev/null
check "a pod with imagePullPolicy IfNotPresent runs it on $airgap_node with no registry" \
  k -n "$ns" rollout status deploy/airgap-app --timeout=60s
export_from_node() {
  local file="$1" from="$2" out
  out="$(lb export "$airgap" -o "$file" $from)" || { echo "$out"; return 1; }
  [[ "$out" == "$airgap_digest" ]] || { echo "export printed '$out', want $airgap_digest"; return 1; }
  [[ "$(skopeo inspect --format '{{.Digest}} {{.Layers}}' "oci-archive:$file")" == "$airgap_digest $airgap_layers" ]] ||
    { echo "skopeo reads another digest or layers from $file"; return 1; }
  node_pods_gone || { echo "serve pod left behind"; return 1; }
}
# Records the serve pod of the next export: its spec, and its log (followed
# from when its container runs until the pod goes).
watch_serve_pod() {
  local pod=""
  for _ in $(seq 1 300); do
    pod="$(k -n lifeboat-system get pods -o name \
      -l app.kubernetes.io/name=lifeboat-node-access,app.kubernetes.io/component=serve 2>/dev/null | head -1)"
    [[ -n "$pod" ]] && break
    sleep 0.1
  done
  [[ -n "$pod" ]] || return 0
  k -n lifeboat-system get "$pod" -o json >"$air_dir/serve-pod.json" 2>/dev/null
  for _ in $(seq 1 300); do
    k -n lifeboat-system logs -f "$pod" >"$air_dir/serve.log" 2>/dev/null && [[ -s "$air_dir/serve.log" ]] && break
    sleep 0.1
  done
}
watch_serve_pod &
serve_watcher=$!
check "export --from-node $airgap_node: skopeo reads the same digest and layers" \
  export_from_node "$air_dir/from-node.tar" "--from-node $airgap_node"
wait "$serve_watcher" || true
serve_reads_content_files() {
  local store; store="$(jq -r '.spec.volumes[] | select(.name == "containerd-content") | .hostPath.path' "$air_dir/serve-pod.json" 2>/dev/null)"
  [[ "$store" == "$(node_content_store "$airgap_node")" ]] || { echo "content store volume '$store'"; return 1; }
  [[ "$(jq -r '.spec.containers[0].volumeMounts[] | select(.name == "containerd-content") | .readOnly' "$air_dir/serve-pod.json")" == true ]] ||
    { echo "the content store is not mounted read-only"; return 1; }
  grep -q "content store file" "$air_dir/serve.log" || { echo "serve log:"; cat "$air_dir/serve.log"; return 1; }
}
check "the serve pod mounted $airgap_node's content store read-only and read the blobs from its files" serve_reads_content_files
check "export --from-node without a name finds the node whose pod runs it" \
  export_from_node "$air_dir/from-any-node.tar" "--from-node -n $ns"
export_missing_from_node() {
  local out rc=0; out="$(lb export "$airgap" -o "$air_dir/none.tar" --from-node "${NODE_NAMES[0]}" 2>&1)" || rc=$?
  [[ "$rc" == 2 ]] && grep -q "cannot serve" <<<"$out" && [[ ! -e "$air_dir/none.tar" ]] || { echo "exit $rc: $out"; return 1; }
  node_pods_gone || { echo "serve pod left behind"; return 1; }
}
check "export --from-node of a node that lacks the image fails (exit 2), no file, no pod left" export_missing_from_node
unprivileged_import_refused() {
  # A service account with no rights at all, through its own kubeconfig.
  local kc="$air_dir/nobody.kubeconfig" out rc=0
  k -n "$ns" create serviceaccount nobody >/dev/null || return 1
  k config --kubeconfig "$kc" set-cluster c --server "$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')" \
      --certificate-authority "$CLUSTER_PKI/ca.crt" --embed-certs >/dev/null &&
    k config --kubeconfig "$kc" set-credentials nobody --token "$(k -n "$ns" create token nobody)" >/dev/null &&
    k config --kubeconfig "$kc" set-context c --cluster c --user nobody --namespace "$ns" >/dev/null &&
    k config --kubeconfig "$kc" use-context c >/dev/null || return 1
  out="$(lb import "$air_dir/worker.tar" --to "$air/air/worker:nobody" --kubeconfig "$kc" \
    --node-exporter-image lifeboat.local/node-exporter:dev 2>&1)" || rc=$?
  [[ "$rc" == 2 ]] && grep -qi forbidden <<<"$out" || { echo "exit $rc: $out"; return 1; }
  relays_gone || { echo "a relay pod was made"; return 1; }
}
check "a user who may not create pods cannot import (forbidden, exit 2), no pod made" unprivileged_import_refused

summary kubectl-plugin
