#!/usr/bin/env bash
# Divert end to end on a real Kubernetes cluster (kind, k3d or any other).
#
# NOT run by CI: the development machines have no cluster. Keep it correct by
# review. What it does:
#   1. installs Divert (`divert install | kubectl apply -f -`) and waits for the
#      controller;
#   2. deploys the Movies example (deploy/examples) into `staging` and `alice`
#      and waits for it; every pod must carry the injected `divert-proxy`;
#   3. from a curl pod in `staging` (injected too), checks that a request to
#      `frontend` reaches staging's copy without baggage and alice's copy with
#      `baggage: okteto-divert=alice`, and that an unknown key is ignored;
#   4. runs `divert check`.
# Everything it created is deleted at the end unless KEEP=1.
#
# Usage: bash tests/cluster-e2e.sh
# Environment:
#   DIVERT        the divert binary           (default: target/release/divert, built if missing)
#   IMAGE         the image pods run          (default: divert:<version>)
#   KIND_CLUSTER  if set, `kind load docker-image $IMAGE --name $KIND_CLUSTER` first
#                 (build the image with: docker build -f deploy/Dockerfile -t $IMAGE .)
#   KEEP=1        keep everything afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

DIVERT=${DIVERT:-target/release/divert}
if [[ ! -x $DIVERT ]]; then
    cargo build --release -p divert-cli
fi
VERSION=$("$DIVERT" --version | awk '{print $2}')
IMAGE=${IMAGE:-divert:$VERSION}
KEEP=${KEEP:-0}
TIMEOUT=180s

say() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

command -v kubectl >/dev/null || fail "kubectl is not installed"
kubectl version >/dev/null 2>&1 || fail "kubectl cannot reach a cluster (check the current context)"

cleanup() {
    if [[ $KEEP == 1 ]]; then
        say "KEEP=1: leaving everything in place"
        return
    fi
    say "cleaning up"
    kubectl delete namespace alice staging --ignore-not-found --wait=false || true
    "$DIVERT" install --image "$IMAGE" | kubectl delete --ignore-not-found -f - || true
}
trap cleanup EXIT

if [[ -n ${KIND_CLUSTER:-} ]]; then
    say "loading $IMAGE into kind cluster $KIND_CLUSTER"
    kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"
fi

say "installing Divert ($IMAGE)"
"$DIVERT" install --image "$IMAGE" | kubectl apply -f -
kubectl -n divert rollout status deployment/divert-controller --timeout="$TIMEOUT"

say "deploying the Movies example"
kubectl apply -f deploy/examples/movies-staging.yaml
kubectl apply -f deploy/examples/movies-alice.yaml
for d in frontend api catalog rent; do
    kubectl -n staging rollout status "deployment/$d" --timeout="$TIMEOUT"
done
kubectl -n alice rollout status deployment/frontend --timeout="$TIMEOUT"

say "every pod has the proxy"
for ns in staging alice; do
    for pod in $(kubectl -n "$ns" get pods -o name); do
        containers=$(kubectl -n "$ns" get "$pod" -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}')
        [[ " $containers " == *" divert-proxy "* ]] || fail "$ns/$pod has no divert-proxy (containers: $containers)"
    done
done

say "a client pod in staging"
kubectl -n staging run curl --image=curlimages/curl:8.10.1 --restart=Never --command -- sleep 3600
kubectl -n staging wait --for=condition=Ready pod/curl --timeout="$TIMEOUT"

ask() { # ask BAGGAGE -> body of GET http://frontend:8080/
    local header=()
    [[ -n $1 ]] && header=(-H "baggage: $1")
    kubectl -n staging exec curl -c curl -- curl -sS --max-time 10 "${header[@]}" http://frontend:8080/
}
expect() { # expect BAGGAGE WANT
    local got
    got=$(ask "$1" | tr -d '\r\n')
    [[ $got == "$2" ]] || fail "baggage '${1:-<none>}': got '$got', want '$2'"
    printf 'baggage %-28s -> %s\n' "'${1:-<none>}'" "$got"
}
expect "" "frontend@staging"
expect "okteto-divert=alice" "frontend@alice"
expect "okteto-divert=nobody" "frontend@staging"
expect "team=movies, okteto-divert=alice;ttl=60" "frontend@alice"

say "divert check"
"$DIVERT" check

say "PASS"
