#!/usr/bin/env bash
# Divert benchmark harness.
#
# Compares, on one machine and over loopback only:
#   direct   client -> upstream
#   divert   client -> divert-proxy proxy (1 worker) -> upstream
#   nginx    client -> nginx (1 worker, baggage map) -> upstream
#   haproxy  client -> haproxy (nbthread 1, baggage ACL) -> upstream
# The upstream and the proxy share one core (SERVER_CPU); the load generators
# (wrk, h2load, bench-load) get the other (CLIENT_CPU). Every request carries
# `baggage: okteto-divert=alice`, so each proxy has to parse the header and pick
# alice's upstream over the shared (staging) one. gRPC (unary calls over h2c,
# h2load with a length-prefixed message, bench-upstream answering with
# grpc-status trailers) goes to the app over HTTP/2 through every proxy
# (nginx's grpc_pass, HAProxy's proto h2), where h2c goes over HTTP/1.1.
#
# Usage: bash bench/run.sh            (DURATION=10 by default)
#        QUICK=1 bash bench/run.sh    (3 s runs, for smoke testing)
#        bash bench/run.sh --report bench/results/<run>   (re-print a summary)
# Knobs (environment):
#   DURATION=10          seconds of each throughput run
#   REPEATS=3            rounds over all targets (1 with QUICK=1); the summary
#                        shows the median of the rounds
#   LAT_DURATION=        seconds of each fixed-rate latency run (default DURATION)
#   WARMUP=1             seconds of discarded load before each measurement (whole number)
#   RATES="1000 5000"    fixed rates for the latency runs (req/s)
#   TARGETS="direct divert nginx haproxy"
#   UPSTREAM=hyper       the app behind every target: hyper (bench-upstream, 1
#                        worker), or nginx or haproxy answering `return 200` from
#                        memory, the cheapest app there is, so the proxy's share of
#                        the work shows most. h2c is measured with hyper only (the
#                        nginx here cannot serve h2c and HTTP/1.1 on one port).
#   WRK_CONNECTIONS=50   H2_CLIENTS=10  H2_STREAMS=10  LAT_CONNECTIONS=16
#   SERVER_CPU=0 CLIENT_CPU=1
#   PORT=18080 H2_PORT=18090 UPSTREAM_PORT=18081 (alice's upstream is +1)
#   DIVERT_BIN=target/release/divert-proxy  DIVERT_LOG_LEVEL=warn
#   DIVERT_ALT_BIN=      a second divert build, benchmarked as target "divert-alt"
#                        (add it to TARGETS) for A/B comparisons
#   SKIP_BUILD=1         use the binaries already in target/release
#   QUIET_MAX=20         before each measurement, wait until the whole machine is
#                        less than this % busy (over 1 s), so that a compile
#                        running beside the benchmark does not skew it;
#   QUIET_TIMEOUT=600    ... but wait at most this many seconds (0 = never wait)
#   RESULTS_DIR=bench/results/<UTC timestamp>
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/common.sh
source "$HERE/common.sh"

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-3}
    REPEATS=${REPEATS:-1}
else
    DURATION=${DURATION:-10}
    REPEATS=${REPEATS:-3}
fi
ROUND=1
LAT_DURATION=${LAT_DURATION:-$DURATION}
WARMUP=${WARMUP:-1}
RATES=${RATES:-"1000 5000"}
TARGETS=${TARGETS:-"direct divert nginx haproxy"}
UPSTREAM=${UPSTREAM:-hyper}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
H2_CLIENTS=${H2_CLIENTS:-10}
H2_STREAMS=${H2_STREAMS:-10}
LAT_CONNECTIONS=${LAT_CONNECTIONS:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18080}
H2_PORT=${H2_PORT:-18090}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
ALICE_UPSTREAM_PORT=$((UPSTREAM_PORT + 1))
DIVERT_BIN=${DIVERT_BIN:-$ROOT/target/release/divert-proxy}
DIVERT_ALT_BIN=${DIVERT_ALT_BIN:-}
DIVERT_LOG_LEVEL=${DIVERT_LOG_LEVEL:-warn}
SKIP_BUILD=${SKIP_BUILD:-0}
QUIET_MAX=${QUIET_MAX:-20}
QUIET_TIMEOUT=${QUIET_TIMEOUT:-600}
RESULTS_DIR=${RESULTS_DIR:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}

for knob in DURATION WARMUP REPEATS WRK_CONNECTIONS H2_CLIENTS H2_STREAMS LAT_CONNECTIONS \
    QUIET_MAX QUIET_TIMEOUT; do
    [[ ${!knob} =~ ^[0-9]+$ ]] || {
        echo "[bench] error: $knob must be a whole number (got '${!knob}')" >&2
        exit 1
    }
done
((DURATION > 0 && REPEATS > 0)) || {
    echo "[bench] error: DURATION and REPEATS must be at least 1" >&2
    exit 1
}

