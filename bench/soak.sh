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

MUSL=x86_64-unknown-linux-musl
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}

[[ $(id -u) == 0 ]] || die "the soak needs root (network namespaces and iptables)"
# What the pods need: ip, iptables (legacy, as the test worlds use), setpriv.
need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
command -v iptables-legacy-restore >/dev/null || need_apt+=(iptables)
command -v setpriv >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [[ $SKIP_BUILD != 1 ]]; then
    if ! rustup target list --installed | grep -qx "$MUSL"; then
        log "installing the $MUSL target: rustup target add $MUSL"
        rustup target add "$MUSL"
    fi
    log "building: cargo build --release -p divert-bench --bin bench-soak, and divert-sidecar for $MUSL"
    (cd "$ROOT" && cargo build --release -p divert-bench --bin bench-soak &&
        cargo build --release -p divert-sidecar --target "$MUSL")
fi
SOAK=$ROOT/target/release/bench-soak
BUILT=$ROOT/target/$MUSL/release/divert-proxy
[[ -x $SOAK ]] || die "missing $SOAK (cargo build --release -p divert-bench --bin bench-soak)"
[[ -x $BUILT ]] || die "missing $BUILT (cargo build --release -p divert-sidecar --target $MUSL)"

mkdir -p "$RESULTS_DIR"
# The proxy runs as its own user: it gets a copy it can execute, stripped
# as the image's is.
PROXY=$RESULTS_DIR/divert-proxy
cp "$BUILT" "$PROXY"
strip "$PROXY"
chmod 755 "$RESULTS_DIR" "$PROXY"

log "results in $RESULTS_DIR"
"$SOAK" --proxy "$PROXY" --csv "$RESULTS_DIR/samples.csv" "$@" 2>&1 | tee "$RESULTS_DIR/soak.log"
