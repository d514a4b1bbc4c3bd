#!/usr/bin/env bash
# bench/hostile.sh - one hostile host must not cost the others: their ingest p99 with a
# host flooding distinct findings at its rate limit, against the same load without it.
# Run `bench/hostile.sh --help`; results go to docs/performance.md.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
Usage: bench/hostile.sh [--help]

One collector (SQLite) with its default ingest bounds (10 requests/s per host, burst
20, 10,000 stored findings per host), the load generator's real mutual TLS:

  1. quiet:   HOSTS hosts send RATE requests/s (mixed: PERCENT % with 10 findings)
              for DURATION s, alone;
  2. hostile: the same load, and beside it one more host sending batches of 999
              distinct findings and a heartbeat (1,000 events, the batch maximum) at
              its rate limit (10 batches/s), for DURATION s;
  3. quiet again (the database is larger by then: brackets step 2).

Reported: the other hosts' ingest p99 in each step, and the hostile step's p99 against
the larger of the two quiet ones (target: within 20 %), the hostile host's answers
(accepted, 429), and the findings it got stored (bounded by max_findings_per_host).

Environment
  HOSTS=2000       the other hosts
  RATE=500         their requests per second
  PERCENT=20       the share of their requests with 10 findings
  DURATION=60      seconds of each step
  SKIP_BUILD=1     use target/release as it is
  OUT=FILE         the report (default bench/results/hostile-DATE.txt)
EOF_USAGE
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=${HOSTS:-2000}
RATE=${RATE:-500}
PERCENT=${PERCENT:-20}
DURATION=${DURATION:-60}
if [[ -z "${OUT:-}" ]]; then
  OUT=$REPO_ROOT/bench/results/hostile-$(date +%F).txt
  [[ -e $OUT ]] && OUT=$REPO_ROOT/bench/results/hostile-$(date +%F-%H%M).txt
fi
log() { echo "hostile.sh: $*" >&2; }
die() { log "$*"; exit 2; }
for t in cargo curl awk python3; do command -v "$t" >/dev/null || die "'$t' not found"; done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries…"
  cargo build --release --locked -p driftwatch-collector -p driftwatch-loadgen >&2
fi
COLLECTOR=$REPO_ROOT/target/release/driftwatch-collector
LOADGEN=$REPO_ROOT/target/release/driftwatch-loadgen
[[ -x $COLLECTOR && -x $LOADGEN ]] || die "build first (cargo build --release)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-hostile-bench.XXXXXX")
DIR=$TMP/collector
PID=
cleanup() {
  [[ -n $PID ]] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$COLLECTOR" init "$DIR" --listen "127.0.0.1:$PORT" >/dev/null
"$COLLECTOR" serve --config "$DIR/collector.toml" >>"$TMP/collector.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -sf --cacert "$DIR/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 "$PID" 2>/dev/null || { tail "$TMP/collector.log" >&2; die "the collector did not start"; }
  sleep 0.1
done
"$LOADGEN" certs --collector "$DIR" --hosts "$HOSTS" >&2
"$LOADGEN" certs --collector "$DIR" --hosts 1 --host-prefix hostile- >&2

# others LABEL: the other hosts' load for DURATION s; its loadgen output in TMP/LABEL.
others() {
  "$LOADGEN" run --collector "$DIR" --hosts "$HOSTS" --scenario mixed --rate "$RATE" \
    --findings-per-batch 10 --findings-percent "$PERCENT" --duration-secs "$DURATION" \
    --collector-pid "$PID" --threads 2 >"$TMP/$1" 2>>"$TMP/loadgen.err" \
    || { tail "$TMP/loadgen.err" >&2; die "the load generator failed in step $1"; }
}
p99() { awk '/^  latency/{for (i=1;i<=NF;i++) if ($i=="p99") {gsub(/,/,"",$(i+1)); print $(i+1)}}' "$TMP/$1"; }

mkdir -p "$(dirname "$OUT")"
{
  echo "# bench/hostile.sh, $(date -u +%FT%TZ)"
  echo "# HOSTS=$HOSTS RATE=$RATE PERCENT=$PERCENT DURATION=$DURATION; $(nproc) cores; loadavg at the start $(cat /proc/loadavg)"
  echo
} >"$OUT.tmp"
log "quiet: $RATE requests/s from $HOSTS hosts for $DURATION s"
others quiet
log "hostile: the same, and one host flooding findings at its rate limit"
"$LOADGEN" run --collector "$DIR" --hosts 1 --host-prefix hostile- --scenario findings \
  --findings-per-batch 999 --rate 9990 --duration-secs "$DURATION" --max-in-flight 100 \
  --threads 1 >"$TMP/flood" 2>>"$TMP/loadgen.err" &
FLOOD=$!
others hostile
wait "$FLOOD" || { tail "$TMP/loadgen.err" >&2; die "the hostile host's load generator failed"; }
log "quiet again"
others quiet2
stored=$(curl -s --cacert "$DIR/ca.pem" -H "Authorization: Bearer $(cat "$DIR/operator.token")" \
  "https://127.0.0.1:$PORT/v1/hosts/hostile-00000?limit=1" \
  | python3 -c 'import json,sys; h=json.load(sys.stdin)["host"]; print({k: v for k, v in h.items() if "finding" in k})' 2>/dev/null || echo "?")
{
  for step in quiet hostile quiet2; do
    echo "## $step: $(grep -m1 'mixed' "$TMP/$step" || true)"
    grep -E '^  (requests|events|latency|errors|collector)' "$TMP/$step" || true
    echo
  done
  echo "## the hostile host: $(grep -m1 'findings' "$TMP/flood" || true)"
  grep -E '^  (requests|events|latency|errors)' "$TMP/flood" || true
  echo "  its record: $stored"
  echo
  awk -v q="$(p99 quiet)" -v h="$(p99 hostile)" -v r="$(p99 quiet2)" 'BEGIN{
    base = (q > r) ? q : r
    printf "## others p99: quiet %.1f ms, hostile %.1f ms, quiet again %.1f ms: hostile / larger quiet = %.2f (target <= 1.20)\n", q, h, r, (base > 0) ? h / base : 0}'
  echo "# loadavg at the end $(cat /proc/loadavg)"
} >>"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "report: $OUT"
