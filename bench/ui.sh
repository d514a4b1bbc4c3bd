#!/usr/bin/env bash
# bench/ui.sh - the dashboard on a large fleet: how long its pages take on the server
# with 100,000 hosts and 1,000,000 findings in the store, and what ten browser sessions
# refreshing it cost the agents' ingest. Run `bench/ui.sh --help`; results go to
# docs/performance.md.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
Usage: bench/ui.sh [--help]

  1. A fresh collector (`init`) on SQLite, or on a new PostgreSQL database with
     STORE=postgres, is filled through its store (driftwatch-loadgen fill):
     HOSTS hosts with FINDINGS file findings each (the same paths on every host),
     and the host fill-big with BIG findings.
  2. The collector serves; a session signs in at /ui/login (curl, cookie jar).
  3. Each page is requested REQUESTS+1 times over one kept-alive connection
     (curl, one process); the first answer (connection set-up) is dropped, and the
     p50 / p95 of the others are reported: the fleet page (target <= 100 ms p95),
     a hosts page of 100 rows, unfiltered and by state (<= 100 ms), the host page
     of fill-big (<= 150 ms; it shows the first 200 of its findings, most severe
     first, and pages the rest), and the drift page (no target).
  4. Ingest under load: driftwatch-loadgen sends the mixed scenario at INGEST_RATE
     requests/s over LOADGEN_HOSTS hosts (mutual TLS) for INGEST_SECS, once alone
     and once while SESSIONS sessions each load the fleet page and fill-big's page
     every 5 s (a new TLS connection each, as a cold browser would); the ingest
     p50 / p99 of both runs side by side (target: p99 rises <= 10 %).

Environment
  HOSTS=100000 FINDINGS=10 BIG=1000 REQUESTS=50
  UNCACHED=10                the fleet page again, 5.2 s apart: each computes its summary
  STORE=sqlite|postgres      (or DATABASE=) postgres: a database of its own is made and
                             dropped under DRIFTWATCH_TEST_POSTGRES (an admin URL) when
                             set, else in a private cluster (.ci/postgres.sh, fsync on)
                             started and deleted by the script
  INGEST_RATE=200 INGEST_SECS=60 LOADGEN_HOSTS=2000 SESSIONS=10
  SKIP_INGEST=1              only the page timings
  SKIP_BUILD=1               use target/release as it is
  PROFILE=debug              smoke-test the script with the debug binaries (figures meaningless)
  OUT=FILE                   the report (default bench/results/ui-DATE.txt)
EOF_USAGE
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=${HOSTS:-100000}
UNCACHED=${UNCACHED:-10}
FINDINGS=${FINDINGS:-10}
BIG=${BIG:-1000}
REQUESTS=${REQUESTS:-50}
DATABASE=${DATABASE:-${STORE:-sqlite}}
[[ $DATABASE == sqlite || $DATABASE == postgres ]] || { echo "ui.sh: STORE is sqlite or postgres, not $DATABASE" >&2; exit 2; }
INGEST_RATE=${INGEST_RATE:-200}
INGEST_SECS=${INGEST_SECS:-60}
LOADGEN_HOSTS=${LOADGEN_HOSTS:-2000}
SESSIONS=${SESSIONS:-10}
if [[ -z "${OUT:-}" ]]; then
  OUT=$REPO_ROOT/bench/results/ui-$DATABASE-$(date +%F-%H%M).txt
fi
log() { echo "ui.sh: $*" >&2; }
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

