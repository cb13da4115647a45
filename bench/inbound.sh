#!/usr/bin/env bash
# What routing at the receiving pod adds: bench-inbound (see its --help)
# sends HTTP/1.1 at a fixed rate from a pod without a sidecar to staging's
# pod, straight to the app, through staging's inbound proxy, and with
# alice's key on through alice's inbound proxy; medians of 3 rounds. Runs
# the proxy the image ships (musl, stripped). Needs root: the pods are
# network namespaces.
#
# Usage: sudo bash bench/inbound.sh [bench-inbound flags, e.g. --rates 1000,5000]
# Knobs (environment):
#   SKIP_BUILD=1   use the binaries already built
#   RESULTS_DIR=bench/results/inbound-<UTC timestamp>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOG_TAG=inbound
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"
# shellcheck source=bench/pods.sh
source "$HERE/pods.sh"

SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/inbound-$(date -u +%Y%m%dT%H%M%SZ)}
BINS=(bench-inbound bench-upstream bench-load)

pod_tools
if [[ $SKIP_BUILD != 1 ]]; then
    musl_target
    log "building: ${BINS[*]} (release), and divert-sidecar for $MUSL"
    (cd "$ROOT" && cargo build --release -p divert-bench "${BINS[@]/#/--bin=}" &&
        cargo build --release -p divert-sidecar --target "$MUSL")
fi
BIN_DIR=$ROOT/target/release
for b in "${BINS[@]}"; do
    [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b (cargo build --release -p divert-bench --bin $b)"
done
PROXY=$(image_proxy "$RESULTS_DIR")

log "results in $RESULTS_DIR"
"$BIN_DIR/bench-inbound" --sidecar "$PROXY" --bin-dir "$BIN_DIR" "$@" 2>&1 | tee "$RESULTS_DIR/inbound.log"
