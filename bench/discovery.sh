#!/usr/bin/env bash
# The control plane at scale: 10 000 services in 500 namespaces.
#
# Builds `bench-discovery` and `divert` in release mode, waits until the machine
# is quiet, then runs the harness: a synthetic cluster in a real controller
# store, served over real gRPC on 127.0.0.1, followed by IN_PROCESS proxies in
# the harness and one `divert-proxy proxy --transparent` process. It prints the
# snapshot's size, the time to apply it, the table's memory, and update latency
# under churn (see BENCHMARKS.md, "Control plane at scale").
#
# Usage: bash bench/discovery.sh
# Knobs (environment):
#   SERVICES=10000 NAMESPACES=500 SHARED=50   the cluster
#   RATE=100 DURATION=30                      churn: changes/s, seconds
#   IN_PROCESS=2                              proxies inside the harness
#   RUNS=10                                   repetitions of in-process timings
#   REPEATS=1                                 whole runs of the harness, one after another
#   SEED=1
#   SKIP_BUILD=1                              use the binaries in target/release
#   QUIET_MAX=20 QUIET_TIMEOUT=600            wait (at most QUIET_TIMEOUT s) until
#                                             the machine is under QUIET_MAX % busy
#   RESULTS_DIR=bench/results/discovery-<UTC timestamp>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/common.sh
source "$HERE/common.sh"

SERVICES=${SERVICES:-10000}
NAMESPACES=${NAMESPACES:-500}
SHARED=${SHARED:-50}
RATE=${RATE:-100}
DURATION=${DURATION:-30}
IN_PROCESS=${IN_PROCESS:-2}
RUNS=${RUNS:-10}
REPEATS=${REPEATS:-1}
SEED=${SEED:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_MAX=${QUIET_MAX:-20}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-600}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/discovery-$(date -u +%Y%m%dT%H%M%SZ)}
BIN_DIR=$ROOT/target/release

log() { printf '[discovery] %s\n' "$*" >&2; }


if [[ $SKIP_BUILD != 1 ]]; then
    # Two commands: --bin would also restrict divert-sidecar's targets.
    log "building: cargo build --release -p divert-bench --bin bench-discovery; cargo build --release -p divert-sidecar"
    (cd "$ROOT" && cargo build --release -p divert-bench --bin bench-discovery &&
        cargo build --release -p divert-sidecar)
fi
for b in bench-discovery divert-proxy; do
    [[ -x $BIN_DIR/$b ]] || { log "missing $BIN_DIR/$b"; exit 1; }
done

mkdir -p "$RESULTS_DIR"
cmd=("$BIN_DIR/bench-discovery"
    --services "$SERVICES" --namespaces "$NAMESPACES" --shared "$SHARED"
    --rate "$RATE" --duration "$DURATION" --in-process "$IN_PROCESS"
    --runs "$RUNS" --seed "$SEED" --proxy-bin "$BIN_DIR/divert-proxy")

for ((round = 1; round <= REPEATS; round++)); do
    busy=$(machine_busy_pct)
    waited=0
    while ((QUIET_TIMEOUT > 0 && busy >= QUIET_MAX && waited < QUIET_TIMEOUT)); do
        ((waited == 0)) && log "machine ${busy}% busy; waiting for it to quieten"
        sleep 4
        waited=$((waited + 5))
        busy=$(machine_busy_pct)
    done
    ((busy >= QUIET_MAX)) && log "warning: still ${busy}% busy; measuring anyway"

    out=$RESULTS_DIR/summary-$round.md
    {
        echo "# round $round of $REPEATS, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (work tree may differ)"
        echo "# machine: $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(uname -r), busy ${busy}% before the run"
        echo "# command: ${cmd[*]#"$ROOT/"}"
    } | tee "$out"
    "${cmd[@]}" 2> >(tee -a "$RESULTS_DIR/stderr.log" >&2) | tee -a "$out"
done
log "summaries in ${RESULTS_DIR#"$ROOT/"}/"
