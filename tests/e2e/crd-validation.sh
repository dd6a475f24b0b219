#!/usr/bin/env bash
# The generated CRDs are accepted by the real API server, the samples are
# valid, and every object in api/tests/invalid/ is rejected with the message
# its "# expect:" line names (schema and CEL rules evaluated by the server).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ns="crd-$RANDOM"
echo "CRD validation on the API server (namespace $ns)"

check "the CRDs apply" k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd/"
check "the CRDs are Established" k wait --for=condition=Established --timeout=60s \
  crd/imagebackuppolicies.lifeboat.dev crd/imagerestores.lifeboat.dev
k create namespace "$ns" >/dev/null

for sample in "$REPO_ROOT"/config/samples/*.yaml; do
  check "sample $(basename "$sample") is accepted" k apply -n "$ns" --dry-run=server -f "$sample"
done

# The YAML examples of Lifeboat objects in docs/*.md are valid too (their
# metadata.namespace is dropped: they are tried in the test namespace).
docs_examples="$(mktemp -d)"
for doc in "$REPO_ROOT"/docs/*.md; do
  awk -v out="$docs_examples/$(basename "$doc" .md)" '
    /^```yaml$/ { inside = 1; n++; text = ""; next }
    /^```$/ && inside { inside = 0; if (text ~ /apiVersion: lifeboat\.dev\//) { f = out "-" n ".yaml"; printf "%s", text > f; close(f) }; next }
    inside { text = text $0 "\n" }
  ' "$doc"
done
examples=("$docs_examples"/*.yaml)
at_least_three_examples() { (( ${#examples[@]} >= 3 )) || { echo "only ${#examples[@]} examples found in docs/"; return 1; }; }
check "the docs hold YAML examples of Lifeboat objects" at_least_three_examples
for example in "${examples[@]}"; do
  [[ -e "$example" ]] || continue
  python3 -c 'import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    d.get("metadata", {}).pop("namespace", None)
json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, open(sys.argv[1], "w"))' "$example"
  check "docs example $(basename "$example" .yaml) is accepted" k apply -n "$ns" --dry-run=server -f "$example"
done
rm -rf "$docs_examples"

rejected_with_message() {
  local file="$1" expected out
  expected="$(sed -n 's/^# expect: //p' "$file" | head -1)"
  [[ -n "$expected" ]] || { echo "$file has no '# expect:' line"; return 1; }
  if out="$(k create -n "$ns" --dry-run=server -f "$file" 2>&1)"; then
    echo "accepted, but should have been rejected: $out"
    return 1
  fi
  grep -qF -- "$expected" <<<"$out" || { echo "rejected with an unexpected message:"; echo "$out"; echo "expected: $expected"; return 1; }
}
invalid=("$REPO_ROOT"/api/tests/invalid/*.yaml)
at_least_twenty() { (( ${#invalid[@]} >= 20 )) || { echo "only ${#invalid[@]} invalid objects"; return 1; }; }
check "the table holds at least 20 invalid objects" at_least_twenty
for file in "${invalid[@]}"; do
  [[ -e "$file" ]] || continue
  check "rejects $(basename "$file" .yaml)" rejected_with_message "$file"
done

# ImageRestore.spec is immutable once created.
restore_spec_immutable() {
  local sample="$REPO_ROOT/config/samples/restore-named-images.yaml" name
  name="$(k create -n "$ns" -f "$sample" -o jsonpath='{.metadata.name}')" || return 1
  local out
  if out="$(k patch -n "$ns" imagerestore "$name" --type merge -p '{"spec":{"activeDeadlineSeconds":7}}' 2>&1)"; then
    echo "spec change was accepted: $out"; return 1
  fi
  grep -qi 'immutable' <<<"$out" || { echo "unexpected message: $out"; return 1; }
}
check "an ImageRestore's spec cannot change" restore_spec_immutable

# A fresh object reads status.observedGeneration -1 (the CRDs default status
# to {} and observedGeneration to -1), so kstatus and `kubectl wait` cannot
# take it for reconciled. The object is really created and stored; what the
# create returns is what the API server read back from etcd, before any
# operator (which may run in this cluster) could touch it.
fresh_object_unobserved() {
  local sample="$1" got
  got="$(k create -n "$ns" -f "$sample" -o jsonpath='{.metadata.generation} {.status.observedGeneration}')" || return 1
  [[ "$got" == "1 -1" ]] || { echo "generation and status.observedGeneration of a fresh object: '$got', want '1 -1'"; return 1; }
}
check "a fresh policy reads observedGeneration -1" fresh_object_unobserved "$REPO_ROOT/config/samples/backup-policy-tenant.yaml"
check "a fresh restore reads observedGeneration -1" fresh_object_unobserved "$REPO_ROOT/config/samples/restore-all-missing.yaml"
check "kubectl get lifeboat lists both kinds" k get lifeboat -n "$ns"

k delete namespace "$ns" --wait=false >/dev/null
summary "CRD validation"
