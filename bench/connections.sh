#!/usr/bin/env bash
# What many client connections cost a proxy's memory, and whether it is
# given back once they close.
#
# For each target (Divert builds, nginx and HAProxy, each one worker in
# front of bench-upstream): read its RSS idle; then CYCLES times: open
# CONNECTIONS keep-alive connections with one request answered on each
# (bench-hold), read the RSS while they are held, close them, wait until the
# proxy's open file descriptors are back to idle, and read the RSS once it
# has settled. RSS is summed over the process tree (nginx's master and
# worker).
#
# Usage: bash bench/connections.sh
# Knobs (environment):
#   BINS="glibc=target/release/divert-proxy musl=target/x86_64-unknown-linux-musl/release/divert-proxy"
#                      the Divert builds (name=path; a path may be a script
#                      that execs the proxy with an environment of its own)
#   PEERS="nginx haproxy"  the baselines, each when installed
#   CONNECTIONS=10000  CYCLES=3
#   PROTOCOL=http1     or h2c: HTTP/2 with prior knowledge, one request per
#                      connection, each connection held with no stream open
#   PORT=18180 UPSTREAM_PORT=18181 ADMIN_PORT=18191
#   SKIP_BUILD=1       use the binaries already built
#   RESULTS_DIR=bench/results/connections-<UTC timestamp>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOG_TAG=connections
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"

MUSL=x86_64-unknown-linux-musl
BINS=${BINS-"glibc=$ROOT/target/release/divert-proxy musl=$ROOT/target/$MUSL/release/divert-proxy"}
PEERS=${PEERS-"nginx haproxy"}
CONNECTIONS=${CONNECTIONS:-10000}
CYCLES=${CYCLES:-3}
PROTOCOL=${PROTOCOL:-http1}
case $PROTOCOL in
http1) HOLD_FLAGS=() NGINX_LISTEN="" HAPROXY_BIND="" ;;
h2c) HOLD_FLAGS=(--h2c) NGINX_LISTEN=" http2" HAPROXY_BIND=" proto h2" ;;
*) die "PROTOCOL is http1 or h2c, not $PROTOCOL" ;;
esac
PORT=${PORT:-18180}
UPSTREAM_PORT=${UPSTREAM_PORT:-18181}
ADMIN_PORT=${ADMIN_PORT:-18191}
HOST=127.0.91.1
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/connections-$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_BIN=$ROOT/target/release

if [[ $SKIP_BUILD != 1 ]]; then
    log "building: cargo build --release -p divert-bench -p divert-sidecar, and divert-sidecar for $MUSL"
    (cd "$ROOT" && cargo build --release -p divert-bench -p divert-sidecar &&
        cargo build --release -p divert-sidecar --target "$MUSL")
fi
for b in bench-hold bench-upstream; do
    [[ -x $BENCH_BIN/$b ]] || die "missing $BENCH_BIN/$b (build with cargo build --release -p divert-bench)"
done

# Each side holds CONNECTIONS sockets, a proxy a few more for upstreams.
want=$((CONNECTIONS + 1024))
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] || ((want <= hard)) ||
    die "$CONNECTIONS connections need $want file descriptors; the hard limit here is $hard"
ulimit -Sn "$want"
mkdir -p "$RESULTS_DIR"
TMP=$(mktemp -d)

rss_kb() { tree_status_kb VmRSS "$1"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
fd_count() {
    local p n=0
    for p in $(tree_pids "$1"); do
        n=$((n + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)))
    done
    echo "$n"
}

# The RSS once it stops moving: two reads 500 ms apart that agree within
# 1 %, or the last of 20.
settled_rss_kb() {
    local pid=$1 a b i
    a=$(rss_kb "$pid")
    for ((i = 0; i < 20; i++)); do
        sleep 0.5
        b=$(rss_kb "$pid")
        if ((b * 100 >= a * 99 && b * 100 <= a * 101)); then
            echo "$b"
            return
        fi
        a=$b
    done
    echo "$b"
}

ensure_free 127.0.0.1 "$UPSTREAM_PORT"
start_pinned 0 "$RESULTS_DIR/upstream.log" "$BENCH_BIN/bench-upstream" --listen "127.0.0.1:$UPSTREAM_PORT"
wait_port 127.0.0.1 "$UPSTREAM_PORT" "$LAST_PID" "$RESULTS_DIR/upstream.log"

out=$RESULTS_DIR/summary.md
{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $CONNECTIONS connections x $CYCLES cycles"
    echo "# command: PROTOCOL=$PROTOCOL CONNECTIONS=$CONNECTIONS CYCLES=$CYCLES bash bench/connections.sh"
    echo
    echo "| target | connections | cycle | RSS idle MiB | RSS held MiB | RSS after close MiB |"
    echo "|---|---|---|---|---|---|"
} | tee "$out"

