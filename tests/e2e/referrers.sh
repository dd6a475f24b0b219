#!/usr/bin/env bash
# Signatures and attestations travel with the images (issue 17), on the real
# cluster with the real cosign (hack/build-registry-tools.sh):
#
# - an image built for this run only is signed (`cosign sign`, a key pair
#   made here) and attested with an SBOM (`cosign attest --type spdxjson`)
#   in the source registry, in cosign's tag scheme;
# - a policy backs it up: its status counts the 2 referrers, and the backup
#   registry holds the .sig and .att tags;
# - image, signature and attestation are deleted from the source registry
#   and garbage-collected: `cosign verify` fails there;
# - an ImageRestore from the backup brings them back (status: 2 referrers),
#   and `cosign verify --key` and `cosign verify-attestation` succeed against
#   the restored image, by its original digest;
# - lost again, the image comes back from the node that runs it (a node
#   holds no signatures): the restore brings its referrers from the backup
#   registry (status: NodeCache, 2 referrers), and `cosign verify` succeeds
#   again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="ref-e2e-$RANDOM"
base="e2e/referrers-$RANDOM"
node1="${NODE_NAMES[0]}"
echo "referrers e2e (namespace $ns, image $SOURCE_REGISTRY/$base/signed)"

work="$(mktemp -d)"
cleanup() {
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
}
on_exit cleanup

check "cosign is built (hack/build-registry-tools.sh)" "$REPO_ROOT/hack/build-registry-tools.sh"
COSIGN="$LIFEBOAT_BIN_CACHE/cosign-$COSIGN_VERSION/cosign"
cosign() {
  (cd "$work" && HOME="$work" DOCKER_CONFIG="$work" COSIGN_PASSWORD=lifeboat-e2e COSIGN_YES=true "$COSIGN" "$@")
}

deploy_operator

push_image() {
  python3 "$REPO_ROOT/hack/images/oci-image.py" image --layout "$work/layout" --ref "$base/signed:1" --busybox \
    --random-layer "262144:$base-signed-$RANDOM$RANDOM" --entrypoint "$RUN_FOREVER" >/dev/null &&
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:$base/signed:1" "docker://$SOURCE_REGISTRY/$base/signed:1"
}
check "an image only this run uses is pushed" push_image
digest="$(registry_digest "$base/signed" 1)"
check "it has a digest" test -n "$digest"
image="$SOURCE_REGISTRY/$base/signed@$digest"
sig_tag="sha256-${digest#sha256:}.sig"
att_tag="sha256-${digest#sha256:}.att"

cat >"$work/sbom.json" <<'JSON'
{"spdxVersion":"SPDX-2.3","SPDXID":"SPDXRef-DOCUMENT","name":"signed","dataLicense":"CC0-1.0",
 "documentNamespace":"https://lifeboat.test/e2e/signed","creationInfo":{"created":"2026-01-01T00:00:00Z","creators":["Tool: lifeboat-e2e"]},"packages":[]}
JSON
sign() {
  cosign generate-key-pair >/dev/null 2>&1 &&
  cosign sign --key cosign.key --tlog-upload=false --allow-http-registry "$image" >/dev/null 2>&1 &&
  cosign attest --key cosign.key --tlog-upload=false --allow-http-registry --type spdxjson \
    --predicate sbom.json "$image" >/dev/null 2>&1
}
check "cosign signs it and attests an SBOM in the source registry" sign
verify() {
  cosign verify --key cosign.pub --insecure-ignore-tlog=true --allow-http-registry "$image" >/dev/null 2>&1
}
verify_attestation() {
  cosign verify-attestation --key cosign.pub --insecure-ignore-tlog=true --allow-http-registry \
    --type spdxjson "$image" >/dev/null 2>&1
}
check "cosign verify succeeds at the source" verify
sig_digest="$(registry_digest "$base/signed" "$sig_tag")"
att_digest="$(registry_digest "$base/signed" "$att_tag")"
check "the signature and attestation tags are there" test -n "$sig_digest" -a -n "$att_digest"

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
pinned_deployment signed "$node1" "$SOURCE_REGISTRY/$base/signed:1" | k apply -n "$ns" -f - >/dev/null
check "a Deployment runs it" k -n "$ns" rollout status deploy/signed --timeout=120s
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: signed}
spec:
  selector: {images: {include: ["**/${base#e2e/}/signed"]}}
  targets:
