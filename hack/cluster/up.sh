#!/usr/bin/env bash
# Starts the local Lifeboat cluster: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, two nodes (each its own network namespace, containerd and
# kubelet) and two registries. Reuses whatever is already running, so calling
# it again is cheap. Stop everything with hack/cluster/down.sh.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

[[ $EUID -eq 0 ]] || die "the local cluster needs root (network namespaces, containerd, kubelet)"
start_time=$SECONDS

"$REPO_ROOT/hack/build-kubernetes.sh"
"$REPO_ROOT/hack/cluster/pki.sh"
mkdir -p "$CLUSTER_LOGS" "$CLUSTER_PIDS" "$CLUSTER_RELAYS"

source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

### Registries ###############################################################
registry_config() {
  local name="$1" addr="$2" extra="$3"
  mkdir -p "$CLUSTER_DIR/registries/$name"
  cat >"$CLUSTER_DIR/registries/$name.yml" <<CFG
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $CLUSTER_DIR/registries/$name
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $addr
$extra
CFG
}
if [[ ! -f "$CLUSTER_DIR/registries/backup.htpasswd" ]]; then
  mkdir -p "$CLUSTER_DIR/registries"
  htpasswd -Bbn "$BACKUP_REGISTRY_USER" "$BACKUP_REGISTRY_PASSWORD" >"$CLUSTER_DIR/registries/backup.htpasswd"
fi
registry_config source "$SOURCE_REGISTRY" ""
registry_config backup "$BACKUP_REGISTRY" "  tls:
    certificate: $CLUSTER_PKI/backup-registry.crt
    key: $CLUSTER_PKI/backup-registry.key
auth:
  htpasswd:
    realm: lifeboat-backup
    path: $CLUSTER_DIR/registries/backup.htpasswd"
"$REPO_ROOT/hack/cluster/registry.sh" start source
"$REPO_ROOT/hack/cluster/registry.sh" start backup

### Control plane ############################################################
start etcd "$ETCD_BIN/etcd" --name lifeboat --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "lifeboat=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" \
  --unsafe-no-fsync --log-level warn

start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --tls-cert-file "$CLUSTER_PKI/apiserver.crt" --tls-private-key-file "$CLUSTER_PKI/apiserver.key" \
  --client-ca-file "$CLUSTER_PKI/ca.crt" \
  --kubelet-client-certificate "$CLUSTER_PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$CLUSTER_PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$CLUSTER_PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
  --service-account-key-file "$CLUSTER_PKI/service-account.pub" \
  --service-account-signing-key-file "$CLUSTER_PKI/service-account.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --endpoint-reconciler-type none --allow-privileged=true --profiling=false --v=1

wait_for "kube-apiserver" 60 kubectl_admin get --raw /readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file "$CLUSTER_PKI/service-account.key" \
  --root-ca-file "$CLUSTER_PKI/ca.crt" \
  --cluster-signing-cert-file "$CLUSTER_PKI/ca.crt" --cluster-signing-key-file "$CLUSTER_PKI/ca.key" \
  --controllers '*,bootstrapsigner,tokencleaner' --profiling=false --v=1

start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false --v=1

### Relays from the nodes to the host's loopback ##############################
# Unix sockets cross network namespaces; TCP on 127.0.0.1 does not.
relay_host() {
  local name="$1" target="$2"
  start "relay-host-$name" socat "UNIX-LISTEN:$CLUSTER_RELAYS/$name.sock,fork,unlink-early,mode=600" "TCP:$target"
}
relay_host apiserver "127.0.0.1:$APISERVER_PORT"
relay_host registry-source "$SOURCE_REGISTRY"
relay_host registry-backup "$BACKUP_REGISTRY"

### Nodes #####################################################################
ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || {
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_BRIDGE_CIDR" dev "$NODE_BRIDGE"
}
ip link set "$NODE_BRIDGE" up

pause_archive="$CLUSTER_DIR/images/pause.tar"
if [[ ! -f "$pause_archive" ]]; then
  rm -rf "$CLUSTER_DIR/images/pause"
  python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$CLUSTER_DIR/images/pause" --ref "$PAUSE_IMAGE" \
    --busybox --entrypoint '["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]' >/dev/null
  python3 "$REPO_ROOT/hack/images/oci-image.py" archive --layout "$CLUSTER_DIR/images/pause" --out "$pause_archive"
