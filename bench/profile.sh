#!/usr/bin/env bash
# Where divert-proxy's time goes on the HTTP/1.1 path (issue 16, point 1).
#
# The proxy (1 worker) and the hyper upstream share one core, as a sidecar
# shares its app's; h2load drives HTTP/1.1 keep-alive requests carrying
# alice's key from the other core, and `perf record` samples the proxy
# meanwhile. The summary splits kernel from user space and user space by
# layer (hyper's HTTP/1 server and client, the route, the pool, metrics,
# timers, the runtime, allocation), from the symbols' crate paths, and
# counts the syscalls and context switches per request.
#
# Usage: bash bench/profile.sh        (root or perf_event_paranoid <= 1)
# Knobs: DURATION=10 CONNECTIONS=50 REQUESTS=200000 SERVER_CPU=0 CLIENT_CPU=1 FREQ=999
#        RATE=5000 (requests a second from bench-load's 16 connections, as
#        a sidecar sees them, instead of h2load as fast as it goes; the
#        counts per request are then over DURATION seconds at that rate)
#        RESULTS_DIR=bench/results/profile-<UTC timestamp>
#        DIVERT_BIN=target/release/divert-proxy (another build, to profile a
#        before and an after; SKIP_BUILD=1 skips the build)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOG_TAG=profile
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
FREQ=${FREQ:-999}
PORT=${PORT:-18180}
UPSTREAM_PORT=${UPSTREAM_PORT:-18181}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results/profile-$(date -u +%Y%m%dT%H%M%SZ)}
BIN=$ROOT/target/release
DIVERT_BIN=${DIVERT_BIN:-$BIN/divert-proxy}
SKIP_BUILD=${SKIP_BUILD:-0}

for tool in perf h2load taskset python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install linux-perf nghttp2-client util-linux python3)"
done
mkdir -p "$RESULTS_DIR"
TMP=$(mktemp -d)
trap cleanup EXIT
[[ $SKIP_BUILD == 1 ]] || ( cd "$ROOT" && cargo build -q --release -p divert-sidecar -p divert-bench )

start_pinned "$SERVER_CPU" "$RESULTS_DIR/upstream-staging.log" "$BIN/bench-upstream" \
    --workers 1 --body staging --listen "127.0.0.1:$UPSTREAM_PORT"
wait_port 127.0.0.1 "$UPSTREAM_PORT" "$LAST_PID" "$RESULTS_DIR/upstream-staging.log"
start_pinned "$SERVER_CPU" "$RESULTS_DIR/upstream-alice.log" "$BIN/bench-upstream" \
    --workers 1 --body alice --listen "127.0.0.1:$((UPSTREAM_PORT + 1))"
wait_port 127.0.0.1 "$((UPSTREAM_PORT + 1))" "$LAST_PID" "$RESULTS_DIR/upstream-alice.log"
bench_registry 127.0.91.1 127.0.91.2 "$PORT" "127.0.0.1:$UPSTREAM_PORT" \
    "127.0.0.1:$((UPSTREAM_PORT + 1))" >"$TMP/registry.yaml"
start_pinned "$SERVER_CPU" "$RESULTS_DIR/divert.log" "$DIVERT_BIN" proxy \
    --registry "$TMP/registry.yaml" --workers 1 --log-level warn
PROXY=$LAST_PID
wait_port 127.0.91.1 "$PORT" "$PROXY" "$RESULTS_DIR/divert.log"

URL="http://127.0.91.1:$PORT/"
RATE=${RATE:-}
load() {
    if [[ -n $RATE ]]; then
        taskset -c "$CLIENT_CPU" "$BIN/bench-load" --url "$URL" --rate "$RATE" \
            --duration "$1" -H 'baggage: okteto-divert=alice'
    else
        taskset -c "$CLIENT_CPU" h2load --h1 -c "$CONNECTIONS" -D "$1" \
            -H 'baggage: okteto-divert=alice' "$URL"
    fi
}
load 2 >/dev/null
log "sampling divert-proxy (pid $PROXY) for ${DURATION}s at ${FREQ} Hz under HTTP/1.1 load"
perf record -q -F "$FREQ" -p "$PROXY" -o "$RESULTS_DIR/perf.data" -- sleep "$DURATION" &
PERF=$!
if [[ -n $RATE ]]; then
    load "$DURATION" >"$RESULTS_DIR/load.json"
    wait "$PERF" || true
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("requests: %d ok, %d errors, at %s req/s" % (j["ok"], j["errors"], j["achieved_rate"]))' \
        "$RESULTS_DIR/load.json" | tee "$RESULTS_DIR/load.txt"
else
    load "$DURATION" >"$RESULTS_DIR/h2load.txt"
    wait "$PERF" || true
    grep -E '^finished in|^requests:' "$RESULTS_DIR/h2load.txt" | tee "$RESULTS_DIR/load.txt"
fi

# Syscalls, context switches and CPU time per request: counted over
# exactly REQUESTS requests (or DURATION seconds at RATE), perf stat
# attached before the load starts and stopped after it ends; then each
# syscall's share (perf trace, a shorter window: it slows the proxy, not
# the ratios).
cpu_ticks() { sed 's/.*) //' "/proc/$PROXY/stat" | awk '{ print $12 + $13 }'; }
perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$PROXY" \
    -o "$RESULTS_DIR/stat.csv" &
STAT=$!
t0=$(cpu_ticks)
if [[ -n $RATE ]]; then
    load "$DURATION" >"$RESULTS_DIR/load-count.json"
    REQUESTS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$RESULTS_DIR/load-count.json")
