#!/usr/bin/env bash
# Every Lifeboat benchmark, in one place. None runs in hack/test.sh: they are
# heavy (GiBs of I/O, thousands of pods) and their figures depend on the
# machine. Each writes or prints the figures that docs/benchmarks.md records.
#
#   hack/bench.sh                  list the benchmarks and their commands
#   hack/bench.sh NAME [ARGS...]   run one (ARGS replace its default arguments)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# name | default command | what it measures (the docs/benchmarks.md section)
benchmarks=(
  "transfer|cargo bench -p registry-transfer --bench transfer -- --write|registry-transfer against skopeo on three corpora; rewrites the 'Registry transfer' tables (registry-transfer/benches/transfer.rs)"
  "referrers|cargo test -p registry-transfer --release --test referrers three_referrers -- --nocapture|requests of an image with 3 referrers against the image alone plus the referrers' own, and against oras cp -r ('Referrers'; registry-transfer/tests/referrers.rs)"
  "node-exporter|cargo test -p lifeboat-node-exporter --release --test benchmark -- --ignored --nocapture|a 1 GiB image pushed from a node's containerd three ways, speed and peak memory ('node-exporter'; node-exporter/tests/benchmark.rs)"
  "cluster-memory|operator/bench/cluster-memory.sh 2000 300|operator memory with 2,000 pods and 300 images, and their first full backup ('Operator: backup'; needs the local cluster and the operator deployed)"
  "many-nodes|operator/bench/many-nodes.sh --deploy --release 5000|a restore from nodes on a simulated 5,000-node cluster (Node objects with status.images, no kubelet): Jobs created, the node chosen, operator memory and API requests ('Restore on a 5,000-node cluster'; needs the local cluster)"
  "cluster-scale|operator/bench/cluster-scale.sh --deploy 20000 2000 4 20|release operator with 20,000 Pending pods of 1,000 Deployments (2,000 images, 4 namespaces, a policy each): memory idle / 2,000 / 20,000 pods, time to Ready, CPU and time of a full run after a restart ('Operator at scale'; needs the local cluster)"
  "backup-throughput|operator/bench/backup-throughput.sh small 1000|first full backup of 1,000 small images by the operator (release) against transfer-copy copying a corpus of the same shape between the same registries, same run; 'medium 20' for 20 medium images ('Operator: backup throughput'; needs the local cluster)"
  "restore|hack/bench-restore.sh --deploy 2|deletion to restored and re-pulled, from the backup registry and from a node ('Restore'; needs the local cluster)"
  "admission|hack/bench-admission.sh --deploy 500|the admission webhook alone (p50/p99 per review, Warn mode) and what it adds to a pod create against a namespace it does not cover, release build ('Admission webhook'; needs the local cluster)"
  "archives|hack/bench-archives.sh --deploy 1024|a 1 GiB archive into and out of a registry pod through the API server: kubectl lifeboat import/export (release) against kubectl port-forward + skopeo copy, and curl through port-forward as the floor ('kubectl lifeboat archives'; needs the local cluster)"
  "node-import|tests/e2e/node-import.sh --release|registry killed -> pod Running on a node that never had the image, imported from the backup and node to node, 3 MiB and 100 MiB, release build ('Import into a node'; needs the local cluster)"
)
# Figures the e2e suites measure on every run (their "measured:" lines):
#   tests/e2e/operator-backup.sh            new Deployment -> image in the backup
#   tests/e2e/operator-backup-lifecycle.sh  SIGKILL mid-copy -> Ready again, bytes not copied again
#   tests/e2e/node-import.sh                registry killed -> pod Running through an import Job

if (($# == 0)); then
  printf '%-15s %s\n' NAME COMMAND
  for entry in "${benchmarks[@]}"; do
    IFS='|' read -r name command what <<<"$entry"
    printf '%-15s %s\n%-15s   %s\n' "$name" "$command" "" "$what"
  done
  exit 0
fi

want="$1"; shift
for entry in "${benchmarks[@]}"; do
  IFS='|' read -r name command _ <<<"$entry"
  [[ "$name" == "$want" ]] || continue
  read -ra words <<<"$command"
  if (($# > 0)); then
    # Extra arguments replace the defaults: after `--` for cargo, after the script otherwise.
    if [[ "${words[0]}" == cargo ]]; then
      for i in "${!words[@]}"; do [[ "${words[$i]}" == -- ]] && { words=("${words[@]:0:i+1}"); break; }; done
    else
      words=("${words[0]}")
    fi
    words+=("$@")
  fi
  log "running: ${words[*]}"
  exec "${words[@]}"
done
die "no benchmark named '$want' (hack/bench.sh lists them)"