BIN_DIR=$ROOT/target/release
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
BAGGAGE_HEADER="baggage: okteto-divert=alice"
UPSTREAM_HOST=127.0.0.1
DIVERT_HOST=127.0.90.1       # staging's api service address (alice's is .2)
NGINX_HOST=127.0.91.1
HAPROXY_HOST=127.0.92.1


# Processes: start, wait for, measure and stop them (PIDS, cleanup on exit).
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"

# CPU time (user + system, in clock ticks) used so far by a process tree.
tree_cpu_ticks() {
    local p total=0 v
    for p in $(tree_pids "$1"); do
        # Fields after the ")" that closes the command name: utime is the 12th.
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }' || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Microseconds of CPU per request: cpu_per_req TICKS_BEFORE TICKS_AFTER REQUESTS
cpu_per_req() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" \
        'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / hz / n; else print "NA" }'
}


# Wait (bounded by QUIET_TIMEOUT) until the machine is idle apart from the
# benchmark's own idle servers. Logs each wait to quiet.log.
wait_quiet() {
    local what=$1 busy waited=0
    ((QUIET_TIMEOUT > 0)) || return 0
    busy=$(machine_busy_pct)
    while ((busy >= QUIET_MAX && waited < QUIET_TIMEOUT)); do
        ((waited == 0)) && log "machine ${busy}% busy; waiting for it to quieten before: $what"
        sleep 4
        waited=$((waited + 5))
        busy=$(machine_busy_pct)
    done
    printf '%s\tround %s\t%s\tbusy %s%%\twaited %ss\n' "$(date -u +%H:%M:%S)" "$ROUND" "$what" \
        "$busy" "$waited" >>"$RESULTS_DIR/quiet.log"
    if ((busy >= QUIET_MAX)); then
        log "warning: still ${busy}% busy after ${QUIET_TIMEOUT}s; measuring anyway: $what"
    fi
}

# ---------------------------------------------------------------- tools


has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

check_tools() {
    local missing=() t
    local needed=(taskset wrk h2load awk ps)
    [[ $SKIP_BUILD == 1 ]] || needed+=(cargo)
    has_target nginx && needed+=(nginx)
    has_target haproxy && needed+=(haproxy)
    case $UPSTREAM in
    hyper) ;;
    nginx | haproxy) needed+=("$UPSTREAM") ;;
    *)
        log "unknown UPSTREAM '$UPSTREAM' (known: hyper nginx haproxy)"
        exit 1
        ;;
    esac
    for t in "${needed[@]}"; do
        find_tool "$t" >/dev/null || missing+=("$t")
    done
    if ((${#missing[@]})); then
        log "missing tools: ${missing[*]}"
        log "install them with: apt-get install -y wrk nghttp2-client nginx-light haproxy util-linux procps"
        exit 1
    fi
    NGINX=$(find_tool nginx || true)
    HAPROXY=$(find_tool haproxy || true)
    NGINX_UPSTREAM=$NGINX
    HAPROXY_UPSTREAM=$HAPROXY
    if (($(nproc) < 2)); then
        log "warning: fewer than 2 CPUs; the client and the servers will share a core"
    fi
}

# ---------------------------------------------------------------- measurements

# Parsers for the tools' text output. They print nothing if the line is absent.
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }
wrk_errors() {
    awk '/Non-2xx or 3xx responses:/ { n += $NF }
         /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i }
         END { print n + 0 }' "$1"
}
h2load_rps() { awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($(i) == "req/s,") print $(i - 1) }' "$1"; }
h2load_requests() { awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($i ~ /^succeeded,?$/) print $(i - 1) }' "$1"; }
h2load_errors() {
    awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($i ~ /^(failed|errored|timeout),?$/) n += $(i - 1) }
         END { print n + 0 }' "$1"
}
# Value of a numeric key in bench-load's one-line JSON.
json_num() { sed -n "s/.*\"$2\":\([-0-9.]*\).*/\1/p" "$1"; }

# Results are gathered in tab-separated files and turned into Markdown at the end.
THROUGHPUT_TSV=""
GRPC_MESSAGE=""
LATENCY_TSV=""
MEMORY_TSV=""

