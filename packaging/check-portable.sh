#!/usr/bin/env bash
# Proves that the packaged agent binary runs on an older distribution than the one it
# was built on: a Debian 11 (bullseye, glibc 2.31) minbase root made with mmdebstrap,
# entered with chroot. In it, the static binary
#   1. prints its version;
#   2. bakes a signed baseline of that root and checks it: clean (exit 0);
#   3. finds drift (a new executable, exit 1);
#   4. reports it with `check --report` to a collector on this machine's loopback,
#      addressed by a host NAME that only /etc/hosts knows — once with the stock
#      `hosts: files dns`, once with a loadable NSS module first in line
#      (`hosts: myhostname files dns`, libnss-myhostname installed), the case where a
#      static glibc tries to dlopen the host's NSS modules — and the collector shows
#      the finding;
# and, when the agent .deb is given (or found in target/packages/), the package
#   5. installs with dpkg (enabled, not started, no baseline made), bakes with
#      driftwatch-bake (dash), checks clean against the pipeline key, and purges
#      without leftovers;
#   6. (the .rpm, when found and rpm is installed) installs and erases cleanly with
#      rpm --root in a copy of the same root.
# The chroot shares this machine's network, so the collector on 127.0.0.1 is reachable.
#
# Usage (as root): packaging/check-portable.sh [AGENT-BINARY [COLLECTOR-BINARY [AGENT-DEB]]]
#   AGENT-BINARY      default target/x86_64-unknown-linux-gnu/release/driftwatch
#                     (packaging/build.sh builds it)
#   COLLECTOR-BINARY  default target/release/driftwatch-collector, else target/debug/…
#   AGENT-DEB         default target/packages/driftwatch_*_amd64.deb if present
#   SUITE=bullseye    another Debian suite to try (environment)
# The root is cached as target/portable-cache/SUITE-minbase.tar (about 60 s to make,
# 2 s to reuse); delete it to rebuild. Prints "skipping: …" and exits 0 without root or
# mmdebstrap; exits 1 on any failure, naming the step; prints "portable: …" at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

