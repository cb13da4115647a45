#!/usr/bin/env bash
# Does loading a large registry file stall the requests in flight? A proxy
# (1 worker) serves a fixed-rate HTTP/1.1 load (bench-load) while its
# registry of SERVICES services is rewritten RELOADS times; the latency of
# the same load without reloads is the baseline. Before the load moved off
# the serving path, a 100 000-service file held the only worker for 1.4 s.
#
# Usage: bash bench/reload.sh
# Knobs: BIN=target/release/divert-proxy SERVICES=100000 RELOADS=3 RATE=500
#        DURATION=10 PORT=18280 UPSTREAM_PORT=18281 SKIP_BUILD=1
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOG_TAG=reload
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"

BIN=${BIN:-$ROOT/target/release/divert-proxy}
SERVICES=${SERVICES:-100000}
RELOADS=${RELOADS:-3}
RATE=${RATE:-500}
DURATION=${DURATION:-10}
PORT=${PORT:-18280}
UPSTREAM_PORT=${UPSTREAM_PORT:-18281}
HOST=127.0.92.1
BENCH_BIN=$ROOT/target/release

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p divert-bench -p divert-sidecar)
fi
TMP=$(mktemp -d)

# registry GENERATION: the service the load dials, plus SERVICES services
# with endpoints but no address of their own (headless): bind mode tries to
# bind every address a table dials, and 100 000 addresses that are not this
# machine's would measure that, not the load of the file. GENERATION changes
# their port, so every rewrite is an edit.
registry() {
    awk -v n="$SERVICES" -v g="$1" -v host="$HOST" -v port="$PORT" -v up="$UPSTREAM_PORT" 'BEGIN {
        print "services:"
        printf "  - { name: api, namespace: staging, addresses: [%s], ports: [{ port: %d }], endpoints: [\"127.0.0.1:%d\"] }\n", host, port, up
        for (i = 0; i < n; i++)
            printf "  - { name: s%d, namespace: ns%d, addresses: [], ports: [{ port: %d }], endpoints: [\"10.200.%d.%d:8080\"] }\n",
                i, i % 500, 80 + g, int(i / 256) % 256, i % 256
    }'
}

start_pinned 1 "$TMP/upstream.log" "$BENCH_BIN/bench-upstream" --listen "127.0.0.1:$UPSTREAM_PORT"
wait_port 127.0.0.1 "$UPSTREAM_PORT" "$LAST_PID" "$TMP/upstream.log"
registry 0 >"$TMP/registry.yaml"
start_pinned 0 "$TMP/proxy.log" "$BIN" proxy --registry "$TMP/registry.yaml" --workers 1 --log-level info
proxy=$LAST_PID
wait_port "$HOST" "$PORT" "$proxy" "$TMP/proxy.log"

load() {
    taskset -c 1 "$BENCH_BIN/bench-load" --url "http://$HOST:$PORT/" --rate "$RATE" \
        --duration "$DURATION" --connections 4 --warmup 1
}
pick() { sed -n "s/.*\"$1_us\":\([0-9.]*\).*/\1/p" | head -1; }

quiet=$(load)
load >"$TMP/busy.json" &
loader=$!
for ((g = 1; g <= RELOADS; g++)); do
    sleep $((DURATION / (RELOADS + 1)))
    registry "$g" >"$TMP/registry.tmp"
    mv "$TMP/registry.tmp" "$TMP/registry.yaml"
done
wait "$loader"
reloaded=$(grep -c "registry reloaded" "$TMP/proxy.log" || true)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $SERVICES services, $RELOADS rewrites ($reloaded reloads logged), $RATE req/s for $DURATION s"
echo "| load | p50 µs | p99 µs | max µs |"
echo "|---|---:|---:|---:|"
for run in quiet busy; do
    if [[ $run == quiet ]]; then j=$quiet; else j=$(cat "$TMP/busy.json"); fi
    echo "| $run | $(pick p50 <<<"$j") | $(pick p99 <<<"$j") | $(pick max <<<"$j") |"
done