# Throughput with wrk (HTTP/1.1) and h2load (h2c), and the CPU time the
# target's processes (tree of $pid) spent per request meanwhile.
measure_throughput() {
    local name=$1 pid=$2 h1_url=$3 h2_url=$4 out=$RESULTS_DIR/$name.r$ROUND
    local h1_rps="" h1_err="" h1_cpu="" h2_rps="" h2_err="" h2_cpu="" t0 t1

    wait_quiet "$name wrk"
    if ((WARMUP > 0)); then
        log "$name: HTTP/1.1 warm-up ${WARMUP}s"
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"${WARMUP}s" -H "$BAGGAGE_HEADER" \
            "$h1_url" >"$out.wrk-warmup.txt" 2>&1 || true
    fi
    log "$name: HTTP/1.1 throughput, wrk -t1 -c$WRK_CONNECTIONS -d${DURATION}s"
    t0=$(tree_cpu_ticks "$pid")
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$WRK_CONNECTIONS" -d"${DURATION}s" --latency \
        -H "$BAGGAGE_HEADER" "$h1_url" >"$out.wrk.txt" 2>&1 || log "$name: wrk failed (see $out.wrk.txt)"
    t1=$(tree_cpu_ticks "$pid")
    h1_rps=$(wrk_rps "$out.wrk.txt")
    h1_err=$(wrk_errors "$out.wrk.txt")
    h1_cpu=$(cpu_per_req "$t0" "$t1" "$(wrk_requests "$out.wrk.txt")")

    if [[ -n $h2_url && $UPSTREAM == hyper ]]; then
        log "$name: h2c throughput, h2load -c$H2_CLIENTS -m$H2_STREAMS -D$DURATION"
        wait_quiet "$name h2load"
        if ((WARMUP > 0)); then
            taskset -c "$CLIENT_CPU" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$WARMUP" \
                -H "$BAGGAGE_HEADER" "$h2_url" >"$out.h2load-warmup.txt" 2>&1 || true
        fi
        t0=$(tree_cpu_ticks "$pid")
        taskset -c "$CLIENT_CPU" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$DURATION" \
            -H "$BAGGAGE_HEADER" "$h2_url" >"$out.h2load.txt" 2>&1 ||
            log "$name: h2load failed (see $out.h2load.txt)"
        t1=$(tree_cpu_ticks "$pid")
        h2_rps=$(h2load_rps "$out.h2load.txt")
        h2_err=$(h2load_errors "$out.h2load.txt")
        h2_cpu=$(cpu_per_req "$t0" "$t1" "$(h2load_requests "$out.h2load.txt")")
    fi
    local g_rps="" g_err="" g_cpu=""
    if [[ -n $h2_url && $UPSTREAM == hyper ]]; then
        log "$name: gRPC throughput, h2load -c$H2_CLIENTS -m$H2_STREAMS -D$DURATION (unary calls)"
        wait_quiet "$name grpc"
        local grpc=(-d "$GRPC_MESSAGE" -H 'content-type: application/grpc' -H 'te: trailers'
            -H "$BAGGAGE_HEADER" "${h2_url}bench.Echo/Say")
        if ((WARMUP > 0)); then
            taskset -c "$CLIENT_CPU" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$WARMUP" \
                "${grpc[@]}" >"$out.grpc-warmup.txt" 2>&1 || true
        fi
        t0=$(tree_cpu_ticks "$pid")
        taskset -c "$CLIENT_CPU" h2load -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$DURATION" \
            "${grpc[@]}" >"$out.grpc.txt" 2>&1 || log "$name: h2load (gRPC) failed (see $out.grpc.txt)"
        t1=$(tree_cpu_ticks "$pid")
        g_rps=$(h2load_rps "$out.grpc.txt")
        g_err=$(h2load_errors "$out.grpc.txt")
        g_cpu=$(cpu_per_req "$t0" "$t1" "$(h2load_requests "$out.grpc.txt")")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ROUND" "${h1_rps:-NA}" "${h1_err:-NA}" \
        "${h2_rps:-NA}" "${h2_err:-NA}" "${h1_cpu:-NA}" "${h2_cpu:-NA}" \
        "${g_rps:-NA}" "${g_err:-NA}" "${g_cpu:-NA}" >>"$THROUGHPUT_TSV"
}

