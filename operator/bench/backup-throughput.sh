#!/usr/bin/env bash
# The operator's copy throughput against its own engine's CLI, same run,
# same registries: the first full backup of IMAGES distinct images by an
# ImageBackupPolicy (policy created -> Ready, every image protected) and
# `transfer-copy` (release build) copying another corpus of the same shape
# from the same source registry into the same backup registry (TLS + basic
# auth), once from this host and once from a node's network namespace (the
# operator's path: the cluster's relays to the host's registries). Each copy
# gets a fresh corpus (random layers), so none finds another's blobs. Pods
# are Pending (a node selector nothing matches): the API server holds them,
# the operator discovers them, nothing pulls.
#
#   operator/bench/backup-throughput.sh [--debug] [small|medium] [IMAGES]
#
# small: 1 shared 2 MiB layer + 1 own 256 KiB layer (the transfer
# benchmark's small corpus), 1,000 images by default; medium: 2 shared +
# 3 own 8 MiB layers, 20 images. The release operator is built and loaded
# (--debug: the debug one, as the e2e suites run it); the e2e lock is held
# throughout, and the debug operator is put back at the end.
# BENCH_OPERATOR_ENV="NAME=VALUE ..." sets operator settings for the run
# (e.g. LIFEBOAT_COPIES_PER_ROUTE), put back afterwards by config/operator.
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/lib.sh"
set -euo pipefail
profile=release
[[ "${1:-}" == --debug ]] && { profile=debug; shift; }
shape="${1:-small}"
case "$shape" in
  small) images="${2:-1000}" layout=(1 $((2 * 1024 * 1024)) 1 $((256 * 1024))) ;;
  medium) images="${2:-20}" layout=(2 $((8 * 1024 * 1024)) 3 $((8 * 1024 * 1024))) ;;
  *) die "shape is small or medium, not $shape" ;;
esac
run="tp$RANDOM"
ns="ibp-throughput-$run"
work="$(mktemp -d)"
cleanup() {
  k delete namespace "$ns" --wait=false --ignore-not-found >/dev/null 2>&1
  rm -rf "$work"
  [[ -n "${BENCH_OPERATOR_ENV:-}" ]] && k apply -f "$REPO_ROOT/config/operator" >/dev/null 2>&1
  if [[ "$profile" == release ]]; then
    "$REPO_ROOT/hack/images/lifeboat-images.sh" >/dev/null 2>&1 && restart_operator >/dev/null 2>&1
  fi
}
on_exit cleanup

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LIFEBOAT_CACHE/cargo-target}"
log "building transfer-copy (release)"
(cd "$REPO_ROOT" && cargo build --quiet --release -p registry-transfer --bin transfer-copy)
cli="$CARGO_TARGET_DIR/release/transfer-copy"
flags=()
[[ "$profile" == release ]] && flags=(--release)
"$REPO_ROOT/hack/images/lifeboat-images.sh" "${flags[@]}"
k apply --server-side --force-conflicts -f "$REPO_ROOT/config/crd" >/dev/null
k apply -f "$REPO_ROOT/config/operator" >/dev/null
if [[ -n "${BENCH_OPERATOR_ENV:-}" ]]; then
  read -ra settings <<<"$BENCH_OPERATOR_ENV"
  k -n lifeboat-system set env deploy/lifeboat-operator "${settings[@]}" >/dev/null
fi
restart_operator
echo "operator settings: $(k -n lifeboat-system get deploy lifeboat-operator -o json |
  jq -c '[.spec.template.spec.containers[0].env[] | select(.name | test("COPIES|CONCURRENT")) | "\(.name)=\(.value)"]')"

push() {
  python3 "$REPO_ROOT/operator/bench/push-images.py" "$SOURCE_REGISTRY" "$1" "$images" "${layout[@]}" >"$2"
}
started=$SECONDS
push "$run/op" "$work/op.list"
push "$run/cli" "$work/cli.list"
push "$run/cli-node" "$work/cli-node.list"
echo "pushed 3 x $images $shape images in $((SECONDS - started)) s"

