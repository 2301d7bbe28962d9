#!/usr/bin/env bash
# Kills the local kube-apiserver with SIGKILL, as a crash would, and starts it
# again with the same command line, port and certificates; returns once it is
# ready. etcd keeps the data, so clients see an outage, not a new cluster.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
run="$root/target/cluster/run"
kubeconfig="$root/target/cluster/kubeconfig"
pidfile="$run/kube-apiserver.pid"
[[ -f "$pidfile" ]] || { echo "no kube-apiserver pid file at $pidfile; run 'make cluster-up' first" >&2; exit 1; }
pid="$(cat "$pidfile")"
kill -0 "$pid" 2>/dev/null || { echo "kube-apiserver (pid $pid) is not running" >&2; exit 1; }
mapfile -d '' command < "/proc/$pid/cmdline"

kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then echo "kube-apiserver (pid $pid) did not exit after SIGKILL" >&2; exit 1; fi

setsid "${command[@]}" >> "$run/logs/kube-apiserver.log" 2>&1 < /dev/null &
new_pid=$!
echo "$new_pid" > "$pidfile"

server="$(sed -n 's/^ *server: *//p' "$kubeconfig")"
token="$(sed -n 's/^ *token: *//p' "$kubeconfig")"
for _ in $(seq 1 600); do
  if curl -fsk -H "Authorization: Bearer $token" "$server/readyz" >/dev/null 2>&1; then
    echo "kube-apiserver restarted (pid $new_pid)" >&2
    exit 0
  fi
  if ! kill -0 "$new_pid" 2>/dev/null; then
    echo "kube-apiserver exited while restarting; log follows:" >&2
    tail -30 "$run/logs/kube-apiserver.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "kube-apiserver not ready 60 s after the restart; see $run/logs/kube-apiserver.log" >&2
exit 1
