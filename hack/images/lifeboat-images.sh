#!/usr/bin/env bash
# Builds container images of Lifeboat's own binaries (each binary plus the
# shared libraries it links, CA certificates, nothing else) and loads them into
# every node's containerd, so the operator and the export Jobs run as real pods.
#
#   lifeboat-images.sh [--release]
#
# Images: lifeboat.local/lifeboat-operator:dev and lifeboat.local/node-exporter:dev
# (pods use imagePullPolicy: IfNotPresent or Never).
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/env.sh"

profile=debug
cargo_flags=()
if [[ "${1:-}" == "--release" ]]; then profile=release; cargo_flags+=(--release); fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LIFEBOAT_CACHE/cargo-target}"

log "building lifeboat-operator and node-exporter ($profile)"
(cd "$REPO_ROOT" && cargo build --quiet "${cargo_flags[@]}" -p lifeboat-operator -p lifeboat-node-exporter)

# Packing and importing ~450 MiB of debug binaries takes ~20 s and every e2e
# suite calls this: skip it when the nodes already hold images of exactly
# these binaries (the stamp names their hashes; each node is asked too).
stamp="$CLUSTER_DIR/images/lifeboat-images.stamp"
wanted="$(cd "$CARGO_TARGET_DIR/$profile" && sha256sum lifeboat-operator node-exporter)"
loaded_everywhere() {
  local node sock image
  [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] || return 1
  for node in "${NODE_NAMES[@]}"; do
    sock="$(node_containerd_socket "$node")"
    for image in lifeboat-operator node-exporter; do
      ctr -a "$sock" -n k8s.io images ls -q "name==lifeboat.local/$image:dev" | grep -x "lifeboat.local/$image:dev" >/dev/null || return 1
    done
  done
}
if loaded_everywhere; then
  log "lifeboat.local/lifeboat-operator:dev and lifeboat.local/node-exporter:dev are current in ${NODE_NAMES[*]}"
  exit 0
fi
rm -f "$stamp"

layout="$CLUSTER_DIR/images/lifeboat-layout"
rm -rf "$layout"
declare -A binaries=([lifeboat-operator]=lifeboat-operator [node-exporter]=node-exporter)
for image in "${!binaries[@]}"; do
  bin="$CARGO_TARGET_DIR/$profile/${binaries[$image]}"
  [[ -x "$bin" ]] || die "$bin was not built"
  python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$layout" --ref "lifeboat.local/$image:dev" \
    --compression none --binary "$bin:/usr/local/bin/${binaries[$image]}" \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --entrypoint "[\"/usr/local/bin/${binaries[$image]}\"]" --user 65532:65532 >/dev/null
done
python3 "$REPO_ROOT/hack/images/oci-image.py" archive --layout "$layout" --out "$layout.tar"

for node in "${NODE_NAMES[@]}"; do
  sock="$(node_containerd_socket "$node")"
  [[ -S "$sock" ]] || die "node $node is not running (start the cluster with hack/cluster/up.sh)"
  ctr -a "$sock" -n k8s.io images import "$layout.tar" >/dev/null
done
mkdir -p "$(dirname "$stamp")"
printf '%s\n' "$wanted" >"$stamp"
log "loaded lifeboat.local/lifeboat-operator:dev and lifeboat.local/node-exporter:dev into ${NODE_NAMES[*]}"