$(backup_target "e2e/{policyNamespace}/{registry}/{repository}")
YAML
check "the policy becomes Ready (image in the backup registry)" k -n "$ns" wait --for=condition=Ready ibp/signed --timeout=120s
backup_repo="e2e/$ns/${SOURCE_REGISTRY/:/-}/$base/signed"
summary_counts_two() {
  eventually 60 test "$(k -n "$ns" get ibp signed -o jsonpath='{.status.summary.referrers}')" == 2
}
check "its status counts 2 referrers" summary_counts_two
in_backup() {
  [[ "$(backup_digest "$backup_repo" "$digest")" == "$digest" ]] || { echo "image not in $backup_repo"; return 1; }
  [[ "$(backup_digest "$backup_repo" "$sig_tag")" == "$sig_digest" ]] || { echo "no $sig_tag"; return 1; }
  [[ "$(backup_digest "$backup_repo" "$att_tag")" == "$att_digest" ]] || { echo "no $att_tag"; return 1; }
}
check "the backup registry holds the image, its .sig and its .att, same digests" in_backup

lose_everything() {
  local d
  [[ "$(manifest_status "$base/signed" "$digest")" == 200 ]] || { echo "the image is not there to lose"; return 1; }
  for d in "$digest" "$sig_digest" "$att_digest"; do
    curl -sf -X DELETE "http://$SOURCE_REGISTRY/v2/$base/signed/manifests/$d" >/dev/null || { echo "DELETE $d"; return 1; }
  done
  source_garbage_collect
  [[ "$(manifest_status "$base/signed" "$digest")" == 404 ]] || { echo "image still served"; return 1; }
  [[ "$(manifest_status "$base/signed" "$sig_tag")" == 404 ]] || { echo "signature still served"; return 1; }
}
check "image, signature and attestation are deleted from the source and garbage-collected" lose_everything
verify_fails() { ! verify; }
check "cosign verify now fails at the source" verify_fails

k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: signed}
spec:
  images: ["$SOURCE_REGISTRY/$base/signed:1@$digest"]
  source: {type: Auto, backup: {policyName: signed}}
YAML
check "the restore becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/signed --timeout=120s
restored() {
  local got
  got="$(k -n "$ns" get imagerestore signed -o jsonpath='{.status.images[0].state} {.status.images[0].restoredDigest} {.status.images[0].referrers}')"
  [[ "$got" == "Restored $digest 2" ]] || { echo "status: $got"; return 1; }
}
check "its status: Restored, the original digest, 2 referrers" restored
check "cosign verify --key succeeds against the restored image (original digest)" verify
check "cosign verify-attestation succeeds against it" verify_attestation
check "the restored signature has its original digest" test "$(registry_digest "$base/signed" "$sig_tag")" == "$sig_digest"

check "image, signature and attestation are lost again" lose_everything
k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageRestore
metadata: {name: from-node}
spec:
  images: ["$SOURCE_REGISTRY/$base/signed:1@$digest"]
  source: {type: Auto, order: [NodeCache, BackupRegistry], backup: {policyName: signed}}
YAML
check "the restore from the node becomes Ready" k -n "$ns" wait --for=condition=Ready imagerestore/from-node --timeout=120s
restored_from_node() {
  local got
  got="$(k -n "$ns" get imagerestore from-node -o jsonpath='{.status.images[0].state} {.status.images[0].source.kind} {.status.images[0].restoredDigest} {.status.images[0].referrers} {.status.images[0].referrersReason}')"
  [[ "$got" == "Restored NodeCache $digest 2 " ]] || { echo "status: $got"; return 1; }
}
check "its status: Restored from NodeCache, the original digest, 2 referrers (from the backup)" restored_from_node
check "cosign verify --key succeeds against the node-restored image" verify
check "cosign verify-attestation succeeds against it" verify_attestation

summary referrers
