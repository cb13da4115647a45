#!/usr/bin/env bash
# Builds every image the end-to-end scenario runs, as OCI archives, with no
# image pulled: the real node of the test cluster imports them into its
# containerd, and `kind load image-archive` takes the same files.
#
#   bash tests/node/images.sh [OUTDIR]      (root; OUTDIR defaults to
#                                            target/node-images)
#
#   divert.oci.tar   divert:<version>, by deploy/image.sh: the image users get
#   pause.oci.tar    divert-e2e/pause:1, every pod sandbox's (tests/node/pause,
#                    static Go), FROM scratch
#   app.oci.tar      divert-e2e/app:1, the Movies app (movieapp, static musl),
#                    FROM scratch, user 65532
#   ingress.oci.tar  divert-e2e/ingress:1, the ingress controller stand-in
#                    (ingress-standin, static musl) with nginx-light from
#                    Debian's packages
#   client.oci.tar   divert-e2e/client:1, the scenario's client: curl and
#                    python3 from Debian's packages, grpcio and grpcio-tools
#                    from PyPI (tests/python/requirements.txt), the gRPC
#                    client and the protos it compiles under /e2e
#
# Each is assembled FROM scratch with buildah, in storage of its own removed
# at the end, as deploy/image.sh does; Debian's packages are unpacked with
# `mmdebstrap --variant=extract`. SKIP_BUILD=1 uses the musl binaries already
# in target/. Installs buildah, mmdebstrap and musl-tools when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "images.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap and buildah write root file systems)"
TARGET=x86_64-unknown-linux-musl
SUITE=${SUITE:-bookworm}
OUT=${1:-target/node-images}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

missing=()
for tool in mmdebstrap buildah musl-gcc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "images.sh: installing what provides: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap buildah musl-tools >/dev/null
fi

# Divert's own, by the recipe users run (which builds its binaries).
bash deploy/image.sh "$OUT/divert.oci.tar" >/dev/null

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --locked --release --target "$TARGET" \
    -p divert-tests --bin movieapp --bin ingress-standin
fi
bin=target/$TARGET/release

work=$(mktemp -d /tmp/divert-e2e-images.XXXXXX)
b() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
cleanup() { b rm -a >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

# rootfs NAME [DEB...]: a fresh tree for image NAME, with Debian's DEBs (and
# what they depend on) unpacked into it, their documentation left out.
rootfs() {
  local dir=$work/$1
  shift
  if [ $# -gt 0 ]; then
    mmdebstrap --quiet --variant=extract --include="$(IFS=,; echo "$*")" --mode=root \
      --format=directory "$SUITE" "$dir"
    rm -rf "$dir/var/cache/apt" "$dir/var/lib/apt" "$dir/usr/share/doc" \
      "$dir/usr/share/man" "$dir/usr/share/locale" "$dir/usr/share/lintian"
  fi
  mkdir -p "$dir/usr/local/bin" "$dir/tmp" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/etc" "$dir/run"
  chmod 1777 "$dir/tmp"
}

# commit NAME REF UID:GID ENTRYPOINT-JSON: the tree of NAME as image REF.
commit() {
  local name=$1 ref=$2 user=$3 entrypoint=$4
  local c
  c=$(b from --quiet scratch)
  b copy --quiet "$c" "$work/$name" / >/dev/null
  b config --entrypoint "$entrypoint" --user "$user" \
    --env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$c"
  rm -f "$OUT/$name.oci.tar"
  b commit --quiet --format oci --rm "$c" "oci-archive:$OUT/$name.oci.tar:$ref" >/dev/null
  echo "images.sh: $OUT/$name.oci.tar ($ref, $(du -h "$OUT/$name.oci.tar" | cut -f1))"
}

static() {
  readelf -l "$1" | grep -q 'program interpreter' && die "$1 is not static"
  install -s -m 0755 "$1" "$2"
}

rootfs pause
CGO_ENABLED=0 go -C tests/node build -trimpath -ldflags "-s -w" -o "$work/pause/pause" ./pause
commit pause divert-e2e/pause:1 65535:65535 '["/pause"]'

rootfs app
static "$bin/movieapp" "$work/app/usr/local/bin/movieapp"
commit app divert-e2e/app:1 65532:65532 '["/usr/local/bin/movieapp"]'

rootfs ingress nginx-light
static "$bin/ingress-standin" "$work/ingress/usr/local/bin/ingress-standin"
# nginx writes its temporary files and pid under these, and its workers
# run as nobody, which it looks up by name.
mkdir -p "$work/ingress/var/lib/nginx" "$work/ingress/var/log/nginx"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' \
  >"$work/ingress/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/ingress/etc/group"
commit ingress divert-e2e/ingress:1 0:0 '["/usr/local/bin/ingress-standin"]'

rootfs client python3 curl ca-certificates coreutils dash libstdc++6
python3 -m pip install -q --disable-pip-version-check --no-compile \
  --target "$work/client/usr/local/lib/python3.11/dist-packages" \
  --only-binary=:all: --implementation cp --python-version 3.11 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -r tests/python/requirements.txt
mkdir -p "$work/client/e2e/tests" "$work/client/e2e/proto"
cp -r tests/python "$work/client/e2e/tests/python"
cp -r proto/proto "$work/client/e2e/proto/proto"
commit client divert-e2e/client:1 100:101 '["sleep", "infinity"]'
