#!/usr/bin/env bash
# A 1 GiB image archive into and out of a registry that runs as a pod, through
# the API server only, two ways in the same run:
#   - kubectl lifeboat import/export (release build): port-forward straight to
#     the registry pod (and, for import, once more through a relay pod with
#     --relay, the way a registry named by a Service address is reached),
#     registry-transfer streaming from/to the archive file;
#   - kubectl port-forward to the registry pod + skopeo copy (oci-archive:).
# And this machine's floors for that path: curl uploading the 1 GiB layer
# (one monolithic PUT) and downloading it through kubectl port-forward. Each
# client gets a fresh registry pod (an emptyDir), so no push finds the blobs
# already there. Prints a Markdown table: seconds, MB/s and the client's peak
# RSS (for port-forward + skopeo, both processes), the load average before
# each row, and where the plugin's import spent its time.
#
#   hack/bench-archives.sh [--deploy] [size-MiB]   (default 1024)
#
# Needs the local cluster (hack/cluster/up.sh); --deploy builds and loads
# Lifeboat's images and starts the operator first (the plugin reads the
# node-exporter image from the operator's Deployment).
source "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/lib.sh"

deploy=false
[[ "${1:-}" == "--deploy" ]] && { deploy=true; shift; }
mib="${1:-1024}"
ns="bench-archives-$RANDOM"
node="${NODE_NAMES[0]}"
work="$(mktemp -d /var/tmp/bench-archives.XXXXXX)"
pf_pids=()
on_exit 'kill "${pf_pids[@]}" 2>/dev/null; k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null; rm -rf "$work"'

{
  $deploy && deploy_operator
  check "kubectl-lifeboat (release) builds" bash -c "cd '$REPO_ROOT' && cargo build --quiet --release -p kubectl-lifeboat"
  check "the registry image is on the nodes" in_cluster_registry_image
} >&2
plugin="${CARGO_TARGET_DIR:-$LIFEBOAT_CACHE/cargo-target}/release/kubectl-lifeboat"
k create namespace "$ns" >/dev/null

registry_pod() {
  cat <<YAML | k apply -n "$ns" -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true, runAsUser: 65532}
  containers:
  - name: registry
    image: $E2E_REGISTRY_IMAGE
    imagePullPolicy: Never
    readinessProbe: {tcpSocket: {port: 5000}, periodSeconds: 1}
    volumeMounts: [{name: data, mountPath: /var/lib/registry}]
  volumes: [{name: data, emptyDir: {}}]
YAML
  k -n "$ns" wait --for=condition=Ready "pod/$1" --timeout=60s >/dev/null
}
# port_forward POD: a kubectl port-forward to the pod's 5000 on a free local
# port; sets $pf_port and $pf_pid.
port_forward() {
  pf_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$KUBECTL" -n "$ns" port-forward "pod/$1" "$pf_port:5000" >/dev/null 2>&1 &
  pf_pid=$!; pf_pids+=("$pf_pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$pf_port/v2/" >/dev/null && return 0; sleep 0.1; done
  return 1
}
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# timed OUT CMD...: runs CMD under /usr/bin/time; OUT gets "seconds rss-KiB".
timed() {
  local out="$1"; shift
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null
}
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }

{
  check "a $mib MiB image (one random layer) is written as an OCI archive by skopeo" bash -c "
    python3 '$REPO_ROOT/hack/images/oci-image.py' image --layout '$work/layout' --ref big --compression none \
      --random-layer $((mib * 1024 * 1024)):bench-archives-\$RANDOM >/dev/null &&
    skopeo copy -q 'oci:$work/layout:big' 'oci-archive:$work/big.tar:1'"
  registry_pods() { registry_pod reg-skopeo && registry_pod reg-plugin && registry_pod reg-relay; }
  check "three registry pods (one per client) are ready on $node" registry_pods
} >&2
bytes="$(stat -c %s "$work/big.tar")"
digest="$(skopeo inspect --format '{{.Digest}}' "oci-archive:$work/big.tar")"
layer="$(skopeo inspect --format '{{index .Layers 0}}' "oci-archive:$work/big.tar")"
tar -C "$work" -xf "$work/big.tar" "blobs/sha256/${layer#sha256:}"
layer_file="$work/blobs/sha256/${layer#sha256:}"
reg_plugin="$(k -n "$ns" get pod reg-plugin -o jsonpath='{.status.podIP}'):5000"
reg_relay="$(k -n "$ns" get pod reg-relay -o jsonpath='{.status.podIP}'):5000"

