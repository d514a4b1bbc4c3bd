#!/usr/bin/env bash
# bench/fleet.sh - the collector at fleet scale: a registered fleet heartbeating and
# drifting at once, for minutes, with an operator paging through hosts meanwhile.
# Run `bench/fleet.sh --help`; results go to docs/performance.md.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
Usage: bench/fleet.sh [--help]

One collector (SQLite, the first-try setup) under the load of a fleet, with the
load generator's real mutual TLS (one certificate and connection per host):

  1. HOSTS hosts register (one heartbeat each, as a booting fleet does);
  2. for DURATION s, open loop: every host heartbeats every 60 s (HOSTS/60 per s)
     and FINDINGS_RATE findings/s arrive in batches of 10 (with their heartbeat),
     at SCALE of that load (1 = full; the run repeats at HALF=0.5 unless HALF=0);
  3. meanwhile an operator lists a page of 100 hosts (GET /v1/hosts?limit=100)
     PAGE_RATE times a second, each over a new TLS connection, as the CLI does;
  4. the collector's RSS is read from /proc every second.

Reported, per load: throughput in the first and last minute (flat: last >= 90 %
of first), ingest p99 (target <= 100 ms at full load, <= 50 ms at half), the
hosts page p99 (<= 50 ms), peak RSS (<= 300 MB), and hosts per core (collector
CPU time over the run).

Environment
  HOSTS=100000       registered hosts
  DURATION=600       seconds of each measured load (smoke test: DURATION=60 HOSTS=10000)
  FINDINGS_RATE=5000 findings per second at full load
  HALF=0.5           the second load's share (0: only the full load)
  PAGE_RATE=5        hosts-page requests per second
  SKIP_BUILD=1       use target/release as it is
  PROFILE=debug      smoke-test the script with the debug binaries (figures meaningless)
  OUT=FILE           the report (default bench/results/fleet-DATE.txt)

PostgreSQL and replicas: not measured by this script yet (the collector's
PostgreSQL store is needed); docs/performance.md says what was measured.
EOF_USAGE
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=${HOSTS:-100000}
DURATION=${DURATION:-600}
FINDINGS_RATE=${FINDINGS_RATE:-5000}
HALF=${HALF:-0.5}
PAGE_RATE=${PAGE_RATE:-5}
if [[ -z "${OUT:-}" ]]; then
  OUT=$REPO_ROOT/bench/results/fleet-$(date +%F).txt
  [[ -e $OUT ]] && OUT=$REPO_ROOT/bench/results/fleet-$(date +%F-%H%M).txt
fi
log() { echo "fleet.sh: $*" >&2; }
die() { log "$*"; exit 2; }
for t in cargo curl awk python3; do command -v "$t" >/dev/null || die "'$t' not found"; done

PROFILE=${PROFILE:-release}
if [[ "${SKIP_BUILD:-0}" != 1 && $PROFILE == release ]]; then
  log "building release binaries…"
  cargo build --release --locked -p driftwatch-collector -p driftwatch-loadgen >&2
fi
COLLECTOR=$REPO_ROOT/target/$PROFILE/driftwatch-collector
LOADGEN=$REPO_ROOT/target/$PROFILE/driftwatch-loadgen
[[ -x $COLLECTOR && -x $LOADGEN ]] || die "build first (cargo build --release)"
want_fds=$((HOSTS + 4096))
if (($(ulimit -n) < want_fds)); then
  ulimit -n "$want_fds" 2>/dev/null || die "cannot raise the open-file limit to $want_fds"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-fleet-bench.XXXXXX")
DIR=$TMP/collector
PID=
BG=()
cleanup() {
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$COLLECTOR" init "$DIR" --listen "127.0.0.1:$PORT" >/dev/null
# Hosts heartbeat every 60 s: silence after 3 missed ones, never inside the run.
printf '\n[hosts]\nmissed_heartbeats = 3\n' >>"$DIR/collector.toml"
"$COLLECTOR" serve --config "$DIR/collector.toml" >>"$TMP/collector.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -sf --cacert "$DIR/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 "$PID" 2>/dev/null || { tail "$TMP/collector.log" >&2; die "the collector did not start"; }
  sleep 0.1
done
TOKEN=$(cat "$DIR/operator.token")

log "issuing $HOSTS host certificates…"
"$LOADGEN" certs --collector "$DIR" --hosts "$HOSTS" >&2
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)