# The operator's process on this host (nodes are network namespaces here):
# its CPU time in seconds, from /proc.
operator_pid() { pgrep -f '^/usr/local/bin/lifeboat-operator' | head -1; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
now() { date +%s.%N; }

k create namespace "$ns" >/dev/null
backup_registry_access "$ns"
# One Pending pod per image, each naming its image by tag and digest (what
# a running pod's status would tell the operator).
{
  echo '{"apiVersion":"v1","kind":"List","items":['
  i=0
  while read -r repository tag digest; do
    ((i > 0)) && echo ','
    printf '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p%d","labels":{"app":"throughput"}},"spec":{"nodeSelector":{"lifeboat.dev/bench":"never-scheduled"},"containers":[{"name":"c","image":"%s/%s:%s@%s"}]}}' \
      "$i" "$SOURCE_REGISTRY" "$repository" "$tag" "$digest"
    i=$((i + 1))
  done <"$work/op.list"
  echo ']}'
} >"$work/pods.json"
k -n "$ns" create -f "$work/pods.json" >/dev/null
pid="$(operator_pid)"
cpu_before="$(cpu_seconds "$pid")"
t0="$(now)"
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: lifeboat.dev/v1alpha1
kind: ImageBackupPolicy
metadata: {name: throughput}
spec:
  targets:
$(backup_target "$run/{repository}")
YAML
k -n "$ns" wait --for=condition=Ready ibp/throughput --timeout=1800s >/dev/null
t1="$(now)"
cpu_after="$(cpu_seconds "$pid")"
summary_json="$(k -n "$ns" get ibp throughput -o jsonpath='{.status.summary}')"
run_json="$(k -n "$ns" get ibp throughput -o jsonpath='{.status.history[0]}')"
operator_s="$(echo "$t1 - $t0" | bc)"
# Every image really is in the backup, by digest (a sample of 20: each HEAD
# costs the registry as much as a copy's).
missing=0
while read -r repository _ digest; do
  [[ "$(backup_digest "$run/$repository" "$digest")" == "$digest" ]] || missing=$((missing + 1))
done < <(shuf -n 20 "$work/op.list")

# The CLI: the same registries, another corpus of the same shape.
auth="$(printf '%s' "$BACKUP_REGISTRY_USER:$BACKUP_REGISTRY_PASSWORD" | base64 -w0)"
printf '{"auths":{"%s":{"auth":"%s"}}}' "$BACKUP_REGISTRY" "$auth" >"$work/docker-config.json"
# cli_copy LIST [PREFIX...]: transfer-copy of LIST's images, run under
# PREFIX; prints its wall seconds.
cli_copy() {
  local list="$1" pairs=() t2 t3
  shift
  while read -r repository tag digest; do
    pairs+=("$SOURCE_REGISTRY/$repository:$tag@$digest" "$BACKUP_REGISTRY/$run/cli-copy/$repository:$tag")
  done <"$list"
  t2="$(now)"
  "$@" "$cli" --plain-http "$SOURCE_REGISTRY" --ca-bundle "$BACKUP_REGISTRY=$CLUSTER_PKI/ca.crt" \
    --docker-config "$work/docker-config.json" "${pairs[@]}" >"$work/cli.out" 2>"$work/cli.err"
  t3="$(now)"
  tail -1 "$work/cli.out" >&2
  echo "$t3 - $t2" | bc
}
cli_s="$(cli_copy "$work/cli.list")"
# The operator's own path: it runs with hostNetwork on a node, whose
# network namespace reaches the registries (on this host's loopback)
# through the cluster's socat relays. The CLI from the same namespace
# takes that path too.
cli_node_s="$(cli_copy "$work/cli-node.list" ip netns exec "$(node_netns "${NODE_NAMES[0]}")")"

echo "operator ($profile): $images $shape images, policy created -> Ready in ${operator_s} s" \
  "($(echo "scale=1; $images / $operator_s" | bc) images/s), operator CPU $(echo "$cpu_after - $cpu_before" | bc) s"
echo "  summary: $summary_json"
echo "  run: $run_json"
echo "  sampled 20 images in the backup by digest: $((20 - missing)) present"
echo "transfer-copy (release): $images $shape images in ${cli_s} s ($(echo "scale=1; $images / $cli_s" | bc) images/s)"
echo "transfer-copy (release) in ${NODE_NAMES[0]}'s network namespace (the operator's path): ${cli_node_s} s ($(echo "scale=1; $images / $cli_node_s" | bc) images/s)"
echo "measured: operator throughput / CLI throughput = $(echo "scale=2; $cli_s / $operator_s" | bc) (goal >= 0.8); against the CLI on the operator's network path: $(echo "scale=2; $cli_node_s / $operator_s" | bc)"
