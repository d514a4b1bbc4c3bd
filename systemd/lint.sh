#!/usr/bin/env bash
# Lints the unit files with systemd's own tools (systemd need not be PID 1):
# `systemd-analyze verify` must print nothing at all (unknown keys are only warnings
# there), and `systemd-analyze security` prints the hardening exposure.
# The units name /usr/bin/driftwatch, which a build machine does not have: the checked
# copies name the built binary instead, and nothing else changes.
# Usage: systemd/lint.sh PATH-TO-driftwatch-BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:?usage: systemd/lint.sh PATH-TO-driftwatch-BINARY}")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for unit in systemd/*.service; do
  name=$(basename "$unit")
  sed "s|/usr/bin/driftwatch|$binary|g" "$unit" >"$scratch/$name"
  out=$(systemd-analyze verify "$scratch/$name" 2>&1) || true
  if [ -n "$out" ]; then
    echo "systemd-analyze verify $name:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$name: $(systemd-analyze security --offline=yes "$scratch/$name" 2>&1 | tail -n 1)"
done
