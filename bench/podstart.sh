#!/usr/bin/env bash
# Pod start on the test cluster's real node: the time from a pod's creation
# to Ready, with Divert's injection (init container, native sidecar, app)
# and without, in one run (bench-podstart's --help says what is timed).
# Needs root, Go (the node's programs) and the images of
# tests/node/images.sh, which it builds unless SKIP_BUILD=1.
#
# Usage: sudo bash bench/podstart.sh [bench-podstart flags, e.g. --rounds 20]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LOG_TAG=podstart
# shellcheck source=bench/procs.sh
source "$HERE/procs.sh"

[[ $(id -u) == 0 ]] || die "this benchmark needs root (the real node)"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building: the node's images (tests/node/images.sh), bench-podstart and divert"
    (cd "$ROOT" && bash tests/node/images.sh >/dev/null &&
        cargo build --release -p divert-bench --bin bench-podstart &&
        cargo build --release -p divert-cli)
fi
"$ROOT/target/release/bench-podstart" --divert "$ROOT/target/release/divert" "$@"
