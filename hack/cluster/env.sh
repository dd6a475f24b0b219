#!/usr/bin/env bash
# Layout of the local cluster: where it keeps its state, which addresses and
# ports it uses. Sourced by every cluster script and by the tests.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

export CLUSTER_DIR="${LIFEBOAT_CLUSTER_DIR:-/var/lib/lifeboat-cluster}"
export CLUSTER_PKI="$CLUSTER_DIR/pki"
export CLUSTER_LOGS="$CLUSTER_DIR/logs"
export CLUSTER_PIDS="$CLUSTER_DIR/pids"
export CLUSTER_RELAYS="$CLUSTER_DIR/relays"
export KUBECONFIG_ADMIN="$CLUSTER_DIR/admin.kubeconfig"
export K8S_BIN="$LIFEBOAT_BIN_CACHE/kubernetes-$KUBERNETES_VERSION"
export ETCD_BIN="$LIFEBOAT_BIN_CACHE/etcd-$ETCD_VERSION"
export KUBECTL="$K8S_BIN/kubectl"

# Control plane and registries listen on the host's loopback only.
export APISERVER_PORT=6443
export ETCD_CLIENT_PORT=2379
export ETCD_PEER_PORT=2380
export SOURCE_REGISTRY="${SOURCE_REGISTRY:-127.0.0.1:5001}"   # plain HTTP, anonymous: what workloads pull from
export BACKUP_REGISTRY="${BACKUP_REGISTRY:-127.0.0.1:5002}"   # TLS from the cluster CA + htpasswd basic auth
export BACKUP_REGISTRY_USER="lifeboat"
# A fixed test password: this registry exists only on loopback for the tests.
export BACKUP_REGISTRY_PASSWORD="lifeboat-test-password"

# Each node is its own network namespace (a test host of ours) linked to the
# host by a veth on the bridge below. In a node, 127.0.0.1:6443 and the
# registry ports are relayed to the host's loopback through unix sockets, so
# image references and kubeconfigs are the same on the host and on nodes.
export NODE_BRIDGE="lifeboat0"
export NODE_BRIDGE_CIDR="10.213.0.1/24"
export NODE_NAMES=(lifeboat-node-1 lifeboat-node-2)
node_index() { local n="$1"; echo "${n##*-}"; }
node_ip() { echo "10.213.0.1$(node_index "$1")"; }
node_netns() { echo "lb-node-$(node_index "$1")"; }
node_pod_cidr() { echo "10.244.$(node_index "$1").0/24"; }
node_dir() { echo "$CLUSTER_DIR/nodes/$1"; }
node_containerd_socket() { echo "$(node_dir "$1")/containerd.sock"; }
# containerd's content store (hack/values-local.yaml names the same place).
node_content_store() { echo "$(node_dir "$1")/containerd/root/io.containerd.content.v1.content"; }
# The `kubernetes` Service's ClusterIP. There is no kube-proxy: each node's
# relay listens on this address too, so in-cluster clients work unchanged.
export KUBERNETES_SERVICE_IP="10.96.0.1"
export SERVICE_CIDR="10.96.0.0/16"
export PAUSE_IMAGE="lifeboat.local/pause:1.0"

kubectl_admin() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
