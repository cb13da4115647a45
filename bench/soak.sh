#!/usr/bin/env bash
# The soak: the proxy the image ships (musl, stripped) under 30 minutes of
# mixed HTTP/1.1, h2c, gRPC, upgraded-tunnel and opaque traffic, with churn
# in the table and the upstreams and a few hostile clients. It fails if any
# request is lost or misrouted, or if the proxy's RSS or open file
# descriptors grow more than 10 % after warm-up (bench-soak's --help says
# how each is judged). Needs root: the pods are network namespaces.
#
# Usage: sudo bash bench/soak.sh [bench-soak flags, e.g. --duration 5m]
# Knobs (environment):
#   SKIP_BUILD=1   use the binaries already built
#   RESULTS_DIR=bench/results/soak-<UTC timestamp>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOG_TAG=soak
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"
# shellcheck source=bench/pods.sh
source "$HERE/pods.sh"

SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}

pod_tools
if [[ $SKIP_BUILD != 1 ]]; then
    musl_target
    log "building: cargo build --release -p divert-bench --bin bench-soak, and divert-sidecar for $MUSL"
    (cd "$ROOT" && cargo build --release -p divert-bench --bin bench-soak &&
        cargo build --release -p divert-sidecar --target "$MUSL")
fi
SOAK=$ROOT/target/release/bench-soak
[[ -x $SOAK ]] || die "missing $SOAK (cargo build --release -p divert-bench --bin bench-soak)"
PROXY=$(image_proxy "$RESULTS_DIR")

log "results in $RESULTS_DIR"
"$SOAK" --proxy "$PROXY" --csv "$RESULTS_DIR/samples.csv" "$@" 2>&1 | tee "$RESULTS_DIR/soak.log"