TMP=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-ui-bench.XXXXXX")
DIR=$TMP/collector
PID=
BG=()
DB_NAME=
PG_DIR=
cleanup() {
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [[ -n $PG_DIR ]]; then
    "$REPO_ROOT/.ci/postgres.sh" stop "$PG_DIR" || true
  elif [[ -n $DB_NAME ]]; then
    psql -q "$DRIFTWATCH_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS $DB_NAME" || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$COLLECTOR" init "$DIR" --listen "127.0.0.1:$PORT" >/dev/null
# Filled hosts announce a day-long heartbeat interval: none turns silent during the run.
if [[ $DATABASE == postgres ]]; then
  command -v psql >/dev/null || die "psql not found (apt-get install postgresql)"
  if [[ -z ${DRIFTWATCH_TEST_POSTGRES:-} ]]; then
    log "starting a private PostgreSQL cluster…"
    eval "$(POSTGRES_FSYNC=on "$REPO_ROOT/.ci/postgres.sh" start)"
    PG_DIR=$DRIFTWATCH_TEST_POSTGRES_DIR
  fi
  DB_NAME=driftwatch_ui_bench_$$
  psql -q "$DRIFTWATCH_TEST_POSTGRES" -c "CREATE DATABASE $DB_NAME"
  url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' \
    "$DRIFTWATCH_TEST_POSTGRES" "$DB_NAME")
  sed -i "s|^database = .*|database = \"$url\"|" "$DIR/collector.toml"
fi
log "filling the store: $HOSTS hosts x $FINDINGS findings, fill-big with $BIG…"
fill=$("$LOADGEN" fill --config "$DIR/collector.toml" --hosts "$HOSTS" --findings "$FINDINGS" --big-host-findings "$BIG")
log "$fill"

"$COLLECTOR" serve --config "$DIR/collector.toml" >>"$TMP/collector.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  curl -sf --cacert "$DIR/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 "$PID" 2>/dev/null || { tail "$TMP/collector.log" >&2; die "the collector did not start"; }
  sleep 0.1
done
BASE=https://127.0.0.1:$PORT
JAR=$TMP/cookies
curl -sf --cacert "$DIR/ca.pem" -c "$JAR" -o /dev/null --data-urlencode "token@$DIR/operator.token" "$BASE/ui/login" \
  || die "cannot sign in"

# page LABEL PATH TARGET_MS: REQUESTS+1 requests over one connection; the first dropped.
page() {
  local label=$1 path=$2 target=$3 args=()
  for _ in $(seq $((REQUESTS + 1))); do args+=(-o /dev/null "$BASE$path"); done
  curl -s --cacert "$DIR/ca.pem" -b "$JAR" -w '%{http_code} %{time_total} %{size_download}\n' "${args[@]}" >"$TMP/page.txt"
  awk 'NR > 1 && $1 != 200 {bad++} END {if (bad) {print "non-200 answers: " bad; exit 1}}' "$TMP/page.txt" \
    || die "$label: $(head -c 300 "$TMP/page.txt")"
  tail -n +2 "$TMP/page.txt" | sort -k2 -n | awk -v l="$label" -v t="$target" -v p="$path" '
    {v[NR] = $2; size = $3}
    END {m = int(NR * 0.5); if (m < 1) m = 1; q = int(NR * 0.95 + 0.999); if (q > NR) q = NR
         printf "  %-22s p50 %6.1f ms  p95 %6.1f ms  (%d requests, %d KiB; target %s)  %s\n",
                l, v[m] * 1000, v[q] * 1000, NR, size / 1024, t, p}'
}

# The fleet page's summary is computed at most once per 5 s and shared by every session:
# UNCACHED requests 5.2 s apart each compute it (the server's time: from the end of the
# TLS handshake to the first byte of the answer).
fleet_uncached() {
  local i
  for i in $(seq "$UNCACHED"); do
    sleep 5.2
    curl -s --cacert "$DIR/ca.pem" -b "$JAR" -o /dev/null \
      -w '%{http_code} %{time_appconnect} %{time_starttransfer}\n' "$BASE/ui/"
  done >"$TMP/uncached.txt"
  awk '$1 != 200 {bad++} END {exit bad ? 1 : 0}' "$TMP/uncached.txt" \
    || die "fleet, uncached: $(head -c 300 "$TMP/uncached.txt")"
  awk '{print $3 - $2}' "$TMP/uncached.txt" | sort -n | awk '{v[NR] = $1}
    END {printf "  %-22s p50 %6.1f ms  max %6.1f ms  (%d requests 5.2 s apart, each computing the summary; target <= 100 ms)  /ui/\n",
                "fleet, uncached", v[int((NR + 1) / 2)] * 1000, v[NR] * 1000, NR}'
}

mkdir -p "$(dirname "$OUT")"
{
  echo "# bench/ui.sh, $(date -u +%FT%TZ)"
  echo "# HOSTS=$HOSTS FINDINGS=$FINDINGS BIG=$BIG REQUESTS=$REQUESTS DATABASE=$DATABASE"
  echo "# $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); $PROFILE build"
  echo "# $fill"
  echo "# load before: $(cat /proc/loadavg)"
  echo
  echo "## pages (server-side, one kept-alive connection)"
  page "fleet" "/ui/" "<= 100 ms"
  fleet_uncached
  page "hosts, 100 rows" "/ui/hosts" "<= 100 ms"
  page "hosts, drifted" "/ui/hosts?state=drifted" "<= 100 ms"
  page "host, 1000 findings" "/ui/hosts/fill-big" "<= 150 ms"
  page "drift" "/ui/drift" "none"
  echo "# load after pages: $(cat /proc/loadavg)"
} >"$OUT.tmp"

# ingest LABEL: one open-loop run; prints its latency line.
ingest() {
  "$LOADGEN" run --collector "$DIR" --hosts "$LOADGEN_HOSTS" --scenario mixed --rate "$INGEST_RATE" \
    --duration-secs "$INGEST_SECS" --collector-pid "$PID" --threads 1 >"$TMP/$1.txt" 2>>"$TMP/loadgen.err" \
    || { tail "$TMP/loadgen.err" >&2; die "the load generator failed ($1)"; }
  echo "  $1:"
  grep -E '^  (requests|latency|errors)' "$TMP/$1.txt" | sed 's/^/  /' || true
}
if [[ "${SKIP_INGEST:-0}" != 1 ]]; then
  log "issuing $LOADGEN_HOSTS host certificates…"
  "$LOADGEN" certs --collector "$DIR" --hosts "$LOADGEN_HOSTS" >&2
  {
    echo
    echo "## ingest, mixed scenario at $INGEST_RATE requests/s for $INGEST_SECS s over $LOADGEN_HOSTS hosts"
    ingest alone
    for s in $(seq "$SESSIONS"); do
      (sleep "$(awk -v s="$s" -v n="$SESSIONS" 'BEGIN{print 5 * s / n}')"
       while :; do
         curl -s --cacert "$DIR/ca.pem" -b "$JAR" -o /dev/null -o /dev/null "$BASE/ui/" "$BASE/ui/hosts/fill-big" || true
         sleep 5
       done) &
      BG+=($!)
    done
    ingest "with $SESSIONS sessions refreshing every 5 s"
    echo "# load after ingest: $(cat /proc/loadavg)"
  } >>"$OUT.tmp"
fi
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "report: $OUT"
