#!/usr/bin/env bash
# The local cluster's PKI, made with the openssl CLI: one CA signs every
# serving and client certificate. Idempotent: existing files are kept.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

mkdir -p "$CLUSTER_PKI"
cd "$CLUSTER_PKI"

ca() {
  [[ -f ca.crt ]] && return
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=lifeboat-local-cluster-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt 2>/dev/null
}

# cert NAME CN ORG USAGE(server|client|both) [SAN,...]
cert() {
  local name="$1" cn="$2" org="$3" usage="$4" sans="${5:-}"
  [[ -f "$name.crt" ]] && return
  local subject="/CN=$cn"
  [[ -n "$org" ]] && subject="/O=$org$subject"
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr" 2>/dev/null
  local eku
  case "$usage" in
    server) eku=serverAuth ;;
    client) eku=clientAuth ;;
    both) eku=serverAuth,clientAuth ;;
  esac
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

ca
cert apiserver kube-apiserver "" server \
  "IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,IP:${NODE_BRIDGE_CIDR%/*},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
cert admin lifeboat-admin system:masters client
cert controller-manager system:kube-controller-manager "" client
cert scheduler system:kube-scheduler "" client
cert backup-registry lifeboat-backup-registry "" server "IP:127.0.0.1,DNS:localhost"
for node in "${NODE_NAMES[@]}"; do
  cert "kubelet-$node-client" "system:node:$node" system:nodes client
  cert "kubelet-$node-serving" "$node" "" server "IP:$(node_ip "$node"),DNS:$node"
done
if [[ ! -f service-account.key ]]; then
  openssl genrsa -out service-account.key 2048 2>/dev/null
  openssl rsa -in service-account.key -pubout -out service-account.pub 2>/dev/null
fi
chmod 600 ./*.key

# kubeconfig NAME SERVER CERT
kubeconfig() {
  local file="$CLUSTER_DIR/$1.kubeconfig" server="$2" cert="$3"
  [[ -f "$file" ]] && return
  cat >"$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: lifeboat-local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$cert.crt")
    client-key-data: $(base64 -w0 "$cert.key")
contexts:
- name: lifeboat-local
  context: {cluster: lifeboat-local, user: $1}
current-context: lifeboat-local
KCFG
  chmod 600 "$file"
}
kubeconfig admin "https://127.0.0.1:$APISERVER_PORT" admin
kubeconfig controller-manager "https://127.0.0.1:$APISERVER_PORT" controller-manager
kubeconfig scheduler "https://127.0.0.1:$APISERVER_PORT" scheduler
for node in "${NODE_NAMES[@]}"; do
  kubeconfig "kubelet-$node" "https://127.0.0.1:$APISERVER_PORT" "kubelet-$node-client"
done
