#!/usr/bin/env bash
# Stops everything tests/cluster/up.sh started and removes its state.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
run="$root/target/cluster/run"
[[ -d "$run" ]] || exit 0
for name in traefik metrics-server test-kubelet kube-controller-manager kube-apiserver etcd; do
  pidfile="$run/$name.pid"
  [[ -f "$pidfile" ]] || continue
  pid="$(cat "$pidfile")"
  # Each component was started with setsid, so its process group is its pid.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
rm -rf "$run" "$root/target/cluster/kubeconfig" "$root/target/cluster/gateway.json"
echo "cluster stopped" >&2