else
    REQUESTS=${REQUESTS:-200000}
    taskset -c "$CLIENT_CPU" h2load --h1 -c "$CONNECTIONS" -n "$REQUESTS" \
        -H 'baggage: okteto-divert=alice' "$URL" >"$RESULTS_DIR/h2load-count.txt"
fi
t1=$(cpu_ticks)
kill -INT "$STAT"
wait "$STAT" || true
awk -F, -v n="$REQUESTS" -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    '/sys_enter/ { s = $1 } /context-switches/ { c = $1 }
    END { printf "per request: %.2f syscalls, %.2f context switches, %.1f µs CPU (%d requests)\n", s / n, c / n, ticks / hz * 1e6 / n, n }' \
    "$RESULTS_DIR/stat.csv" | tee "$RESULTS_DIR/per-request.txt"
( load 5 >/dev/null ) &
LOADER=$!
timeout -s INT 4 perf trace -s -p "$PROXY" >"$RESULTS_DIR/trace.txt" 2>&1 || true
wait "$LOADER" || true
grep -E '^\s+[a-z_0-9]+\s+[0-9]+' "$RESULTS_DIR/trace.txt" | sort -k2 -n -r | head -6 |
    awk '{ printf "  %-12s %s calls\n", $1, $2 }' | tee -a "$RESULTS_DIR/per-request.txt"

perf report -q -i "$RESULTS_DIR/perf.data" --stdio --no-children --sort dso,sym \
    --percent-limit 0 >"$RESULTS_DIR/report.txt" 2>/dev/null
python3 - "$RESULTS_DIR/report.txt" <<'PY' | tee "$RESULTS_DIR/summary.txt"
import re, sys
# Each row: "  12.34%  dso  [k] symbol" or "[.] symbol".
layers = [
    ("kernel", lambda dso, kind, sym: kind == "k"),
    ("clock reads (vDSO)", lambda d, k, s: "vdso" in d),
    # glibc's and musl's (mallocng: alloc_slot, enframe, get_meta, ...) alike.
    ("allocation and copies (malloc, free, memmove)", lambda d, k, s: re.search(r"malloc|_int_free|cfree|realloc|calloc|memcpy|memmove|memset|\bfree\b|alloc_slot|alloc_group|enframe|get_meta|nontrivial_free|__libc_free", s)),
    # A static musl build has them in the binary, not in libc.so.
    ("libc syscall wrappers (writev, recv, send)", lambda d, k, s: d.startswith("libc") or re.match(r"(__syscall|__syscall_cp|sendto|send|recvfrom|recv|writev|readv|read|write|epoll_pwait|epoll_wait|__clock_gettime|clock_gettime)\b", s)),
    ("hyper client dispatch (its mpsc channel, client conn)", lambda d, k, s: "tokio::sync::mpsc" in s or "hyper::client" in s or "hyper_util::client" in s),
    ("HTTP/1 parse and encode (httparse, hyper's h1 role)", lambda d, k, s: "hyper::proto::h1::role" in s or "httparse" in s or "hyper::proto::h1::encode" in s or "hyper::proto::h1::decode" in s),
    ("hyper HTTP/1 connection, buffers, dispatch", lambda d, k, s: "hyper::" in s),
    ("route (table, baggage)", lambda d, k, s: re.search(r"divert_proxy::(table|baggage|reason)", s)),
    ("pool (upstream)", lambda d, k, s: "divert_proxy::upstream" in s),
    ("metrics, report", lambda d, k, s: re.search(r"divert_proxy::(metrics|report|counted|tap)|prometheus", s)),
    ("timers", lambda d, k, s: re.search(r"tokio::(runtime::)?time", s)),
    ("HTTP/1.1 fast path (h1: heads, chunked, the exchange)", lambda d, k, s: "divert_proxy::h1" in s),
    ("proxy request path (http, body, limits)", lambda d, k, s: "divert_proxy::" in s),
    ("tokio runtime, mio", lambda d, k, s: "tokio::" in s or "mio::" in s),
    ("http, headers, bytes", lambda d, k, s: re.search(r"\bhttp::|bytes::|http_body", s)),
]
kernel = [
    ("kernel: TCP/IP send and receive", r"tcp|ip_|skb|net_rx|__dev|loopback|napi|sock|inet|netif"),
    ("kernel: scheduling and wake-ups", r"finish_task_switch|_raw_spin_unlock_irqrestore|schedule|wake_up|enqueue|dequeue|update_curr|pick_next|select_task"),
    ("kernel: syscall entry and exit, epoll", r"syscall|entry|epoll|ep_|fdget|fput|vfs_|do_writev|ksys|__x64|rw_verify|import_iovec|copy_|rep_movs"),
]
totals, ktotals = {}, {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, kind, sym = float(m[1]), m[2], m[3], m[4]
    name = next((n for n, f in layers if f(dso, kind, sym)), "other user space")
    totals[name] = totals.get(name, 0.0) + pct
    if kind == "k":
        k = next((n for n, r in kernel if re.search(r, sym)), "kernel: other")
        ktotals[k] = ktotals.get(k, 0.0) + pct
user = sum(v for k, v in totals.items() if k != "kernel")
print(f"kernel {totals.get('kernel', 0):.1f} %   user space {user:.1f} %")
for name, v in sorted(ktotals.items(), key=lambda kv: -kv[1]):
    print(f"  {v:5.1f} %  {name}")
for name, v in sorted(totals.items(), key=lambda kv: -kv[1]):
    if name != "kernel":
        print(f"  {v:5.1f} %  {name}")
PY
log "results in $RESULTS_DIR (report.txt: every symbol)"
