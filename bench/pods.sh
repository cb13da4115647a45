# What the benchmarks whose pods are network namespaces (soak.sh,
# inbound.sh) share: root and the tools the pods need, the musl target, and
# a copy of the proxy the image ships. Needs procs.sh's log and die.

MUSL=x86_64-unknown-linux-musl

# Root, and ip, iptables (legacy, as the pods use) and setpriv: installed
# when missing.
pod_tools() {
    [[ $(id -u) == 0 ]] || die "this benchmark needs root (network namespaces and iptables)"
    local need=()
    command -v ip >/dev/null || need+=(iproute2)
    command -v iptables-legacy-restore >/dev/null || need+=(iptables)
    command -v setpriv >/dev/null || need+=(util-linux)
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# The static musl target the image's sidecar is built for.
musl_target() {
    if ! rustup target list --installed | grep -qx "$MUSL"; then
        log "installing the $MUSL target: rustup target add $MUSL"
        rustup target add "$MUSL"
    fi
    # ring (rustls: the proxy verifies the controller) compiles C for musl.
    if ! command -v x86_64-linux-musl-gcc >/dev/null; then
        log "installing musl-tools (musl-gcc, for ring's C): apt-get install musl-tools"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
    fi
}

# Copies the built musl proxy into directory $1, stripped as the image's is
# and executable by the proxy's own user; prints the copy's path.
image_proxy() {
    local dir=$1 built=$ROOT/target/$MUSL/release/divert-proxy
    [[ -x $built ]] || die "missing $built (cargo build --release -p divert-sidecar --target $MUSL)"
    mkdir -p "$dir"
    cp "$built" "$dir/divert-proxy"
    strip "$dir/divert-proxy"
    chmod 755 "$dir" "$dir/divert-proxy"
    echo "$dir/divert-proxy"
}
