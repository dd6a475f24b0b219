#!/usr/bin/env bash
# Starts or stops one of the local cluster's registries (config written by
# up.sh), for outage tests:
#
#   hack/cluster/registry.sh start source|backup [--wait]   start it (no-op if running);
#                                                          --wait: until it answers
#   hack/cluster/registry.sh stop source|backup            SIGKILL: from now on it does not
#                                                          answer at all, as in an outage
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

action="${1:-}" which="${2:-}"
[[ "$which" == source || "$which" == backup ]] || die "usage: $0 start|stop source|backup [--wait]"
name="registry-$which"
case "$action" in
  start)
    [[ -f "$CLUSTER_DIR/registries/$which.yml" ]] || die "no $which registry config: run hack/cluster/up.sh first"
    mkdir -p "$CLUSTER_LOGS" "$CLUSTER_PIDS"
    start "$name" docker-registry serve "$CLUSTER_DIR/registries/$which.yml"
    if [[ "${3:-}" == --wait ]]; then
      if [[ "$which" == source ]]; then
        wait_for "source registry" 30 curl -sf "http://$SOURCE_REGISTRY/v2/"
      else
        wait_for "backup registry" 30 curl -sf --cacert "$CLUSTER_PKI/ca.crt" \
          -u "$BACKUP_REGISTRY_USER:$BACKUP_REGISTRY_PASSWORD" "https://$BACKUP_REGISTRY/v2/"
      fi
    fi
    ;;
  stop)
    if is_running "$name"; then
      pid="$(cat "$CLUSTER_PIDS/$name.pid")"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    ;;
  *) die "usage: $0 start|stop source|backup [--wait]" ;;
esac
