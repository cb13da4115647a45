#!/usr/bin/env bash
# Runs every test of the workspace, after installing the real peers the
# end-to-end tests drive (curl, nghttp, Python grpcio and websockets, nginx
# for the cluster scenario's ingress controller), libseccomp's headers for
# the real node's runc, and
# what the network-namespace tests need (ip, iptables legacy and nft, setpriv),
# and openssl (a real TLS server and certificates for the webhook). The test
# control plane (tests/kube) is built with Go by the tests that use it.
# Safe to run again: it installs only what is missing.
#
# Ends with one line for the whole run: 'N passed, N failed, N skipped'. A
# test that cannot run here (no root, a tool missing) records itself in
# $DIVERT_SKIP_LOG and is listed and counted as skipped, not passed; under
# CI=true such a test fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v nghttp >/dev/null || need_apt+=(nghttp2-client)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v ip >/dev/null || need_apt+=(iproute2)
{ command -v iptables-legacy-restore && command -v iptables-nft-restore; } >/dev/null || need_apt+=(iptables)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v openssl >/dev/null || need_apt+=(openssl)
[ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
# The real node's runc is built with seccomp (cgo, libseccomp).
[ -e /usr/include/seccomp.h ] || need_apt+=(libseccomp-dev pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing ${need_apt[*]}: install them (apt-get install ${need_apt[*]}) or run as root" >&2
  fi
fi
if ! python3 -c 'import grpc, grpc_tools, websockets' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

command -v go >/dev/null || echo "go is missing: the test control plane needs Go 1.26 (the cluster tests will say so)" >&2

# The images the test cluster's real node runs (Divert's, by deploy/image.sh,
# and the test apps'), as OCI archives in target/node-images: built before
# the tests, which import them. Root only (buildah, mmdebstrap); elsewhere
# the real-node tests say they cannot run.
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: the real node's images are not built (tests/node/images.sh needs root)" >&2
elif ! command -v go >/dev/null; then
  echo "no go: the real node's images are not built (its pause image is a Go program)" >&2
else
  bash tests/node/images.sh
fi

log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
status=0
DIVERT_SKIP_LOG=$skips cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
skipped=$(cut -f1 "$skips" | sort -u | wc -l)
if [ "$skipped" -gt 0 ]; then
  echo
  echo "skipped tests (they could not run here):"
  sort -u -t "$(printf '\t')" -k1,1 "$skips" | awk -F'\t' '{ printf "  SKIP %s: %s\n", $1, $2 }'
fi
# The failures again, in short, next to the closing line: a long log is
# often kept only by its head and its tail. For each failed test, the phase
# it was in (the cluster scenario names it) and the panic with a few lines
# of its message.
if [ "$status" -ne 0 ]; then
  echo
  echo "failures, in short:"
  awk '
    /^---- .* stdout ----$/ { t = $2; n = 0; next }
    /^FAILED in / { print "  " t ": " $0; next }
    /panicked at / { print "  " t ": " $0; n = 8; next }
    /^stack backtrace:|^note: / { n = 0 }
    n > 0 { print "    " substr($0, 1, 300); n-- }
  ' "$log" | head -n 80
fi
# One closing line for the whole run (cargo prints one per test binary); a
# skipped test returned early, which cargo counted as passed.
awk -v s="$skipped" '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
exit "$status"
