# Sourced by the cluster scripts: the local cluster's components run as
# background processes of the host, each in its own session, with a pid file
# in $CLUSTER_PIDS and a log in $CLUSTER_LOGS.

is_running() { local f="$CLUSTER_PIDS/$1.pid"; [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

# start NAME COMMAND... : runs a component in the background, in its own
# session (so down.sh can kill its whole process group), logging to logs/NAME.log.
# Started from an e2e suite (hack/cluster/registry.sh in an outage test), the
# component must not inherit the suite's e2e lock: it would hold the lock for
# as long as it runs, and every later suite would wait forever.
start() {
  local name="$1"; shift
  is_running "$name" && return
  (
    # The lock's fd number is the suite's (not exported): find it by target.
    for fd in /proc/"$BASHPID"/fd/*; do
      [[ "$(readlink "$fd" 2>/dev/null)" == */lifeboat-e2e.lock ]] && eval "exec ${fd##*/}>&-"
    done
    exec setsid "$@" >>"$CLUSTER_LOGS/$name.log" 2>&1 </dev/null
  ) &
  echo $! >"$CLUSTER_PIDS/$name.pid"
}

# restart_component NAME: stops a component started by `start` (its whole
# process group), so that the next `start` runs it again.
restart_component() {
  local pidfile="$CLUSTER_PIDS/$1.pid" pid
  pid="$(cat "$pidfile" 2>/dev/null)" || return 0
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# wait_for WHAT SECONDS COMMAND... : polls until COMMAND succeeds.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what (logs: $CLUSTER_LOGS)"
    sleep 0.5
  done
}
