#!/usr/bin/env bash
# Builds a Debian image root with driftwatch installed and baked, with mmdebstrap:
#   1. a stock cloud image root: minbase with systemd, a kernel with its modules and
#      initramfs, cloud-init, sshd, time sync, unattended upgrades, sudo (the base;
#      reused from --cache when given; --bare for systemd and dbus only);
#   2. the driftwatch .deb installed in it with dpkg, in chroot (the unit gets
#      enabled, nothing starts, no baseline is made);
#   3. the bake step, LAST, from outside the image: the image's own driftwatch-bake
#      with --root, so the signing key never enters the image;
#   4. a check of the result against its baseline: it must be clean (exit 0).
# The result is a directory: boot it with systemd-nspawn, tar it, or make a disk image
# (`mkfs.ext4 -d DIR image.raw`). Tested: packaging/README.md says how and with what.
#
# Usage (as root):
#   packaging/bake/mmdebstrap.sh --deb driftwatch_VERSION_amd64.deb --image-id ID \
#       --sign-key pipeline.key --out DIR [--suite bookworm] [--mirror URL]
#       [--include PKG,PKG] [--bare] [--cache FILE.tar] [-- DRIFTWATCH-BAKE-OPTIONS...]
#   --mirror   default: the mirror this machine's apt uses (packaging/mirror.sh)
#   --include  more packages for the image (default: none beyond the cloud image's)
#   --bare     only systemd and dbus (no kernel, no cloud-init): a container image
#   --cache    reuse this tarball as the base of step 1, making it the first time
#   after --    passed to driftwatch-bake, e.g. --register URL --operator-token-file F
#               --collector-ca F, or --exclude /etc/driftwatch/agent.toml
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

die() {
  echo "mmdebstrap.sh: $*" >&2
  exit 1
}

deb='' image_id='' sign_key='' out='' suite=bookworm mirror='' include='' cache=''
cloud=linux-image-cloud-amd64,initramfs-tools,cloud-init,openssh-server,systemd-timesyncd,unattended-upgrades,sudo
while [ $# -gt 0 ]; do
  if [ "$1" = --bare ]; then
    cloud=''
    shift
    continue
  fi
  case $1 in
    --deb | --image-id | --sign-key | --out | --suite | --mirror | --include | --cache)
      [ $# -ge 2 ] || die "$1 needs a value"
      ;;
  esac
  case $1 in
    --deb) deb=$2 ;;
    --image-id) image_id=$2 ;;
    --sign-key) sign_key=$2 ;;
    --out) out=$2 ;;
    --suite) suite=$2 ;;
    --mirror) mirror=$2 ;;
    --include) include=$2 ;;
    --cache) cache=$2 ;;
    --) shift; break ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift 2
done
if [ -z "$deb" ] || [ -z "$image_id" ] || [ -z "$sign_key" ] || [ -z "$out" ]; then
  die "--deb, --image-id, --sign-key and --out are required (see --help)"
fi
[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap in root mode, chroot)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
[ -r "$deb" ] || die "cannot read $deb"
[ -r "$sign_key" ] || die "cannot read $sign_key"
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  die "$out exists and is not empty"
fi
deb=$(realpath "$deb")
sign_key=$(realpath "$sign_key")
[ -n "$mirror" ] || mirror=$("$here/../mirror.sh")
packages=systemd,systemd-sysv,dbus${cloud:+,$cloud}${include:+,$include}

# 1. The base.
mkdir -p "$out"
out=$(realpath "$out")
if [ -n "$cache" ]; then
  mkdir -p "$(dirname "$cache")"
  exec 9>"$cache.lock"
  flock 9
  if [ ! -s "$cache" ]; then
    echo "mmdebstrap.sh: making the $suite base ($packages) from $mirror, cached as $cache"
    mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" \
      --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
      "$suite" "$cache.tmp" "$mirror"
    mv "$cache.tmp" "$cache"
  fi
  flock -u 9
  tar -C "$out" -xf "$cache"
else
  echo "mmdebstrap.sh: making the $suite base ($packages) from $mirror"
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    "$suite" "$out" "$mirror"
fi

# 2. The package. dpkg in chroot, like an image build's provisioner: no systemd runs
#    there, so the unit is enabled and not started.
cp "$deb" "$out/tmp/driftwatch.deb"
chroot "$out" dpkg -i /tmp/driftwatch.deb
rm -f "$out/tmp/driftwatch.deb"
[ -L "$out/etc/systemd/system/multi-user.target.wants/driftwatch.service" ] ||
  die "driftwatch.service is not enabled in the image"
[ ! -e "$out/usr/lib/driftwatch/baseline" ] || die "installing the package made a baseline"

# 3. The bake step, last: nothing in the image changes after it.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)} \
  sh "$out/usr/sbin/driftwatch-bake" --root "$out" --image-id "$image_id" \
  --sign-key "$sign_key" "$@"

# 4. The image as baked is clean against its own baseline.
if ! "$out/usr/bin/driftwatch" check --root "$out" \
  --pubkey "$out/etc/driftwatch/pipeline.pub" >"$out.check.txt" 2>&1; then
  cat "$out.check.txt" >&2
  die "the baked image is not clean against its own baseline"
fi
rm -f "$out.check.txt"
echo "mmdebstrap.sh: $out: $suite with driftwatch, baked as image $image_id, clean."