load() { cut -d' ' -f1 /proc/loadavg; }
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }
# upload_floor PORT: one monolithic upload of the layer (POST, then PUT with
# the whole body), as fast as curl sends through the port-forward.
upload_floor() {
  local location sep
  location="$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$1/v2/bench/floor/blobs/uploads/" |
    tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')" || return 1
  [[ "$location" == http* ]] || location="http://127.0.0.1:$1$location"
  sep='?'; [[ "$location" == *'?'* ]] && sep='&'
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$layer_file" -o /dev/null "$location${sep}digest=$layer"
}
# plugin_phases LOG: the seconds since start of the import's phases.
plugin_phases() {
  awk '
    /archive checked/ {c=$1} /relay pod ready|registry pod reached directly/ {t=$1} /copy done/ {d=$1}
    END {printf "archive checked %.1f s, tunnel ready %.1f s, copy done %.1f s", c, t, d}' "$1"
}
echo "| $mib MiB archive, through the API server | seconds | MB/s | client peak RSS | digest kept | load |"
echo "|---|---:|---:|---:|---|---:|"

# --- into the registry ---------------------------------------------------------------------
port_forward reg-skopeo
l="$(load)"
timed "$work/t" skopeo copy -q --dest-tls-verify=false "oci-archive:$work/big.tar" "docker://127.0.0.1:$pf_port/bench/big:1"
read -r secs rss <"$work/t"
got="$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://127.0.0.1:$pf_port/bench/big:1")"
row "import: kubectl port-forward + skopeo copy" "$secs" "$(mbps "$bytes" "$secs")" \
  "skopeo $((rss / 1024)) MiB + port-forward $(( $(hwm "$pf_pid") / 1024 )) MiB" "$([[ "$got" == "$digest" ]] && echo yes || echo NO)" "$l"
up_floor_load="$(load)"
started="$EPOCHREALTIME"
upload_floor "$pf_port" || { echo "the upload floor's curl failed" >&2; exit 1; }
up_floor_secs="$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')"
l="$(load)"
timed "$work/t" curl -sf -o /dev/null "http://127.0.0.1:$pf_port/v2/bench/big/blobs/$layer"
read -r floor_secs _ <"$work/t"
floor_load="$l"
kill "$pf_pid"

# plugin_import REGISTRY ARGS...: the plugin's import, its phases logged.
plugin_import() {
  local registry="$1"; shift
  l="$(load)"
  KUBECTL_LIFEBOAT_LOG=info timed "$work/t" "$plugin" import "$work/big.tar" --to "$registry/bench/big:1" -n "$ns" \
    --relay-node "$node" --progress none "$@" 2>"$work/log"
  read -r secs rss <"$work/t"
}
plugin_import "$reg_plugin"
direct_phases="$(plugin_phases "$work/log")"
grep -q "registry pod reached directly" "$work/log" || { echo "the plugin did not reach the registry pod directly" >&2; exit 1; }
row "import: kubectl lifeboat (release), port-forward to the registry pod" "$secs" "$(mbps "$bytes" "$secs")" "$((rss / 1024)) MiB" "yes (printed and verified)" "$l"
plugin_import "$reg_relay" --relay
relay_phases="$(plugin_phases "$work/log")"
row "import: kubectl lifeboat (release), through a relay pod (--relay)" "$secs" "$(mbps "$bytes" "$secs")" "$((rss / 1024)) MiB" "yes (printed and verified)" "$l"

# --- out of the registry -------------------------------------------------------------------
port_forward reg-skopeo
l="$(load)"
timed "$work/t" skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$pf_port/bench/big:1" "oci-archive:$work/out-skopeo.tar"
read -r secs rss <"$work/t"
got="$(skopeo inspect --format '{{.Digest}}' "oci-archive:$work/out-skopeo.tar")"
row "export: kubectl port-forward + skopeo copy" "$secs" "$(mbps "$bytes" "$secs")" \
  "skopeo $((rss / 1024)) MiB + port-forward $(( $(hwm "$pf_pid") / 1024 )) MiB" "$([[ "$got" == "$digest" ]] && echo yes || echo NO)" "$l"
kill "$pf_pid"
rm -f "$work/out-skopeo.tar"

l="$(load)"
timed "$work/t" "$plugin" export "$reg_plugin/bench/big:1" -o "$work/out-plugin.tar" -n "$ns" --relay-node "$node" --progress none 2>"$work/log"
read -r secs rss <"$work/t"
got="$(skopeo inspect --format '{{.Digest}}' "oci-archive:$work/out-plugin.tar")"
row "export: kubectl lifeboat (release), port-forward to the registry pod" "$secs" "$(mbps "$bytes" "$secs")" "$((rss / 1024)) MiB" "$([[ "$got" == "$digest" ]] && echo yes || echo NO)" "$l"
row "floor: curl uploading the layer (one PUT) through kubectl port-forward" "$up_floor_secs" "$(mbps "$bytes" "$up_floor_secs")" "-" "-" "$up_floor_load"
row "floor: curl downloading the layer through kubectl port-forward" "$floor_secs" "$(mbps "$bytes" "$floor_secs")" "-" "-" "$floor_load"
echo
echo "kubectl lifeboat import, seconds since start: port-forward to the registry pod: $direct_phases; through a relay pod: $relay_phases"
