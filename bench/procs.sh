# Process helpers the benchmark harnesses (run.sh, connections.sh) share:
# start one pinned to a core, wait for its port, read its memory, stop it.
# Every process started here is stopped when the script exits, failures
# included. Messages are tagged with $LOG_TAG (the script's name).

log() { printf '[%s] %s\n' "${LOG_TAG:-bench}" "$*" >&2; }
die() {
    printf '[%s] error: %s\n' "${LOG_TAG:-bench}" "$*" >&2
    exit 1
}

PIDS=()
TMP=""

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

forget_pid() {
    local pid=$1 p keep=()
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start a command in the background pinned to a core; its pid lands in PIDS
# and in the global LAST_PID. taskset execs the command, so $! is its pid.
LAST_PID=""
start_pinned() {
    local cpu=$1 logfile=$2
    shift 2
    taskset -c "$cpu" "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

port_open() {
    # bash's /dev/tcp: a connect attempt, nothing is sent.
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Poll until host:port accepts connections; fail if the process dies first.
wait_port() {
    local host=$1 port=$2 pid=$3 logfile=$4 i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "process $pid exited before listening on $host:$port (log: $logfile)"
        fi
        port_open "$host" "$port" && return 0
        sleep 0.05
    done
    tail -n 20 "$logfile" >&2 || true
    die "$host:$port not listening after 10 s (log: $logfile)"
}

ensure_free() {
    if port_open "$1" "$2"; then
        die "$1:$2 is already in use; stop whatever listens there or change PORT/H2_PORT/UPSTREAM_PORT"
    fi
}

# All pids of a process tree (the process and its descendants).
tree_pids() {
    local pid=$1 child
    echo "$pid"
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
        tree_pids "$child"
    done
}

# Sum of a /proc/PID/status field (kB) over a process tree.
tree_status_kb() {
    local field=$1 pid=$2 p total=0 v
    for p in $(tree_pids "$pid"); do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}


# The path of a tool, on PATH or in the sbin directories root's PATH may lack.
find_tool() {
    local name=$1 dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        if [[ -x $dir/$name ]]; then
            echo "$dir/$name"
            return 0
        fi
    done
    return 1
}
