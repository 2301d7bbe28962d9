#!/usr/bin/env bash
# Scale benchmark (see tests/support/src/bin/ramp-bench.rs for what is measured):
# every size, every run, on a fresh local control plane; then the table of medians.
#   RAMP_BENCH_SIZES="100 1000 10000" RAMP_BENCH_RUNS=3 scripts/bench.sh [ramp-bench flags] [-- controller flags]
# e.g. `RAMP_BENCH_SIZES=1000 RAMP_BENCH_RUNS=1 scripts/bench.sh --idle 10 -- --kube-api-qps 0`.
# RAMP_BENCH_PER_NAMESPACE=K spreads each size over ceil(N / K) namespaces
# (ramp-bench --namespaces); unset, every size runs in one namespace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
sizes="${RAMP_BENCH_SIZES:-100 1000 10000}"
runs="${RAMP_BENCH_RUNS:-3}"
out="${RAMP_BENCH_OUT:-target/bench}"
controller="${RAMP_BENCH_CONTROLLER:-target/release/ramp-controller}"
per_namespace="${RAMP_BENCH_PER_NAMESPACE:-}"
if [[ -n "$per_namespace" && ! "$per_namespace" =~ ^[1-9][0-9]*$ ]]; then
  echo "RAMP_BENCH_PER_NAMESPACE must be a whole number of Rollouts above 0, not '$per_namespace'" >&2
  exit 2
fi
mkdir -p "$out"
rm -f "$out"/run-*.json
for n in $sizes; do
  for run in $(seq 1 "$runs"); do
    tests/cluster/down.sh >/dev/null 2>&1 || true
    tests/cluster/up.sh
    kubectl --kubeconfig target/cluster/kubeconfig apply --server-side --force-conflicts -k crds/ >/dev/null
    kubectl --kubeconfig target/cluster/kubeconfig wait --for condition=established --timeout=60s crd --all >/dev/null
    spread=()
    if [[ -n "$per_namespace" ]]; then
      spread=(--namespaces "$(( (n + per_namespace - 1) / per_namespace ))")
    fi
    target/debug/ramp-bench --controller "$controller" --size "$n" --run-label "$run" --out "$out" "${spread[@]}" "$@"
  done
done
tests/cluster/down.sh >/dev/null 2>&1 || true
target/debug/ramp-bench --report "$out"
echo "results: $out/results.md and $out/results.json" >&2
