#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, two at a time, at the
# lowest CPU priority, and prints executions per target. See docs/reliability.md.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]
#   FUZZ_JOBS=N      targets run at once (default 2)
#   FUZZ_RECORD=1    append each run's figures to fuzz/runs.tsv (the campaign log)
#   FUZZ_NO_BUILD=1  use the binaries already built
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET) and a working corpus
# kept in fuzz/work/TARGET (not committed), so runs build on each other. A crash, hang
# (over 10 s on one input) or out-of-memory (over 2 GiB) leaves its input in
# fuzz/artifacts/TARGET/ and makes this script exit 1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
jobs=${FUZZ_JOBS:-2}
triple=x86_64-unknown-linux-gnu
# Safe Rust: the sanitizer adds nothing that overflow checks and debug assertions (both
# on) do not catch here, and halves the executions. --codegen-units keeps builds short.
build_flags=(-s none --codegen-units 16)

if [ "${FUZZ_NO_BUILD:-}" != 1 ]; then
  # cargo-fuzz has no --locked: refuse a Cargo.lock that the build would change.
  cargo +nightly metadata --locked --format-version 1 >/dev/null
  cargo +nightly fuzz build "${build_flags[@]}" "$@"
fi
if [ $# -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
else
  targets=("$@")
fi

mkdir -p logs
run_one() {
  local target=$1 log=logs/$1.log
  mkdir -p "work/$target" "artifacts/$target"
  local marker=logs/$target.started
  touch "$marker"
  # Fork mode with the ignore flags: a finding does not end the run, so every target
  # gets its full time and every distinct finding is kept.
  local status=0
  nice -n 19 "target/$triple/release/$target" \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
    -artifact_prefix="artifacts/$target/" \
    "work/$target" "corpus/$target" >"$log" 2>&1 || status=$?
  # The parent reports "#EXECS: cov: ..." after each job; the last one is the total.
  local execs
  execs=$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$log" | tail -n 1)
  local found
  found=$(find "artifacts/$target" -type f -newer "$marker" | wc -l)
  local verdict=ok
  if [ "$found" -gt 0 ] || [ "$status" -ne 0 ]; then
    verdict="FAILED ($found new in fuzz/artifacts/$target/, exit $status, log fuzz/$log)"
    status=1
  fi
  printf '%-20s %6ss %12s execs  %s\n' "$target" "$seconds" "${execs:-?}" "$verdict"
  if [ "${FUZZ_RECORD:-}" = 1 ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$target" "$seconds" "${execs:-?}" \
      "$verdict" >>runs.tsv
  fi
  return "$status"
}

failed=0
pids=()
for target in "${targets[@]}"; do
  run_one "$target" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
exit "$failed"
