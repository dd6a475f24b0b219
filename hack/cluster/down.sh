#!/usr/bin/env bash
# Stops the local cluster and everything it started: pods' containers, kubelets,
# containerds, control plane, registries, relays, mounts and network
# namespaces. Keeps the data (PKI, etcd, registries) unless --purge is given.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

purge=false
[[ "${1:-}" == "--purge" ]] && purge=true

stop_component() {
  local name="$1" pidfile="$CLUSTER_PIDS/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    # Each component runs in its own session: stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# Kubelets first, so nothing restarts the containers we are about to kill.
for node in "${NODE_NAMES[@]}"; do stop_component "kubelet-$node"; done

for node in "${NODE_NAMES[@]}"; do
  sock="$(node_containerd_socket "$node")"
  if [[ -S "$sock" ]] && ctr -a "$sock" version >/dev/null 2>&1; then
    for task in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    sleep 1
    for task in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n k8s.io tasks delete -f "$task" >/dev/null 2>&1 || true
    done
  fi
  stop_component "containerd-$node"
  # Shims outlive containerd by design; ours are the ones tied to our socket.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
done

for pidfile in "$CLUSTER_PIDS"/*.pid; do
  [[ -e "$pidfile" ]] || continue
  stop_component "$(basename "$pidfile" .pid)"
done

# Pod network namespaces made by the CNI bridge plugin for our pod CIDRs.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  case "$ns" in
    cni-*)
      if ip -n "$ns" -4 -o addr 2>/dev/null | grep -q ' 10\.244\.'; then ip netns del "$ns" 2>/dev/null || true; fi ;;
  esac
done

# Mounts left by kubelet volumes, containerd snapshots and sandboxes.
grep -F " $CLUSTER_DIR/" /proc/mounts | awk '{print $2}' | sort -r | while read -r mnt; do
  umount -l "$mnt" 2>/dev/null || true
done

for node in "${NODE_NAMES[@]}"; do
  ns="$(node_netns "$node")"
  [[ -e "/run/netns/$ns" ]] && ip netns del "$ns"
  ip link del "lbn$(node_index "$node")" 2>/dev/null || true
  for hierarchy in /sys/fs/cgroup/*/; do
    # Children first: cgroup directories are removed bottom-up.
    [[ -d "$hierarchy$node" ]] && find "$hierarchy$node" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
done
ip link del "$NODE_BRIDGE" 2>/dev/null || true

if $purge; then
  rm -rf "$CLUSTER_DIR"
  log "cluster stopped and its data removed"
else
  log "cluster stopped (data kept in $CLUSTER_DIR; --purge removes it)"
fi
