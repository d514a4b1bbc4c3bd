#!/usr/bin/env bash
# Builds driftwatch's packages from a clean checkout into target/packages/:
#   driftwatch_VERSION_amd64.deb            the agent (static binary: any x86_64 glibc)
#   driftwatch-VERSION-1.x86_64.rpm         the same agent for RPM systems
#   driftwatch-collector_VERSION_amd64.deb  the collector
# Usage: packaging/build.sh [all|agent-deb|agent-rpm|collector-deb]...   (default: all)
#
# The agent is linked statically against glibc (-C target-feature=+crt-static, with an
# explicit --target so the flag does not reach build scripts and proc-macros): it needs
# no library from the host. packaging/check-portable.sh runs it on Debian 11.
# Packages are staged as plain trees and packed with `dpkg-deb --build
# --root-owner-group` and `rpmbuild -bb`; man pages come from the binaries' --help
# (packaging/manpage.sh). Timestamps come from SOURCE_DATE_EPOCH (default: the last
# commit), so the same checkout gives the same packages. Missing tools (dpkg-dev, rpm)
# are installed with apt-get when running as root. Idempotent: every run restages from
# scratch; cargo rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# ---------------------------------------------------------------- arguments
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(all)
want_agent_deb=false want_agent_rpm=false want_collector_deb=false
for t in "${targets[@]}"; do
  case $t in
    all) want_agent_deb=true want_agent_rpm=true want_collector_deb=true ;;
    agent-deb) want_agent_deb=true ;;
    agent-rpm) want_agent_rpm=true ;;
    collector-deb) want_collector_deb=true ;;
    -h | --help)
      awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
      exit 0
      ;;
    *)
      echo "build.sh: unknown target '$t' (all, agent-deb, agent-rpm, collector-deb)" >&2
      exit 2
      ;;
  esac
done

log() { echo "build.sh: $*" >&2; }

# ---------------------------------------------------------------- tools
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v readelf >/dev/null || need+=(binutils)
command -v perl >/dev/null || need+=(perl)
if $want_agent_rpm; then
  command -v rpmbuild >/dev/null || need+=(rpm)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "missing ${need[*]} and cannot install them (needs root and apt-get)"
    exit 1
  fi
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------- metadata
version=$(cargo pkgid -p driftwatch-agent | sed 's/.*[#@]//')
collector_version=$(cargo pkgid -p driftwatch-collector | sed 's/.*[#@]//')
changelog_version=$(sed -n '1s/^driftwatch (\([^)]*\)).*/\1/p' packaging/files/changelog)
if [ "$changelog_version" != "$version" ] || [ "$collector_version" != "$version" ]; then
  log "versions disagree: agent $version, collector $collector_version, packaging/files/changelog $changelog_version"
  exit 1
fi
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH
maintainer=${DRIFTWATCH_MAINTAINER:-driftwatch maintainers <maintainers@driftwatch.invalid>}
triple=x86_64-unknown-linux-gnu

out=$repo/target/packages
build=$out/build
mkdir -p "$out"

# ---------------------------------------------------------------- binaries
agent_bin=$repo/target/$triple/release/driftwatch
collector_bin=$repo/target/release/driftwatch-collector
if $want_agent_deb || $want_agent_rpm; then
  log "building the static agent (cargo build --release --target $triple)"
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$triple" -p driftwatch-agent
  # Static means: no program interpreter and no shared library needed.
  if readelf -lW "$agent_bin" | grep -q 'program interpreter' ||
    readelf -dW "$agent_bin" | grep -q NEEDED; then
    log "$agent_bin is not static"
    exit 1
  fi
fi
if $want_collector_deb; then
  log "building the collector (cargo build --release)"
  cargo build --release --locked -p driftwatch-collector
fi

# ---------------------------------------------------------------- staging helpers
# Files are staged with explicit modes; owners are root in the packages whatever the
# builder is (dpkg-deb --root-owner-group, %attr/%defattr in the spec).
put() { # MODE SOURCE DEST-IN-TREE
  install -D -m "$1" "$2" "$3"
}
strip_into() { # SOURCE DEST: a stripped copy (debug info is not shipped)
  install -D -m 0755 "$1" "$2"
  strip --strip-unneeded --remove-section=.comment "$2"
}
man_into() { # PROGRAM SECTION DEST-DIR [DESCRIPTION] [EXTRA]
  local name
  name=$(basename "$1")
  mkdir -p "$3"
  packaging/manpage.sh "$1" "$2" "${4:-}" "${5:-}" >"$build/$name.$2"
  gzip -9n <"$build/$name.$2" >"$3/$name.$2.gz"
  chmod 0644 "$3/$name.$2.gz"
}
doc_into() { # PACKAGE DEST-DIR: copyright and changelog
  put 0644 packaging/files/copyright "$2/copyright"
  sed "s/^driftwatch (/$1 (/" packaging/files/changelog | gzip -9n >"$2/changelog.gz"
  chmod 0644 "$2/changelog.gz"
}
# Every mtime clamped to SOURCE_DATE_EPOCH: reproducible archives.
clamp() { find "$1" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +; }