# measure LABEL SHARE: one open-loop run at SHARE of the full load, with the page
# poller and the RSS sampler beside it; appends its lines to the report.
measure() {
  local label=$1 share=$2
  local hb_rate findings_req_rate rate percent
  hb_rate=$(awk -v h="$HOSTS" -v s="$share" 'BEGIN{print h / 60 * s}')
  findings_req_rate=$(awk -v f="$FINDINGS_RATE" -v s="$share" 'BEGIN{print f / 10 * s}')
  # Findings ride in batches with their heartbeat, as the agent sends them.
  rate=$(awk -v a="$hb_rate" -v b="$findings_req_rate" 'BEGIN{printf "%.1f", a + b}')
  percent=$(awk -v a="$hb_rate" -v b="$findings_req_rate" 'BEGIN{printf "%d", b / (a + b) * 100 + 0.5}')
  local pages=$TMP/$label-pages.txt rss=$TMP/$label-rss.txt text=$TMP/$label-loadgen.txt
  : >"$pages"; : >"$rss"
  (while :; do
     curl -s -o /dev/null -w '%{time_total}\n' --cacert "$DIR/ca.pem" \
       -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/v1/hosts?limit=100" >>"$pages" || true
     sleep "$(awk -v r="$PAGE_RATE" 'BEGIN{print 1 / r}')"
   done) &
  BG+=($!)
  local poller=$!
  (while :; do awk '/^VmRSS/{print $2}' "/proc/$PID/status" >>"$rss"; sleep 1; done) &
  BG+=($!)
  local sampler=$!
  local t0 t1
  t0=$(cpu_ticks)
  log "$label: $rate requests/s ($percent % with 10 findings) for $DURATION s over $HOSTS hosts"
  "$LOADGEN" run --collector "$DIR" --hosts "$HOSTS" --scenario mixed --rate "$rate" \
    --findings-per-batch 10 --findings-percent "$percent" --interval-secs 60 \
    --duration-secs "$DURATION" --collector-pid "$PID" --timeline --threads 2 >"$text" 2>>"$TMP/loadgen.err" \
    || echo "(loadgen failed: exit $?)" >>"$text"
  t1=$(cpu_ticks)
  kill "$poller" "$sampler" 2>/dev/null || true
  wait "$poller" "$sampler" 2>/dev/null || true
  {
    echo "## $label: $(grep -m1 'mixed' "$text" || true)"
    grep -E '^  (requests|events|by thirds|latency|errors|collector)' "$text" || true
    awk '/^ +[0-9]+: /{n++; c[n]=$2} END{
           if (n < 120) {print "  minutes     run too short for first/last minute"; exit}
           for (i=1;i<=60;i++) f+=c[i]; for (i=n-59;i<=n;i++) l+=c[i];
           printf "  minutes     first %d, last %d requests acknowledged: last/first %.1f %% (target >= 90 %%)\n", f, l, l/f*100}' "$text"
    sort -n "$pages" | awk '{v[NR]=$1} END{if (NR==0) {print "  hosts page  no answers"; exit}
           i=int(NR*0.99); if (i<1) i=1; m=int(NR*0.5); if (m<1) m=1
           printf "  hosts page  %d requests of 100 rows: p50 %.1f ms, p99 %.1f ms (target <= 50 ms; includes the TLS handshake)\n", NR, v[m]*1000, v[i]*1000}'
    sort -n "$rss" | awk '{m=$1} END{printf "  rss         peak %.0f MiB (target <= 300 MB)\n", m/1024}'
    awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v d="$DURATION" -v h="$HOSTS" -v s="$share" 'BEGIN{
           cores=(b-a)/hz/d; per=0; if (cores>0) per=h*s/cores
           printf "  cpu         collector %.2f cores: %.0f hosts per core at this load\n", cores, per}'
    echo
  } >>"$OUT.tmp"
}

mkdir -p "$(dirname "$OUT")"
{
  echo "# bench/fleet.sh, $(date -u +%FT%TZ)"
  echo "# HOSTS=$HOSTS DURATION=$DURATION FINDINGS_RATE=$FINDINGS_RATE HALF=$HALF PAGE_RATE=$PAGE_RATE"
  echo "# $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); $PROFILE build; collector on SQLite"
  echo
} >"$OUT.tmp"
log "registering $HOSTS hosts…"
"$LOADGEN" register --collector "$DIR" --hosts "$HOSTS" --interval-secs 60 --collector-pid "$PID" \
  | sed 's/^/# register: /' >>"$OUT.tmp"
echo >>"$OUT.tmp"
measure full 1
if [[ $HALF != 0 ]]; then measure half "$HALF"; fi
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "report: $OUT"
