#!/usr/bin/env bash
# Divert end to end on a real cluster (kind, k3d or any other): the scenario
# CI runs on the test control plane (tests/tests/cluster.rs), run on the
# current kube context instead (the back-end `DIVERT_E2E_CONTEXT=1` selects).
# Same steps: install, the Movies example in `staging` and `alice`, routing
# by key over HTTP/1.1, h2c and gRPC from a client pod, the DNS search list,
# `divert check`, `divert tap`, opt-outs, failurePolicy Ignore, scale to
# zero, namespace deletion and uninstall.
#
# Use a throwaway cluster: the scenario creates and deletes the namespaces
# divert, staging, alice, bob, carol, dana, plain and ingress, and refuses
# to start if one exists.
# Everything it made is deleted at the end, failures included, unless KEEP=1.
#
# Usage: bash tests/cluster-e2e.sh
# Environment:
#   IMAGE         Divert's image                       (default divert:<version>)
#   APP_IMAGE     the Movies app, in place of http-echo (default divert-e2e/app:1)
#   CLIENT_IMAGE  the client pod: curl, Python grpcio   (default divert-e2e/client:1)
#   INGRESS_IMAGE the ingress controller stand-in       (default divert-e2e/ingress:1)
#   KIND_CLUSTER  if set, build the four images as OCI archives with no image
#                 pulled (tests/node/images.sh, which runs deploy/image.sh;
#                 root) and `kind load image-archive` them into that cluster
#   KEEP=1        keep everything afterwards
#
# Not run by CI (the development machines have no cluster): CI runs the same
# scenario on the test control plane's real node, with the same archives.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
export IMAGE=${IMAGE:-divert:$VERSION}
export APP_IMAGE=${APP_IMAGE:-divert-e2e/app:1}
export CLIENT_IMAGE=${CLIENT_IMAGE:-divert-e2e/client:1}
export INGRESS_IMAGE=${INGRESS_IMAGE:-divert-e2e/ingress:1}

command -v kubectl >/dev/null || fail "kubectl is not installed"
kubectl version >/dev/null 2>&1 || fail "kubectl cannot reach a cluster (check the current context)"

if [[ -n ${KIND_CLUSTER:-} ]]; then
    bash tests/node/images.sh target/node-images
    for archive in divert app client ingress; do
        kind load image-archive "target/node-images/$archive.oci.tar" --name "$KIND_CLUSTER"
    done
fi

# `divert install` and `divert check` run from this machine.
cargo build -p divert-cli
DIVERT_E2E_CONTEXT=1 cargo test -p divert-tests --test cluster -- --nocapture