# The agent's files, shared by the .deb and the .rpm.
stage_agent() { # TREE
  local tree=$1
  strip_into "$agent_bin" "$tree/usr/bin/driftwatch"
  put 0755 packaging/files/driftwatch-bake "$tree/usr/sbin/driftwatch-bake"
  put 0644 systemd/driftwatch.service "$tree/usr/lib/systemd/system/driftwatch.service"
  put 0644 packaging/files/agent.toml "$tree/etc/driftwatch/agent.toml"
  # The built-in policy as a file: what driftwatch-bake --exclude starts from, and the
  # reference for writing one's own. The agent itself uses the copy compiled in.
  put 0644 agent/policy/default.toml "$tree/usr/share/driftwatch/policy/default.toml"
  # Where the bake step puts the baseline; part of the package so that it is part of
  # the baseline too.
  install -d -m 0755 "$tree/usr/lib/driftwatch"
  man_into "$tree/usr/bin/driftwatch" 1 "$tree/usr/share/man/man1" "" packaging/files/driftwatch.1.extra
  man_into "$tree/usr/sbin/driftwatch-bake" 8 "$tree/usr/share/man/man8" \
    "bake a signed driftwatch baseline into a machine image" packaging/files/driftwatch-bake.8.extra
  doc_into driftwatch "$tree/usr/share/doc/driftwatch"
  put 0644 packaging/examples/agent.toml "$tree/usr/share/doc/driftwatch/examples/agent.toml"
  chmod -R u=rwX,go=rX "$tree/usr/share" "$tree/usr/lib" "$tree/etc"
}

md5sums() { # TREE: DEBIAN/md5sums of every regular file outside DEBIAN
  (cd "$1" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs -r md5sum) >"$1/DEBIAN/md5sums"
  chmod 0644 "$1/DEBIAN/md5sums"
}

installed_size() { # TREE: KiB, as dpkg counts it
  du -sk --apparent-size --exclude=DEBIAN "$1" | cut -f1
}

pack_deb() { # TREE FILE
  clamp "$1"
  dpkg-deb --root-owner-group -Zxz --build "$1" "$2" >/dev/null
  log "wrote $2"
}

# ---------------------------------------------------------------- agent .deb
if $want_agent_deb; then
  tree=$build/debian/driftwatch
  rm -rf "$tree"
  stage_agent "$tree"
  install -d -m 0755 "$tree/DEBIAN"
  for script in postinst prerm postrm; do
    put 0755 "packaging/debian/driftwatch/$script" "$tree/DEBIAN/$script"
  done
  echo /etc/driftwatch/agent.toml >"$tree/DEBIAN/conffiles"
  cat >"$tree/DEBIAN/control" <<EOF
Package: driftwatch
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(installed_size "$tree")
Section: admin
Priority: optional
Suggests: systemd
Description: drift detection for immutable infrastructure (agent)
 driftwatch records, when a machine image is built, a signed, deterministic
 baseline of the image's files and packages; on every host booted from the
 image, the driftwatch daemon compares the host with it at boot, in real time
 and on a schedule, reports to the driftwatch collector, and marks drifted
 hosts for replacement.
 .
 This package holds the driftwatch command (statically linked: it runs on any
 x86_64 Linux), its systemd unit (enabled, and skipped until the image is
 baked), the default configuration, and driftwatch-bake, the image bake step.
 Installing it never creates a baseline.
EOF
  chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/conffiles"
  md5sums "$tree"
  pack_deb "$tree" "$out/driftwatch_${version}_amd64.deb"
fi

