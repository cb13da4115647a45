#!/usr/bin/env bash
# The idle RSS of one proxy binary, as a single check: the proxy in bind mode
# on a two-service registry, 20 requests through it with curl, then its
# VmRSS, RssFile and RssAnon from /proc. For before/after comparisons of a
# change to the binary's size (BENCHMARKS.md, "The price of verifying the
# controller"); the harness (bench/run.sh) measures RSS under load.
#
# Usage: bash bench/idle.sh PATH-TO-divert-proxy
set -euo pipefail
bin=${1:?usage: bash bench/idle.sh PATH-TO-divert-proxy}
dir=$(mktemp -d)
up=""
proxy=""
cleanup() {
    [[ -n $proxy ]] && kill "$proxy" 2>/dev/null || true
    [[ -n $up ]] && kill "$up" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
python3 -m http.server 18931 --bind 127.0.0.1 >/dev/null 2>&1 &
up=$!
cat >"$dir/registry.yaml" <<YAML
services:
  - { name: web, namespace: staging, addresses: [127.77.0.1], ports: [{ port: 8080 }], endpoints: ["127.0.0.1:18931"] }
  - { name: api, namespace: staging, addresses: [127.77.0.2], ports: [{ port: 8080 }], endpoints: ["127.0.0.1:18931"] }
YAML
"$bin" proxy --registry "$dir/registry.yaml" --admin-addr 127.0.0.1:14999 2>/dev/null &
proxy=$!
for _ in $(seq 50); do
    curl -s -o /dev/null http://127.0.0.1:14999/ready && break
    sleep 0.1
done
for _ in $(seq 20); do curl -s -o /dev/null http://127.77.0.1:8080/; done
grep -E "^(VmRSS|RssFile|RssAnon)" "/proc/$proxy/status" | tr -s ' \t' ' ' | tr '\n' ' '
echo