fi

# A cgroup (v1: in every hierarchy) for each node's pods, so two kubelets on
# one machine never manage each other's containers.
node_cgroup() {
  local node="$1" hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d "$hierarchy" ]] || continue
    mkdir -p "$hierarchy$node"
    if [[ -f "${hierarchy}cpuset.cpus" ]]; then
      # cpuset children start empty and cannot hold tasks until filled.
      cat "${hierarchy}cpuset.cpus" >"$hierarchy$node/cpuset.cpus"
      cat "${hierarchy}cpuset.mems" >"$hierarchy$node/cpuset.mems"
    fi
  done
}

setup_node_network() {
  local node="$1" ns host_if
  ns="$(node_netns "$node")"
  host_if="lbn$(node_index "$node")"
  [[ -e "/run/netns/$ns" ]] || ip netns add "$ns"
  if ! ip link show "$host_if" >/dev/null 2>&1; then
    ip link add "$host_if" type veth peer name "${host_if}c"
    ip link set "${host_if}c" netns "$ns"
    ip -n "$ns" link set "${host_if}c" name eth0
    ip -n "$ns" addr add "$(node_ip "$node")/24" dev eth0
    ip link set "$host_if" master "$NODE_BRIDGE"
  fi
  ip link set "$host_if" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  # Read whole before matching: with pipefail, `grep -q` closing the pipe
  # early makes `ip` die of SIGPIPE and a present address look absent.
  local lo_addresses; lo_addresses="$(ip -n "$ns" addr show dev lo)"
  grep -q "$KUBERNETES_SERVICE_IP/32" <<<"$lo_addresses" ||
    ip -n "$ns" addr add "$KUBERNETES_SERVICE_IP/32" dev lo
  ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
}


start_node_relays() {
  local node="$1" name
  name="$(node_index "$node")"
  start "relay-node$name-apiserver" nsenter "--net=/run/netns/$(node_netns "$node")" socat "TCP-LISTEN:$APISERVER_PORT,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$CLUSTER_RELAYS/apiserver.sock"
  start "relay-node$name-kubernetes-service" nsenter "--net=/run/netns/$(node_netns "$node")" socat "TCP-LISTEN:443,bind=$KUBERNETES_SERVICE_IP,fork,reuseaddr" "UNIX-CONNECT:$CLUSTER_RELAYS/apiserver.sock"
  start "relay-node$name-registry-source" nsenter "--net=/run/netns/$(node_netns "$node")" socat "TCP-LISTEN:${SOURCE_REGISTRY##*:},bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$CLUSTER_RELAYS/registry-source.sock"
  start "relay-node$name-registry-backup" nsenter "--net=/run/netns/$(node_netns "$node")" socat "TCP-LISTEN:${BACKUP_REGISTRY##*:},bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$CLUSTER_RELAYS/registry-backup.sock"
}