# ---------------------------------------------------------------- agent .rpm
if $want_agent_rpm; then
  tree=$build/rpm/driftwatch
  rm -rf "$tree" "$build/rpmbuild"
  stage_agent "$tree"
  put 0644 packaging/files/80-driftwatch.preset \
    "$tree/usr/lib/systemd/system-preset/80-driftwatch.preset"
  clamp "$tree"
  mkdir -p "$build/rpmbuild"
  # Debian's rpm has no rpm database of its own: --nodeps, and the database path
  # pointed into the build directory so nothing on the machine is touched.
  rpmbuild -bb --quiet --nodeps \
    --define "_topdir $build/rpmbuild" \
    --define "_dbpath $build/rpmbuild/db" \
    --define "dw_version $version" \
    --define "dw_stage $tree" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "_buildhost driftwatch-build" \
    packaging/rpm/driftwatch.spec
  rpm_file=$build/rpmbuild/RPMS/x86_64/driftwatch-$version-1.x86_64.rpm
  [ -f "$rpm_file" ] || { log "rpmbuild did not make $rpm_file"; exit 1; }
  cp "$rpm_file" "$out/driftwatch-$version-1.x86_64.rpm"
  log "wrote $out/driftwatch-$version-1.x86_64.rpm"
fi

# ---------------------------------------------------------------- collector .deb
if $want_collector_deb; then
  tree=$build/debian/driftwatch-collector
  rm -rf "$tree"
  strip_into "$collector_bin" "$tree/usr/bin/driftwatch-collector"
  put 0644 systemd/driftwatch-collector.service \
    "$tree/usr/lib/systemd/system/driftwatch-collector.service"
  man_into "$tree/usr/bin/driftwatch-collector" 1 "$tree/usr/share/man/man1" "" \
    packaging/files/driftwatch-collector.1.extra
  doc_into driftwatch-collector "$tree/usr/share/doc/driftwatch-collector"
  put 0644 packaging/files/README.collector "$tree/usr/share/doc/driftwatch-collector/README.Debian"
  put 0644 packaging/examples/collector.toml \
    "$tree/usr/share/doc/driftwatch-collector/examples/collector.toml"
  # Replicas: a load balancer in front, and the PostgreSQL password as a credential.
  put 0644 packaging/examples/haproxy.cfg \
    "$tree/usr/share/doc/driftwatch-collector/examples/haproxy.cfg"
  put 0644 packaging/examples/driftwatch-collector-postgres.conf \
    "$tree/usr/share/doc/driftwatch-collector/examples/driftwatch-collector-postgres.conf"
  chmod -R u=rwX,go=rX "$tree/usr/share" "$tree/usr/lib"
  install -d -m 0755 "$tree/DEBIAN"
  for script in postinst prerm postrm; do
    put 0755 "packaging/debian/driftwatch-collector/$script" "$tree/DEBIAN/$script"
  done
  # The libraries it links (glibc, libgcc) as dpkg-shlibdeps computes them.
  printf 'Source: driftwatch\n\nPackage: driftwatch-collector\nArchitecture: amd64\n' \
    >"$build/debian/control"
  # (Its warning that the binary should be "installed in its package's directory" is
  # about debhelper's layout, which this is not; it changes nothing.)
  depends=$(cd "$build" &&
    dpkg-shlibdeps -O -e debian/driftwatch-collector/usr/bin/driftwatch-collector \
      2> >(grep -v "should already be installed in their package's directory" >&2) |
    sed -n 's/^shlibs:Depends=//p')
  [ -n "$depends" ] || { log "dpkg-shlibdeps found no dependencies"; exit 1; }
  cat >"$tree/DEBIAN/control" <<EOF
Package: driftwatch-collector
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $(installed_size "$tree")
Depends: $depends, adduser | passwd
Section: admin
Priority: optional
Description: drift detection for immutable infrastructure (collector)
 The driftwatch collector is where a fleet's drift comes together: agents
 report over mutual TLS; it checks every host against the baseline registered
 for its image, marks drifted hosts for replacement within a budget per image,
 tells them (their health check turns 503), runs a command, and sends grouped
 alerts to webhooks. Operator CLI, API and metrics included.
 .
 The service runs as the system user driftwatch-collector, hardened, and
 starts once /etc/driftwatch-collector/collector.toml exists; the package never
 makes a CA or tokens by itself (see README.Debian).
EOF
  chmod 0644 "$tree/DEBIAN/control"
  md5sums "$tree"
  pack_deb "$tree" "$out/driftwatch-collector_${version}_amd64.deb"
fi

echo "Packages in $out:"
find "$out" -maxdepth 1 -type f \( -name '*.deb' -o -name '*.rpm' \) -printf '  %f (%s bytes)\n' | sort