# Latency at each fixed rate, and the CPU time the target's processes
# (tree of $pid) spent per request meanwhile: at a rate a sidecar really
# sees, a proxy's cost per request includes waking up for each one.
measure_latency() {
    local name=$1 pid=$2 url=$3 rate f t0 t1 sent
    for rate in $RATES; do
        f=$RESULTS_DIR/$name.r$ROUND.latency-$rate.json
        wait_quiet "$name latency $rate"
        log "$name: fixed rate $rate req/s for ${LAT_DURATION}s ($LAT_CONNECTIONS connections)"
        t0=$(tree_cpu_ticks "$pid")
        if taskset -c "$CLIENT_CPU" "$BIN_DIR/bench-load" --url "$url" --rate "$rate" \
            --duration "$LAT_DURATION" --warmup "$WARMUP" --connections "$LAT_CONNECTIONS" \
            -H "$BAGGAGE_HEADER" --expect-body alice >"$f" 2>"$f.stderr"; then
            t1=$(tree_cpu_ticks "$pid")
            # The CPU time covers the warm-up's requests too.
            sent=$(awk -v s="$(json_num "$f" scheduled)" -v r="$rate" -v w="$WARMUP" \
                'BEGIN { printf "%d", s + r * w }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ROUND" "$rate" \
                "$(json_num "$f" p50_us)" "$(json_num "$f" p90_us)" "$(json_num "$f" p99_us)" \
                "$(json_num "$f" p999_us)" "$(json_num "$f" max_us)" \
                "$(json_num "$f" achieved_rate)" "$(json_num "$f" errors)" \
                "$(cpu_per_req "$t0" "$t1" "$sent")" >>"$LATENCY_TSV"
        else
            log "$name: bench-load failed: $(tail -n 3 "$f.stderr")"
            printf '%s\t%s\t%s\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n' "$name" "$ROUND" "$rate" >>"$LATENCY_TSV"
        fi
    done
}

# Route check: with the baggage member the answer must come from alice's
# upstream, without it from staging's.
check_routing() {
    local name=$1 url=$2 f=$RESULTS_DIR/$name.r$ROUND.routing
    if ! "$BIN_DIR/bench-load" --url "$url" --rate 200 --duration 0.25 --connections 2 \
        -H "$BAGGAGE_HEADER" --expect-body alice >"$f-alice.json" 2>&1 ||
        [[ $(json_num "$f-alice.json" errors) != 0 ]]; then
        log "$name: requests with '$BAGGAGE_HEADER' did not reach alice's upstream: $(cat "$f-alice.json")"
        return 1
    fi
    if ! "$BIN_DIR/bench-load" --url "$url" --rate 200 --duration 0.25 --connections 2 \
        --expect-body staging >"$f-staging.json" 2>&1 ||
        [[ $(json_num "$f-staging.json" errors) != 0 ]]; then
        log "$name: requests without baggage did not reach staging's upstream: $(cat "$f-staging.json")"
        return 1
    fi
    log "$name: routing checked (baggage -> alice, none -> staging)"
}

record_memory() {
    local name=$1 pid=$2 when=$3
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ROUND" "$when" "$(tree_status_kb VmRSS "$pid")" \
        "$(tree_status_kb VmHWM "$pid")" "$(tree_pids "$pid" | wc -l)" >>"$MEMORY_TSV"
}

# Run every measurement against one target whose (root) process is $pid.
bench_target() {
    local name=$1 pid=$2 h1_url=$3 h2_url=$4
    if [[ $name != direct ]] && ! check_routing "$name" "$h1_url"; then
        log "$name: skipped (routing check failed)"
        return 0
    fi
    record_memory "$name" "$pid" idle
    measure_throughput "$name" "$pid" "$h1_url" "$h2_url"
    measure_latency "$name" "$pid" "$h1_url"
    record_memory "$name" "$pid" after-load
}

# ---------------------------------------------------------------- targets

start_upstreams() {
    ensure_free "$UPSTREAM_HOST" "$UPSTREAM_PORT"
    ensure_free "$UPSTREAM_HOST" "$ALICE_UPSTREAM_PORT"
    "start_${UPSTREAM}_upstreams"
}

# Two bench-upstream processes (one worker each), staging's and alice's.
start_hyper_upstreams() {
    local lg
    lg=$RESULTS_DIR/upstream-staging.log
    start_pinned "$SERVER_CPU" "$lg" "$BIN_DIR/bench-upstream" --workers 1 --body staging \
        --listen "$UPSTREAM_HOST:$UPSTREAM_PORT"
    wait_port "$UPSTREAM_HOST" "$UPSTREAM_PORT" "$LAST_PID" "$lg"
    lg=$RESULTS_DIR/upstream-alice.log
    start_pinned "$SERVER_CPU" "$lg" "$BIN_DIR/bench-upstream" --workers 1 --body alice \
        --listen "$UPSTREAM_HOST:$ALICE_UPSTREAM_PORT"
    wait_port "$UPSTREAM_HOST" "$ALICE_UPSTREAM_PORT" "$LAST_PID" "$lg"
    UPSTREAM_ALICE_PID=$LAST_PID
}

# One nginx (one worker) answering from memory on both ports: the body is
# the namespace, as bench-upstream's.
start_nginx_upstreams() {
    local dir=$TMP/nginx-upstream lg=$RESULTS_DIR/upstream-nginx.log
    mkdir -p "$dir/logs"
    chmod 755 "$TMP" "$dir"
    {
        nginx_conf_start "$dir"
        cat <<EOF
    default_type text/plain;
    server {
        listen $UPSTREAM_HOST:$UPSTREAM_PORT;
        location / { return 200 "staging"; }
    }
    server {
        listen $UPSTREAM_HOST:$ALICE_UPSTREAM_PORT;
        location / { return 200 "alice"; }
    }
}
EOF
    } >"$dir/nginx.conf"
    cp "$dir/nginx.conf" "$RESULTS_DIR/upstream-nginx.conf"
    start_pinned "$SERVER_CPU" "$lg" "$NGINX_UPSTREAM" -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf"
    wait_port "$UPSTREAM_HOST" "$UPSTREAM_PORT" "$LAST_PID" "$lg"
    wait_port "$UPSTREAM_HOST" "$ALICE_UPSTREAM_PORT" "$LAST_PID" "$lg"
    UPSTREAM_ALICE_PID=$LAST_PID
}

