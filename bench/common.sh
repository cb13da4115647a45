# Shell functions the benchmark harnesses (run.sh, discovery.sh, profile.sh) use.

# The registry of the HTTP benchmarks: service api in staging and alice's
# copy of it, on one port.
# Usage: bench_registry STAGING_IP ALICE_IP PORT STAGING_UPSTREAM ALICE_UPSTREAM
bench_registry() {
    cat <<EOF
namespaces:
  - name: staging
  - name: alice
    sharedNamespace: staging
services:
  - name: api
    namespace: staging
    addresses: [$1]
    ports: [{ name: http, port: $3 }]
    endpoints: ["$4"]
  - name: api
    namespace: alice
    addresses: [$2]
    ports: [{ name: http, port: $3 }]
    endpoints: ["$5"]
EOF
}

# Percentage of all CPUs busy over the next second, from /proc/stat.
machine_busy_pct() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        d = y[2] - x[2]; printf "%.0f", (d > 0) ? 100 * (y[1] - x[1]) / d : 0 }'
}
