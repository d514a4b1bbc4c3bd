#!/usr/bin/env bash
# Lints the unit files with systemd's own tools (systemd need not be PID 1):
# `systemd-analyze verify` must print nothing at all (unknown keys are only warnings
# there), and `systemd-analyze security` prints the hardening exposure, which must stay
# at or below the ceiling set here for each unit (a hardening line lost by accident
# fails the lint; raise a ceiling only on purpose, saying why).
# The units name /usr/bin/driftwatch and /usr/bin/driftwatch-collector, which a build
# machine does not have: the checked copies name the built binaries instead, and
# nothing else changes. Documentation= man pages are not looked up (they come with the
# packages, not the build).
# Usage: systemd/lint.sh PATH-TO-driftwatch [PATH-TO-driftwatch-collector]
#        (the collector defaults to driftwatch-collector beside driftwatch)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:?usage: systemd/lint.sh PATH-TO-driftwatch [PATH-TO-driftwatch-collector]}")
collector=$(realpath "${2:-$(dirname "$binary")/driftwatch-collector}")
for exe in "$binary" "$collector"; do
  if [ ! -x "$exe" ]; then
    echo "lint: $exe is not an executable (build the workspace first)" >&2
    exit 1
  fi
done

# Exposure ceilings (`systemd-analyze security`, 0 = best, 10 = worst).
ceiling() {
  case "$1" in
    # root with read-all capabilities, any IP; no PrivateTmp/PrivateDevices/
    # ProtectKernelModules/ProtectHostname: they would hide what the policy covers.
    driftwatch.service) echo 2.9 ;;
    driftwatch-collector.service) echo 1.1 ;; # unprivileged user, no capabilities
    *) echo 10 ;;
  esac
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for unit in systemd/*.service; do
  name=$(basename "$unit")
  sed -e "s|/usr/bin/driftwatch-collector\b|$collector|g" \
      -e "s|/usr/bin/driftwatch\b|$binary|g" "$unit" >"$scratch/$name"
  out=$(systemd-analyze verify --man=no "$scratch/$name" 2>&1) || true
  if [ -n "$out" ]; then
    echo "systemd-analyze verify $name:" >&2
    echo "$out" >&2
    exit 1
  fi
  summary=$(systemd-analyze security --offline=yes "$scratch/$name" 2>&1 | tail -n 1)
  echo "$name: $summary"
  exposure=$(sed -n 's/.*exposure level for .*: \([0-9.]*\).*/\1/p' <<<"$summary")
  max=$(ceiling "$name")
  if [ -z "$exposure" ] || ! awk -v e="$exposure" -v m="$max" 'BEGIN { exit !(e <= m) }'; then
    echo "lint: $name exposure ${exposure:-unknown} is above its ceiling $max" >&2
    exit 1
  fi
done