# One HAProxy (one thread) answering from memory on both ports.
start_haproxy_upstreams() {
    local cfg=$TMP/haproxy-upstream.cfg lg=$RESULTS_DIR/upstream-haproxy.log
    {
        haproxy_conf_start
        cat <<EOF

frontend staging
    bind $UPSTREAM_HOST:$UPSTREAM_PORT
    http-request return status 200 content-type text/plain string staging

frontend alice
    bind $UPSTREAM_HOST:$ALICE_UPSTREAM_PORT
    http-request return status 200 content-type text/plain string alice
EOF
    } >"$cfg"
    cp "$cfg" "$RESULTS_DIR/upstream-haproxy.cfg"
    "$HAPROXY_UPSTREAM" -c -q -f "$cfg" >"$lg" 2>&1 || die "haproxy rejected its config: $(cat "$lg")"
    start_pinned "$SERVER_CPU" "$lg" "$HAPROXY_UPSTREAM" -db -f "$cfg"
    wait_port "$UPSTREAM_HOST" "$UPSTREAM_PORT" "$LAST_PID" "$lg"
    wait_port "$UPSTREAM_HOST" "$ALICE_UPSTREAM_PORT" "$LAST_PID" "$lg"
    UPSTREAM_ALICE_PID=$LAST_PID
}

run_direct() {
    local url="http://$UPSTREAM_HOST:$ALICE_UPSTREAM_PORT/"
    bench_target direct "$UPSTREAM_ALICE_PID" "$url" "$url"
}

run_divert() { divert_target divert "$DIVERT_BIN"; }
run_divert-alt() { divert_target divert-alt "$DIVERT_ALT_BIN"; }

divert_target() {
    local name=$1 bin=$2 reg=$TMP/registry.yaml lg=$RESULTS_DIR/$1.r$ROUND.log pid
    [[ -n $bin && -x $bin ]] || {
        log "$name: binary '$bin' not found; skipped"
        return 0
    }
    bench_registry "$DIVERT_HOST" 127.0.90.2 "$PORT" "$UPSTREAM_HOST:$UPSTREAM_PORT" \
        "$UPSTREAM_HOST:$ALICE_UPSTREAM_PORT" >"$reg"
    cp "$reg" "$RESULTS_DIR/divert-registry.yaml"
    ensure_free "$DIVERT_HOST" "$PORT"
    start_pinned "$SERVER_CPU" "$lg" "$bin" proxy --registry "$reg" --workers 1 \
        --log-level "$DIVERT_LOG_LEVEL"
    pid=$LAST_PID
    wait_port "$DIVERT_HOST" "$PORT" "$pid" "$lg"
    wait_port 127.0.90.2 "$PORT" "$pid" "$lg"
    # The same listener speaks HTTP/1.1 and h2c (prior knowledge).
    bench_target "$name" "$pid" "http://$DIVERT_HOST:$PORT/" "http://$DIVERT_HOST:$PORT/"
    stop_pid "$pid"
    forget_pid "$pid"
}

# The start of an nginx configuration for a one-worker nginx in the
# foreground whose files all live under $1, up to the open http block.
nginx_conf_start() {
    local dir=$1
    cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
EOF
}