# measure NAME PID [N]: the cycles against the proxy on $HOST:$PORT, with
# N connections (CONNECTIONS by default).
measure() {
    local name=$1 pid=$2 n=${3:-$CONNECTIONS} idle idle_fds cycle fifo hold held after i
    idle=$(settled_rss_kb "$pid")
    idle_fds=$(fd_count "$pid")
    for ((cycle = 1; cycle <= CYCLES; cycle++)); do
        fifo=$TMP/hold.$name.$cycle
        mkfifo "$fifo"
        taskset -c 1 "$BENCH_BIN/bench-hold" --addr "$HOST:$PORT" --connections "$n" "${HOLD_FLAGS[@]}" \
            -H "baggage: okteto-divert=alice" <"$fifo" >"$TMP/hold.out" 2>&1 &
        hold=$!
        PIDS+=("$hold")
        exec 7>"$fifo"
        for ((i = 0; i < 1200; i++)); do
            grep -q '^held' "$TMP/hold.out" 2>/dev/null && break
            kill -0 "$hold" 2>/dev/null || die "$name: bench-hold failed: $(cat "$TMP/hold.out")"
            sleep 0.1
        done
        grep -q '^held' "$TMP/hold.out" || die "$name: bench-hold did not hold its connections in 120 s"
        held=$(settled_rss_kb "$pid")
        echo >&7
        exec 7>&-
        wait "$hold" || die "$name: bench-hold failed: $(cat "$TMP/hold.out")"
        forget_pid "$hold"
        # Closed on the proxy's side too: its descriptors are back to idle,
        # give or take its upstream keep-alive pool.
        for ((i = 0; i < 600; i++)); do
            (($(fd_count "$pid") <= idle_fds + 100)) && break
            sleep 0.1
        done
        (($(fd_count "$pid") <= idle_fds + 100)) ||
            die "$name still holds $(fd_count "$pid") descriptors 60 s after the client closed"
        after=$(settled_rss_kb "$pid")
        echo "| $name | $n | $cycle | $(mib "$idle") | $(mib "$held") | $(mib "$after") |" | tee -a "$out"
    done
}

cat >"$TMP/registry.yaml" <<EOF
namespaces:
  - name: staging
services:
  - name: api
    namespace: staging
    addresses: [$HOST]
    ports: [{ name: http, port: $PORT }]
    endpoints: ["127.0.0.1:$UPSTREAM_PORT"]
EOF

for entry in $BINS; do
    name=${entry%%=*}
    bin=${entry#*=}
    [[ -x $bin ]] || die "$name: no binary at $bin"
    ensure_free "$HOST" "$PORT"
    lg=$RESULTS_DIR/$name.log
    start_pinned 0 "$lg" "$bin" proxy --registry "$TMP/registry.yaml" --workers 1 \
        --admin-addr "127.0.0.1:$ADMIN_PORT" --max-connections $((2 * CONNECTIONS)) --log-level warn
    pid=$LAST_PID
    wait_port "$HOST" "$PORT" "$pid" "$lg"
    measure "$name" "$pid"
    stop_pid "$pid"
    forget_pid "$pid"
done

for peer in $PEERS; do
    tool=$(find_tool "$peer") || {
        log "$peer is not installed; skipped"
        continue
    }
    lg=$RESULTS_DIR/$peer.log
    ensure_free "$HOST" "$PORT"
    n=$CONNECTIONS
    case $peer in
    nginx)
        mkdir -p "$TMP/nginx/logs"
        # A root master hands the sockets to a worker running as nobody.
        chmod 755 "$TMP" "$TMP/nginx"
        cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $want;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections $want; }
http {
    access_log off;
    upstream api { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
    server {
        listen $HOST:$PORT$NGINX_LISTEN;
        location / {
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
        start_pinned 0 "$lg" "$tool" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
        ;;
    haproxy)
        # HAProxy wants two descriptors per connection it may hold (client
        # and server) and refuses to start without them: under a hard
        # limit, it gets as many connections as that allows.
        [[ $hard == unlimited ]] || n=$(((hard - 14) / 2 < n ? (hard - 14) / 2 : n))
        cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $n
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend api
    bind $HOST:$PORT$HAPROXY_BIND
    default_backend api
backend api
    server api1 127.0.0.1:$UPSTREAM_PORT
EOF
        ulimit -Sn "$hard"
        start_pinned 0 "$lg" "$tool" -db -f "$TMP/haproxy.cfg"
        ;;
    *) die "unknown peer $peer (nginx, haproxy)" ;;
    esac
    pid=$LAST_PID
    wait_port "$HOST" "$PORT" "$pid" "$lg"
    measure "$peer" "$pid" "$n"
    stop_pid "$pid"
    forget_pid "$pid"
done
log "summary in ${out#"$ROOT/"}"