start_node_containerd() {
  local node="$1" dir sock discard=false gc_deletions=0
  dir="$(node_dir "$node")"
  sock="$(node_containerd_socket "$node")"
  # The second node discards compressed layers once they are unpacked, as
  # many managed clusters do (GKE, EKS's and AKS's defaults in some
  # versions): node exports from it go through the rebuild path, and a
  # node-to-node import refuses it as a source (docs/restore.md).
  # Discarded layers go at containerd's next garbage collection; a busy
  # node runs one every few seconds, this quiet one might not for hours,
  # so here a collection follows every deletion (the end of a pull's lease
  # included).
  [[ "$node" == "${NODE_NAMES[1]}" ]] && discard=true gc_deletions=1
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/certs.d/$SOURCE_REGISTRY" "$dir/certs.d/$BACKUP_REGISTRY"
  cat >"$dir/certs.d/$SOURCE_REGISTRY/hosts.toml" <<TOML
server = "http://$SOURCE_REGISTRY"
[host."http://$SOURCE_REGISTRY"]
  capabilities = ["pull", "resolve", "push"]
TOML
  cat >"$dir/certs.d/$BACKUP_REGISTRY/hosts.toml" <<TOML
server = "https://$BACKUP_REGISTRY"
[host."https://$BACKUP_REGISTRY"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$CLUSTER_PKI/ca.crt"
TOML
  cat >"$dir/cni/net.d/10-lifeboat.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "lifeboat-$node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "lbpods$(node_index "$node")",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$(node_pod_cidr "$node")"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
JSON
  cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = $gc_deletions
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj (the pause container asks for -998): clamp to containerd's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = $discard
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        # Each node's runc state apart, so neither node's containerd sees the other's containers.
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
TOML
  # A running containerd started from another configuration (an older
  # checkout) is restarted with this one; containers keep running (their
  # shims outlive it) and the kubelet reconnects.
  local config_hash; config_hash="$(sha256sum <"$dir/containerd.toml")"
  if is_running "containerd-$node" && [[ "$(cat "$dir/containerd.toml.running" 2>/dev/null)" != "$config_hash" ]]; then
    log "containerd on $node runs an older configuration: restarting it"
    restart_component "containerd-$node"
  fi
  start "containerd-$node" nsenter "--net=/run/netns/$(node_netns "$node")" containerd --config "$dir/containerd.toml"
  echo "$config_hash" >"$dir/containerd.toml.running"
  wait_for "containerd on $node" 30 ctr -a "$sock" version
  if ! ctr -a "$sock" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
    ctr -a "$sock" -n k8s.io images import --no-unpack "$pause_archive" >/dev/null
    ctr -a "$sock" -n k8s.io images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null
  fi
}

declare -A reused_kubelet=()
start_node_kubelet() {
  local node="$1" dir
  is_running "kubelet-$node" && reused_kubelet[$node]=1
  dir="$(node_dir "$node")"
  mkdir -p "$dir/kubelet" "$dir/pod-logs"
  cat >"$dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $(node_ip "$node")
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CLUSTER_PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $CLUSTER_PKI/kubelet-$node-serving.crt
tlsPrivateKeyFile: $CLUSTER_PKI/kubelet-$node-serving.key
containerRuntimeEndpoint: unix://$(node_containerd_socket "$node")
cgroupDriver: cgroupfs
cgroupRoot: /$node
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
podLogsDir: $dir/pod-logs
# A busy CI disk must not make the node evict or taint itself.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
# Image GC off: tests rely on images staying in the node's containerd.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
clusterDomain: cluster.local
nodeStatusUpdateFrequency: 5s
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
# Lowering oom_score_adj needs CAP_SYS_RESOURCE, which root lacks on this kind of machine.
oomScoreAdj: 0
YAML
  node_cgroup "$node"
  start "kubelet-$node" nsenter "--net=/run/netns/$(node_netns "$node")" "$K8S_BIN/kubelet" \
    --config "$dir/kubelet.yaml" --kubeconfig "$CLUSTER_DIR/kubelet-$node.kubeconfig" \
    --hostname-override "$node" --node-ip "$(node_ip "$node")" \
    --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" --v=1
}

for node in "${NODE_NAMES[@]}"; do
  setup_node_network "$node"
  start_node_relays "$node"
  start_node_containerd "$node"
  start_node_kubelet "$node"
done

# Ready, as reported by a kubelet of this start: a Node object kept in etcd
# from an earlier run still says Ready until its heartbeat goes stale.
started_at="$(date -u -d "@$(( $(date +%s) - 1 ))" +%Y-%m-%dT%H:%M:%SZ)"
node_ready_now() {
  local heartbeat
  heartbeat="$(kubectl_admin get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')"
  [[ "${heartbeat%% *}" == True && ! "${heartbeat#* }" < "$started_at" ]]
}
for node in "${NODE_NAMES[@]}"; do
  if is_running "kubelet-$node" && [[ -n "${reused_kubelet[$node]:-}" ]]; then continue; fi
  wait_for "node $node to be Ready" 120 node_ready_now "$node"
done
wait_for "the default service account" 60 kubectl_admin get serviceaccount default -n default
wait_for "source registry" 30 curl -sf "http://$SOURCE_REGISTRY/v2/"
wait_for "backup registry" 30 curl -sf --cacert "$CLUSTER_PKI/ca.crt" -u "$BACKUP_REGISTRY_USER:$BACKUP_REGISTRY_PASSWORD" "https://$BACKUP_REGISTRY/v2/"

log "cluster ready in $((SECONDS - start_time)) s: export KUBECONFIG=$KUBECONFIG_ADMIN"