run_nginx() {
    local dir=$TMP/nginx lg=$RESULTS_DIR/nginx.r$ROUND.log pid
    mkdir -p "$dir/logs"
    # A root master hands the sockets to a worker running as nobody.
    chmod 755 "$TMP" "$dir"
    {
        nginx_conf_start "$dir"
        cat <<EOF

    # W3C baggage: a list member okteto-divert=alice (optional whitespace,
    # optional ;properties) anywhere in the header selects alice.
    map \$http_baggage \$divert_upstream {
        default staging;
        "~(^|,)\\s*okteto-divert\\s*=\\s*alice\\s*(;[^,]*)?(,|\$)" alice;
    }
    upstream staging {
        server $UPSTREAM_HOST:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream alice {
        server $UPSTREAM_HOST:$ALICE_UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    # gRPC goes to the app over HTTP/2, as gRPC needs (trailers).
    upstream staging_grpc {
        server $UPSTREAM_HOST:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream alice_grpc {
        server $UPSTREAM_HOST:$ALICE_UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen $NGINX_HOST:$PORT;
        listen $NGINX_HOST:$H2_PORT http2;
        location / {
            proxy_pass http://\$divert_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /bench.Echo/ {
            grpc_pass grpc://\${divert_upstream}_grpc;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    cp "$dir/nginx.conf" "$RESULTS_DIR/nginx.conf"
    ensure_free "$NGINX_HOST" "$PORT"
    ensure_free "$NGINX_HOST" "$H2_PORT"
    start_pinned "$SERVER_CPU" "$lg" "$NGINX" -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf"
    pid=$LAST_PID
    wait_port "$NGINX_HOST" "$PORT" "$pid" "$lg"
    wait_port "$NGINX_HOST" "$H2_PORT" "$pid" "$lg"
    bench_target nginx "$pid" "http://$NGINX_HOST:$PORT/" "http://$NGINX_HOST:$H2_PORT/"
    stop_pid "$pid"
    forget_pid "$pid"
    cp "$dir/logs/error.log" "$RESULTS_DIR/nginx-error.r$ROUND.log" 2>/dev/null || true
}

# The start of a one-thread HAProxy configuration in HTTP mode: the
# global and defaults sections.
haproxy_conf_start() {
    cat <<EOF
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
EOF
}

run_haproxy() {
    local cfg=$TMP/haproxy.cfg lg=$RESULTS_DIR/haproxy.r$ROUND.log pid
    {
        haproxy_conf_start
        cat <<EOF
    http-reuse always

frontend api
    bind $HAPROXY_HOST:$PORT
    bind $HAPROXY_HOST:$H2_PORT proto h2
    # req.hdr() yields each comma-separated list member of baggage in turn.
    acl to_alice req.hdr(baggage) -m reg '^[[:space:]]*okteto-divert[[:space:]]*=[[:space:]]*alice[[:space:]]*(;.*)?\$'
    # gRPC goes to the app over HTTP/2, as gRPC needs (trailers).
    acl grpc path_beg /bench.Echo/
    use_backend alice_grpc if grpc to_alice
    use_backend staging_grpc if grpc
    use_backend alice if to_alice
    default_backend staging

backend staging
    server staging1 $UPSTREAM_HOST:$UPSTREAM_PORT

backend alice
    server alice1 $UPSTREAM_HOST:$ALICE_UPSTREAM_PORT

backend staging_grpc
    server staging2 $UPSTREAM_HOST:$UPSTREAM_PORT proto h2

backend alice_grpc
    server alice2 $UPSTREAM_HOST:$ALICE_UPSTREAM_PORT proto h2
EOF
    } >"$cfg"
    cp "$cfg" "$RESULTS_DIR/haproxy.cfg"
    "$HAPROXY" -c -q -f "$cfg" >"$lg" 2>&1 || die "haproxy rejected its config: $(cat "$lg")"
    ensure_free "$HAPROXY_HOST" "$PORT"
    ensure_free "$HAPROXY_HOST" "$H2_PORT"
    # -db: stay in the foreground, a single process.
    start_pinned "$SERVER_CPU" "$lg" "$HAPROXY" -db -f "$cfg"
    pid=$LAST_PID
    wait_port "$HAPROXY_HOST" "$PORT" "$pid" "$lg"
    wait_port "$HAPROXY_HOST" "$H2_PORT" "$pid" "$lg"
    bench_target haproxy "$pid" "http://$HAPROXY_HOST:$PORT/" "http://$HAPROXY_HOST:$H2_PORT/"
    stop_pid "$pid"
    forget_pid "$pid"
}

# ---------------------------------------------------------------- report

report() {
    awk -F '\t' '
    # Space-separated lists of the per-round values, reduced at the end.
    function add(arr, key, v) { if (v != "" && v != "NA" && v != "-") arr[key] = arr[key] " " v }
    function sorted(list, a,    n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n
    }
    function median(list,    a, n) {
        n = sorted(list, a)
        if (n == 0) return ""
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function spread(list,    a, n, m) {
        n = sorted(list, a); m = median(list)
        return (n < 2 || m == 0) ? "-" : sprintf("%.0f%%", 100 * (a[n] - a[1]) / m)
    }
    function sum(list,    a, n, i, t) { n = split(list, a, " "); for (i = 1; i <= n; i++) t += a[i]; return n ? t : "-" }
    function num(v, f) { return (v == "") ? "-" : sprintf(f, v) }
    function ok(v) { return v != "" && v != "NA" && v != "-" }
    # Ratios and differences against direct are taken round by round (each
    # round ran all targets back to back) and then reduced to their median, so
    # a drift of the machine between rounds cancels out.
    function rratio(arr, t,    i, r, list, m) {
        for (i = 1; i <= rord[0]; i++) {
            r = rord[i]
            if (ok(arr[t SUBSEP r]) && ok(arr["direct" SUBSEP r]) && arr["direct" SUBSEP r] + 0 != 0)
                list = list " " arr[t SUBSEP r] / arr["direct" SUBSEP r]
        }
        m = median(list)
        return (m == "") ? "-" : sprintf("%.2f", m)
    }
    function rdiff(arr, t, rate,    i, r, list, m) {
        for (i = 1; i <= rord[0]; i++) {
            r = rord[i]
            if (ok(arr[t SUBSEP r SUBSEP rate]) && ok(arr["direct" SUBSEP r SUBSEP rate]))
                list = list " " arr[t SUBSEP r SUBSEP rate] - arr["direct" SUBSEP r SUBSEP rate]
        }
        m = median(list)
        return (m == "") ? "-" : sprintf("%+.0f", m)
    }
    function mib(kb) { return (kb == "") ? "-" : sprintf("%.1f", kb / 1024) }
    function remember(list, seenarr, t) { if (!(t in seenarr)) { seenarr[t] = 1; list[++list[0]] = t } }
    FNR == 1 { file++ }
    file == 1 { remember(tord, tseen, $1); remember(rord, rseen, $2); rh1[$1 SUBSEP $2] = $3; rh2[$1 SUBSEP $2] = $5
                add(h1, $1, $3); add(h1e, $1, $4); add(h2, $1, $5); add(h2e, $1, $6)
                add(h1c, $1, $7); add(h2c, $1, $8)
                if (NF >= 11 && ok($9)) { rg[$1 SUBSEP $2] = $9; add(g, $1, $9); add(ge, $1, $10); add(gc, $1, $11); grpcs[$1] = 1 } }
    file == 2 { remember(lord, lseen, $1); remember(rord, rseen, $2); remember(rates, rateseen, $3)
                rp50[$1 SUBSEP $2 SUBSEP $3] = $4; rp99[$1 SUBSEP $2 SUBSEP $3] = $6
                k = $1 SUBSEP $3
                add(p50, k, $4); add(p90, k, $5); add(p99, k, $6); add(p999, k, $7); add(pmax, k, $8)
                add(ach, k, $9); add(lerr, k, $10); add(lcpu, k, $11); lat[k] = 1 }
    file == 3 { remember(mord, mseen, $1); add(rss, $1 SUBSEP $3, $4); add(hwm, $1 SUBSEP $3, $5); procs[$1] = $6 }
    END {
        rounds = rord[0]
        print "### Throughput (median of " rounds " round(s); client on its own core, upstream (" upstream ") and proxy share the other)"
        print ""
        print "| target | HTTP/1.1 req/s | vs direct | spread | CPU µs/req | errors | h2c req/s | vs direct | spread | CPU µs/req | errors |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= tord[0]; i++) {
            t = tord[i]; m1 = median(h1[t]); m2 = median(h2[t])
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t, num(m1, "%.0f"), rratio(rh1, t), spread(h1[t]), num(median(h1c[t]), "%.1f"), sum(h1e[t]), num(m2, "%.0f"), rratio(rh2, t), spread(h2[t]), num(median(h2c[t]), "%.1f"), sum(h2e[t])
        }
        if (length(grpcs) > 0) {
            print ""
            print "### gRPC (unary calls over h2c)"
            print ""
            print "| target | calls/s | vs direct | spread | CPU µs/call | errors |"
            print "|---|---:|---:|---:|---:|---:|"
            for (i = 1; i <= tord[0]; i++) {
                t = tord[i]
                if (!(t in grpcs)) continue
                printf "| %s | %s | %s | %s | %s | %s |\n", t, num(median(g[t]), "%.0f"), rratio(rg, t), spread(g[t]), num(median(gc[t]), "%.1f"), sum(ge[t])
            }
        }
        print ""
        print "### Latency at a fixed rate (HTTP/1.1, µs from the intended send time, median of " rounds " round(s))"
        print ""
        print "| target | rate req/s | p50 | p90 | p99 | p99.9 | max | p50 added | p99 added | achieved req/s | errors | CPU µs/req |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for (j = 1; j <= rates[0]; j++) {
            r = rates[j]
            for (i = 1; i <= lord[0]; i++) {
                t = lord[i]; k = t SUBSEP r
                if (!(k in lat)) continue
                m50 = median(p50[k]); m99 = median(p99[k])
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t, r, num(m50, "%.0f"), num(median(p90[k]), "%.0f"), num(m99, "%.0f"), num(median(p999[k]), "%.0f"), num(median(pmax[k]), "%.0f"), (t == "direct" ? "-" : rdiff(rp50, t, r)), (t == "direct" ? "-" : rdiff(rp99, t, r)), num(median(ach[k]), "%.0f"), sum(lerr[k]), num(median(lcpu[k]), "%.1f")
            }
        }
        print ""
        print "### Memory (VmRSS/VmHWM summed over the proxy'"'"'s processes; direct = the upstream alone)"
        print ""
        print "| target | processes | RSS idle MiB | RSS after load MiB | HWM MiB |"
        print "|---|---:|---:|---:|---:|"
        for (i = 1; i <= mord[0]; i++) {
            t = mord[i]
            printf "| %s | %s | %s | %s | %s |\n", t, procs[t], mib(median(rss[t SUBSEP "idle"])), mib(median(rss[t SUBSEP "after-load"])), mib(median(hwm[t SUBSEP "after-load"]))
        }
        print ""
        print "\"vs direct\" and \"added\" are medians of per-round comparisons with direct; \"spread\" is (max - min) / median over the rounds; CPU µs/req is the CPU time of the target'"'"'s own processes per request."
    }' upstream="$UPSTREAM" "$THROUGHPUT_TSV" "$LATENCY_TSV" "$MEMORY_TSV"
}

# ---------------------------------------------------------------- main

main() {
    if [[ ${1:-} == --report ]]; then
        # Re-render the summary of an earlier run: bash bench/run.sh --report DIR
        RESULTS_DIR=${2:?usage: run.sh --report RESULTS_DIR}
        THROUGHPUT_TSV=$RESULTS_DIR/throughput.tsv
        LATENCY_TSV=$RESULTS_DIR/latency.tsv
        MEMORY_TSV=$RESULTS_DIR/memory.tsv
        UPSTREAM=$(sed -n 's/^upstream: //p' "$RESULTS_DIR/meta.txt")
        UPSTREAM=${UPSTREAM:-hyper}
        report
        return 0
    fi
    check_tools
    mkdir -p "$RESULTS_DIR"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/divert-bench.XXXXXX")
    THROUGHPUT_TSV=$RESULTS_DIR/throughput.tsv
    LATENCY_TSV=$RESULTS_DIR/latency.tsv
    MEMORY_TSV=$RESULTS_DIR/memory.tsv
    : >"$THROUGHPUT_TSV"
    : >"$LATENCY_TSV"
    : >"$MEMORY_TSV"
    # One unary gRPC request message: not compressed, 18 bytes long, a
    # protobuf string (field 1) of 16 bytes.
    GRPC_MESSAGE=$TMP/grpc-message.bin
    printf '\x00\x00\x00\x00\x12\x0a\x10alice-bench-call' >"$GRPC_MESSAGE"

    if [[ $SKIP_BUILD != 1 ]]; then
        local pkgs=(-p divert-bench)
        has_target divert && pkgs+=(-p divert-sidecar)
        log "building release binaries: cargo build --release ${pkgs[*]}"
        (cd "$ROOT" && cargo build --release "${pkgs[@]}") || die "build failed"
    fi
    [[ -x $BIN_DIR/bench-upstream && -x $BIN_DIR/bench-load ]] ||
        die "bench binaries missing in $BIN_DIR (build with: cargo build --release -p divert-bench)"

    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "cpus: $(nproc)"
        echo "cpu model: $(awk -F ': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "kernel: $(uname -r)"
        echo "load average at start: $(cut -d ' ' -f 1-3 /proc/loadavg)"
        echo "targets: $TARGETS"
        echo "upstream: $UPSTREAM"
        echo "duration: ${DURATION}s, latency runs: ${LAT_DURATION}s, warm-up: ${WARMUP}s, rates: $RATES, rounds: $REPEATS"
        echo "wrk connections: $WRK_CONNECTIONS, h2load: -c$H2_CLIENTS -m$H2_STREAMS, bench-load connections: $LAT_CONNECTIONS"
        echo "server cpu: $SERVER_CPU, client cpu: $CLIENT_CPU"
        echo "wrk: $(wrk -v 2>&1 | head -n 1 || true)"
        echo "h2load: $(h2load --version 2>&1 | head -n 1)"
        [[ -n $NGINX ]] && echo "nginx: $("$NGINX" -v 2>&1)"
        [[ -n $HAPROXY ]] && echo "haproxy: $("$HAPROXY" -v 2>&1 | head -n 1)"
        echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"
        local b
        for b in "$DIVERT_BIN" "$DIVERT_ALT_BIN"; do
            [[ -n $b && -f $b ]] || continue
            echo "divert binary: $b (built $(date -u -r "$b" +%Y-%m-%dT%H:%M:%SZ), sha256 $(sha256sum "$b" | cut -c1-12))"
        done
    } >"$RESULTS_DIR/meta.txt"
    log "results go to $RESULTS_DIR"


    local t
    for t in $TARGETS; do
        case $t in
        direct | divert | divert-alt | nginx | haproxy) ;;
        *) die "unknown target '$t' (known: direct divert divert-alt nginx haproxy)" ;;
        esac
    done
    start_upstreams
    # Rounds interleave the targets, so a slow drift of the machine (another
    # job, a noisy neighbour) hits every target rather than one.
    for ((ROUND = 1; ROUND <= REPEATS; ROUND++)); do
        log "round $ROUND of $REPEATS"
        for t in $TARGETS; do
            "run_$t"
        done
    done

    report | tee "$RESULTS_DIR/summary.md"
    log "raw results: $RESULTS_DIR"
}

main "$@"