skip() {
  echo "skipping: $*"
  exit 0
}
fail() {
  echo "check-portable: FAILED: $*" >&2
  exit 1
}
step() { echo "== $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root (chroot, mmdebstrap)"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (apt-get install mmdebstrap)"
command -v chroot >/dev/null || skip "chroot is not available"

suite=${SUITE:-bullseye}
agent=$(realpath "${1:-target/x86_64-unknown-linux-gnu/release/driftwatch}")
collector=${2:-}
if [ -z "$collector" ]; then
  for c in target/release/driftwatch-collector target/debug/driftwatch-collector; do
    if [ -x "$c" ]; then
      collector=$c
      break
    fi
  done
fi
[ -x "$agent" ] || fail "no agent binary $agent (run packaging/build.sh agent-deb)"
if [ -z "$collector" ] || [ ! -x "$collector" ]; then
  fail "no collector binary (cargo build -p driftwatch-collector)"
fi
collector=$(realpath "$collector")
deb=${3:-}
if [ -z "$deb" ] && [ -d target/packages ]; then
  deb=$(find target/packages -maxdepth 1 -name 'driftwatch_*_amd64.deb' | sort | tail -n 1)
fi
[ -z "$deb" ] || deb=$(realpath "$deb")

step "the binary"
file "$agent" | sed 's/^[^:]*: //'
# Static: no program interpreter, no shared library needed.
if readelf -lW "$agent" | grep -q 'program interpreter' || readelf -dW "$agent" | grep -q NEEDED; then
  fail "$agent is dynamically linked: $(ldd "$agent" | tr '\n' ' ')"
fi

# The root, made once and cached.
cache_dir=$repo/target/portable-cache
mkdir -p "$cache_dir"
tarball=$cache_dir/$suite-minbase.tar
exec 9>"$tarball.lock"
flock 9
if [ ! -s "$tarball" ]; then
  mirror=$(packaging/mirror.sh)
  step "making a $suite minbase root from $mirror (cached as $tarball)"
  mmdebstrap --quiet --format=tar --variant=minbase --include=libnss-myhostname \
    "$suite" "$tarball.tmp" "$mirror" || fail "mmdebstrap $suite"
  mv "$tarball.tmp" "$tarball"
fi
flock -u 9

work=$(mktemp -d "$cache_dir/run.XXXXXX")
root=$work/root
serve_pid=''
cleanup() {
  if [ -n "$serve_pid" ]; then
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if mountpoint -q "$root/proc" 2>/dev/null; then
    umount "$root/proc"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
# Every real host has these; a minbase root made without netbase may not.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.0.1\tcollector.portable.test\n' >"$root/etc/hosts"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
libc=$(in_root /usr/bin/ldd --version | sed -n 1p)
[ -e "$root/etc/nsswitch.conf" ] || echo "hosts: files dns" >"$root/etc/nsswitch.conf"
echo "root: $suite, $libc; nsswitch $(grep '^hosts:' "$root/etc/nsswitch.conf" | tr -s ' ')"

step "1. driftwatch --version"
install -m 0755 "$agent" "$root/usr/bin/driftwatch"
version=$(in_root driftwatch --version) || fail "driftwatch --version"
echo "$version"

step "2. baseline create --root / and check: clean"
in_root mkdir -p /root/keys
in_root driftwatch key generate --private /root/keys/pipeline.key --public /root/keys/pipeline.pub
in_root env SOURCE_DATE_EPOCH=1700000000 driftwatch baseline create --root / \
  --image-id "portable-$suite" --sign-key /root/keys/pipeline.key \
  --out /var/tmp/portable.baseline || fail "baseline create"
# Runtime state in a chroot is the outer machine's: --no-runtime.
set +e
in_root driftwatch check --baseline /var/tmp/portable.baseline \
  --pubkey /root/keys/pipeline.pub --no-runtime
status=$?
set -e
[ "$status" -eq 0 ] || fail "check of an unchanged root: exit $status, expected 0"

step "3. drift: a new executable"
cp "$root/bin/true" "$root/usr/local/bin/x"
set +e
in_root driftwatch check --baseline /var/tmp/portable.baseline --no-runtime --format json \
  >"$work/report.json"
status=$?
set -e
[ "$status" -eq 1 ] || fail "check after drift: exit $status, expected 1"
grep -q '"/usr/local/bin/x"' "$work/report.json" || fail "the report does not name /usr/local/bin/x"
echo "exit 1, /usr/local/bin/x reported"

step "4. check --report to a collector named collector.portable.test"
port=$((20000 + RANDOM % 20000))
"$collector" init "$work/collector" --listen "127.0.0.1:$port" \
  --name collector.portable.test --name localhost --name 127.0.0.1 >/dev/null
# The baseline above is signed with this script's own pipeline key: trust it.
sed -i "s|^trusted_keys = .*|trusted_keys = [\"$root/root/keys/pipeline.pub\"]|" \
  "$work/collector/collector.toml"
"$collector" serve --config "$work/collector/collector.toml" 2>"$work/collector.log" &
serve_pid=$!
up=false
for _ in $(seq 1 100); do
  if "$collector" image list --config "$work/collector/collector.toml" >/dev/null 2>&1; then
    up=true
    break
  fi
  sleep 0.1
done
$up || fail "the collector did not start: $(cat "$work/collector.log")"
"$collector" image register --config "$work/collector/collector.toml" \
  --image-id "portable-$suite" --baseline "$root/var/tmp/portable.baseline" >/dev/null
cp "$work/collector/ca.pem" "$root/root/collector-ca.pem"
cp "$work/collector/enrollment.token" "$root/root/enroll.token"
stock_hosts=$(sed -n 's/^hosts:[[:space:]]*//p' "$root/etc/nsswitch.conf")
cp -p "$root/etc/nsswitch.conf" "$work/nsswitch.conf"
report() { # HOST-ID COLLECTOR-NAME NSSWITCH-HOSTS → sets $status; stderr in $work/report-ID.err
  if [ "$3" != "$stock_hosts" ]; then
    sed -i "s/^hosts:.*/hosts: $3/" "$root/etc/nsswitch.conf"
  fi
  cat >"$root/root/report.toml" <<EOF
state_dir = "/root/state-$1"
[collector]
url = "https://$2:$port"
ca_file = "/root/collector-ca.pem"
enrollment_token_file = "/root/enroll.token"
host_id = "$1"
timeout_secs = 2
EOF
  set +e
  in_root driftwatch check --baseline /var/tmp/portable.baseline --no-runtime \
    --report --config /root/report.toml >/dev/null 2>"$work/report-$1.err"
  status=$?
  set -e
  echo "hosts: $3, $2 -> exit $status: $(grep -v '^packaging/' "$work/report-$1.err" | tail -n 1)"
}
# a. The name is in /etc/hosts, the stock order (with libnss-myhostname: the RHEL 8/9
#    order too): `files` answers before any module is loaded. Delivered: exit 1 (drift).
report "portable-$suite" collector.portable.test "$stock_hosts"
[ "$status" -eq 1 ] || fail "check --report: exit $status, expected 1 (drift, delivered): $(cat "$work/report-portable-$suite.err")"
"$collector" host "portable-$suite" --config "$work/collector/collector.toml" --format json \
  >"$work/host.json" || fail "the collector does not know host portable-$suite"
grep -q '/usr/local/bin/x' "$work/host.json" || fail "the collector has no finding /usr/local/bin/x"
echo "   the collector holds the finding /usr/local/bin/x for portable-$suite"
# b. A name /etc/hosts does not know (found by DNS on a real host), with a loadable NSS
#    module before `dns` (Fedora's order; Debian/Ubuntu with libnss-resolve or mdns are
#    alike): the lookup reaches the module. There is no DNS server here (resolv.conf
#    names 127.0.0.1, where nothing answers), so the right outcome is a clear "not
#    delivered", exit 2; a crash (exit 134, SIGABRT) is the static-glibc NSS problem.
rm -f "$root/etc/resolv.conf"
echo "nameserver 127.0.0.1" >"$root/etc/resolv.conf"
report "portable-$suite-nss" collector-by-dns.portable.test "files myhostname dns"
nss_status=$status
cp -p "$work/nsswitch.conf" "$root/etc/nsswitch.conf"
if [ "$nss_status" -eq 2 ]; then
  echo "   a name not in /etc/hosts behind an NSS module: a clear error, no crash"
  nss_result=ok
else
  echo "   a name not in /etc/hosts behind an NSS module: exit $nss_status (expected 2)" >&2
  nss_result="the agent dies (exit $nss_status) resolving a name that is not in /etc/hosts when nsswitch.conf puts a loadable module (myhostname, resolve, mdns…) before dns: static glibc cannot load the host's NSS modules ($(grep -v '^packaging/' "$work/report-portable-$suite-nss.err" | tail -n 1))"
fi
kill "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
serve_pid=''

if [ -n "$deb" ]; then
  step "5. the package: $(basename "$deb")"
  rm -f "$root/usr/bin/driftwatch" "$root/usr/local/bin/x"
  cp "$deb" "$root/tmp/driftwatch.deb"
  in_root dpkg -i /tmp/driftwatch.deb >/dev/null || fail "dpkg -i"
  [ -L "$root/etc/systemd/system/multi-user.target.wants/driftwatch.service" ] ||
    fail "the unit is not enabled after dpkg -i"
  [ ! -e "$root/usr/lib/driftwatch/baseline" ] || fail "installing made a baseline"
  in_root driftwatch-bake --image-id "portable-$suite-deb" --sign-key /root/keys/pipeline.key \
    >/dev/null || fail "driftwatch-bake"
  grep -q '^pubkey = "/etc/driftwatch/pipeline.pub"' "$root/etc/driftwatch/agent.toml" ||
    fail "driftwatch-bake did not set pubkey"
  set +e
  in_root driftwatch check --pubkey /etc/driftwatch/pipeline.pub --no-runtime >/dev/null
  status=$?
  set -e
  [ "$status" -eq 0 ] || fail "check of the freshly baked root: exit $status, expected 0"
  in_root dpkg --purge driftwatch >/dev/null || fail "dpkg --purge"
  for gone in /usr/bin/driftwatch /usr/sbin/driftwatch-bake /var/lib/driftwatch \
    /etc/systemd/system/multi-user.target.wants/driftwatch.service; do
    if [ -e "$root$gone" ] || [ -L "$root$gone" ]; then
      fail "$gone is left after purge"
    fi
  done
  echo "installed enabled (not started, no baseline), baked with driftwatch-bake, clean, purged"
else
  step "5. the package: skipped (no target/packages/driftwatch_*_amd64.deb; run packaging/build.sh agent-deb)"
fi

rpm_file=''
if [ -d target/packages ]; then
  rpm_file=$(find target/packages -maxdepth 1 -name 'driftwatch-*.x86_64.rpm' | sort | tail -n 1)
fi
if [ -n "$rpm_file" ] && command -v rpm >/dev/null; then
  step "6. the .rpm's files and scriptlets: $(basename "$rpm_file") (rpm --root, Debian's rpm)"
  # Not a RHEL root: this checks what rpm does with the package (files, %post,
  # %preun, %postun under /bin/sh), not RHEL itself.
  rpm_root=$work/rpm-root
  mkdir -p "$rpm_root"
  tar -C "$rpm_root" -xf "$tarball"
  rpm --root "$rpm_root" --initdb
  rpm --root "$rpm_root" -i --nodeps "$rpm_file" 2>/dev/null || fail "rpm -i"
  [ "$(chroot "$rpm_root" /usr/bin/driftwatch --version)" = "$version" ] || fail "driftwatch from the .rpm"
  [ ! -e "$rpm_root/usr/lib/driftwatch/baseline" ] || fail "installing the .rpm made a baseline"
  mkdir -p "$rpm_root/var/lib/driftwatch" "$rpm_root/run/driftwatch"
  rpm --root "$rpm_root" -e driftwatch 2>/dev/null || fail "rpm -e"
  for gone in /usr/bin/driftwatch /var/lib/driftwatch /run/driftwatch; do
    if [ -e "$rpm_root$gone" ]; then
      fail "$gone is left after rpm -e"
    fi
  done
  echo "installed (no baseline made), erased without leftovers"
fi

if [ "$nss_result" != ok ]; then
  echo "check-portable: FAILED: $nss_result" >&2
  echo "not portable yet: everything else passed on $suite ($libc)" >&2
  exit 1
fi
echo "portable: $version runs on $suite ($libc): baseline, check, drift, check --report by host name (files, and behind an NSS module)$([ -n "$deb" ] && echo ", the .deb")$([ -n "$rpm_file" ] && echo ", the .rpm")"
