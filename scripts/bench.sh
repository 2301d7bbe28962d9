#!/usr/bin/env bash
# Scale benchmark (see tests/support/src/bin/ramp-bench.rs for what is measured).
# Extra arguments go to ramp-bench, e.g. `scripts/bench.sh --sizes 100 --idle 10 --cycles 1`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
tests/cluster/up.sh
kubectl --kubeconfig target/cluster/kubeconfig apply --server-side --force-conflicts -k crds/ >/dev/null
mkdir -p target/bench
target/debug/ramp-bench --controller target/release/ramp-controller --out target/bench "$@"
echo "results: target/bench/results.md and target/bench/results.json" >&2
