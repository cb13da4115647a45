#!/usr/bin/env bash
# Builds Divert's container image without pulling any image: on a machine
# that reaches only the package registries (crates.io, Debian's archive).
#
#   bash deploy/image.sh [OUT]     (root; OUT defaults to
#                                   target/image/divert-<version>.oci.tar)
#
# What goes in, FROM scratch:
#   /usr/local/bin/divert        the controller and the CLI (the entrypoint)
#   /usr/local/bin/divert-proxy  what every injected pod runs (init, proxy)
#   iptables 1.8 with both backends and the libraries it needs, extracted
#   from Debian's packages by mmdebstrap (no shell, no package manager:
#   `divert-proxy init` calls iptables-{legacy,nft}-{save,restore} and
#   their ip6tables twins by name, so nothing else is needed).
# Both binaries are static musl builds, stripped.
#
# Out: an OCI archive (`podman load -i`, `ctr images import`, `kind load
# image-archive` take it) tagged divert:<version>, and beside it OUT.txt:
# its size, the Debian packages and versions in it, and every file.
#
# Knobs: SUITE=bookworm (Debian's), SKIP_BUILD=1 (use the musl binaries
# already in target/). Installs mmdebstrap, buildah and musl-tools with apt
# and the musl target with rustup when missing. Uses storage of its own
# under a temporary directory, removed at the end: the machine's container
# storage is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap and buildah write a root file system)"

TARGET=x86_64-unknown-linux-musl
SUITE=${SUITE:-bookworm}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]"
OUT=${1:-target/image/divert-$VERSION.oci.tar}
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")

missing=()
for tool in mmdebstrap buildah musl-gcc readelf; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "image.sh: installing what provides: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap buildah musl-tools binutils >/dev/null
fi

# --- the binaries ------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  cargo build --locked --release -p divert-cli -p divert-sidecar --target "$TARGET"
fi
work=$(mktemp -d /tmp/divert-image.XXXXXX)
cleanup() {
  buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs rm -a >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/bin"
for b in divert divert-proxy; do
  src="target/$TARGET/release/$b"
  [ -x "$src" ] || die "$src is missing: build it (cargo build --release --target $TARGET -p divert-cli -p divert-sidecar) or drop SKIP_BUILD"
  # Static: no program interpreter, so it runs in an image with no libc.
  if readelf -l "$src" | grep -q 'program interpreter'; then
    die "$src is dynamically linked; expected a static musl binary"
  fi
  install -s -m 0755 "$src" "$work/bin/$b"
done

# --- iptables from Debian's packages -----------------------------------------
# `extract` unpacks the packages (and what they depend on) without running
# their scripts; the .debs are kept to record their versions, then removed.
rootfs="$work/rootfs"
mmdebstrap --quiet --variant=extract --include=iptables --mode=root \
  --format=directory --skip=cleanup/apt/cache "$SUITE" "$rootfs"
packages=$(cd "$rootfs/var/cache/apt/archives" && ls ./*.deb | sed 's|^\./||; s|\.deb$||' | sort)
# What an image needs of a Debian tree: the programs and their libraries.
# The package lists, caches, documentation and manual pages are not.
rm -rf "$rootfs/var/cache/apt" "$rootfs/var/lib/apt" "$rootfs/var/log"/* \
  "$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/locale" \
  "$rootfs/usr/share/lintian" "$rootfs/etc/apt"
for tool in iptables-legacy-save iptables-legacy-restore iptables-nft-save iptables-nft-restore \
            ip6tables-legacy-save ip6tables-legacy-restore ip6tables-nft-save ip6tables-nft-restore; do
  [ -e "$rootfs/usr/sbin/$tool" ] || die "the iptables tree lacks $tool, which divert-proxy init runs"
done
# The lock iptables takes lives in /run, an emptyDir in every pod; the
# runtime mounts /proc, /sys and /dev over their empty folders.
mkdir -p "$rootfs/run" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
chmod 1777 "$rootfs/tmp"
mkdir -p "$rootfs/usr/local/bin"
install -m 0755 "$work/bin/divert" "$work/bin/divert-proxy" "$rootfs/usr/local/bin/"

# --- the image ---------------------------------------------------------------
b() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
c=$(b from --quiet scratch)
b copy --quiet "$c" "$rootfs" / >/dev/null
# The proxy's UID (iptables exempts it); the init container runs as root with
# only NET_ADMIN and NET_RAW, the controller as 2103 (divert install says so).
b config \
  --entrypoint '["/usr/local/bin/divert"]' --cmd '--help' --user 2102:2102 \
  --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --label org.opencontainers.image.title=divert \
  --label org.opencontainers.image.version="$VERSION" \
  --label org.opencontainers.image.description="Route each request by its baggage to a developer's copy of a service, or the shared one" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$c"
rm -f "$OUT"
b commit --quiet --format oci --rm "$c" "oci-archive:$OUT:divert:$VERSION" >/dev/null

# --- what is in it -----------------------------------------------------------
{
  echo "image: divert:$VERSION, $(du -b "$OUT" | cut -f1) bytes ($(du -h "$OUT" | cut -f1)), $(date -u +%FT%TZ)"
  echo "binaries (static musl, stripped):"
  for bin in divert divert-proxy; do
    echo "  /usr/local/bin/$bin $(stat -c %s "$work/bin/$bin") bytes"
  done
  echo "Debian $SUITE packages:"
  echo "$packages" | sed 's/^/  /'
  echo "files:"
  (cd "$rootfs" && find . -mindepth 1 -not -type d | sed 's|^\./|  /|' | sort)
} >"$OUT.txt"
echo "image.sh: wrote $OUT (divert:$VERSION, $(du -h "$OUT" | cut -f1)) and $OUT.txt"
