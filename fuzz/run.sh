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
  local status=0
  nice -n 19 "target/$triple/release/$target" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
    "work/$target" "corpus/$target" >"$log" 2>&1 || status=$?
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  local verdict=ok
  [ "$status" -eq 0 ] || verdict="FAILED (exit $status, see fuzz/$log and fuzz/artifacts/$target/)"
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
