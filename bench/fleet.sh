#!/usr/bin/env bash
# bench/fleet.sh - the collector at fleet scale: a registered fleet heartbeating and
# drifting at once, for minutes, with an operator paging through hosts meanwhile.
# Run `bench/fleet.sh --help`; results go to docs/performance.md.
set -euo pipefail

usage() {
  cat <<'EOF_USAGE'
Usage: bench/fleet.sh [--help]

The collector under the load of a fleet, side by side in one run, in each of
TOPOLOGIES: `sqlite` (one collector on its SQLite file, the first-try setup) and
`replicas` (REPLICAS collectors on one PostgreSQL database behind haproxy in TCP
mode, so mutual TLS ends at a collector). The same CA, server certificate and host
certificates serve both; each topology starts from an empty database. The load
generator's mutual TLS is real (one certificate and connection per host):

  1. HOSTS hosts register (one heartbeat each, as a booting fleet does);
  2. for DURATION s, open loop: every host heartbeats every 60 s (HOSTS/60 per s)
     and FINDINGS_RATE findings/s arrive in batches of 10 (with their heartbeat),
     at SCALE of that load (1 = full; the run repeats at HALF=0.5 unless HALF=0);
  3. meanwhile an operator lists a page of 100 hosts (GET /v1/hosts?limit=100)
     PAGE_RATE times a second, each over a new TLS connection, as the CLI does;
  4. the collector's RSS is read from /proc every second.

Reported, per load: throughput in the first and last minute (flat: last >= 90 %
of first), ingest p99 (target <= 100 ms at full load, <= 50 ms at half), the
hosts page p99 (<= 50 ms), peak RSS per collector process (<= 300 MB), and hosts
per core (collectors' CPU time over the run; with replicas also counting
PostgreSQL's).

Environment
  HOSTS=100000       registered hosts
  DURATION=600       seconds of each measured load (smoke test: DURATION=60 HOSTS=10000)
  FINDINGS_RATE=5000 findings per second at full load
  HALF=0.5           the second load's share (0: only the full load)
  PAGE_RATE=5        hosts-page requests per second
  TOPOLOGIES="sqlite replicas"  what is measured, in this order
  REPLICAS=2         collectors behind haproxy in `replicas`
  SKIP_BUILD=1       use target/release as it is
  PROFILE=debug      smoke-test the script with the debug binaries (figures meaningless)
  OUT=FILE           the report (default bench/results/fleet-DATE.txt)

`replicas` starts a private PostgreSQL cluster (.ci/postgres.sh, with fsync on,
as durable as the SQLite collector's synchronous=FULL) and needs haproxy.
EOF_USAGE
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOSTS=${HOSTS:-100000}
DURATION=${DURATION:-600}
FINDINGS_RATE=${FINDINGS_RATE:-5000}
HALF=${HALF:-0.5}
PAGE_RATE=${PAGE_RATE:-5}
TOPOLOGIES=${TOPOLOGIES:-sqlite replicas}
REPLICAS=${REPLICAS:-2}
if [[ -z "${OUT:-}" ]]; then
  OUT=$REPO_ROOT/bench/results/fleet-$(date +%F).txt
  [[ -e $OUT ]] && OUT=$REPO_ROOT/bench/results/fleet-$(date +%F-%H%M).txt
fi
log() { echo "fleet.sh: $*" >&2; }
die() { log "$*"; exit 2; }
for t in cargo curl awk python3; do command -v "$t" >/dev/null || die "'$t' not found"; done
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
if [[ " $TOPOLOGIES " == *" replicas "* ]]; then
  [[ -x $HAPROXY ]] || die "haproxy not found (apt-get install haproxy)"
  command -v psql >/dev/null || die "psql not found (apt-get install postgresql)"
fi

PROFILE=${PROFILE:-release}
if [[ "${SKIP_BUILD:-0}" != 1 && $PROFILE == release ]]; then
  log "building release binaries…"
  cargo build --release --locked -p driftwatch-collector -p driftwatch-loadgen >&2
fi
COLLECTOR=$REPO_ROOT/target/$PROFILE/driftwatch-collector
LOADGEN=$REPO_ROOT/target/$PROFILE/driftwatch-loadgen
[[ -x $COLLECTOR && -x $LOADGEN ]] || die "build first (cargo build --release)"
# One descriptor per open host connection (agents let go after 5 s idle, so about
# rate x 5 s are open at once), twice over through haproxy: as many as the hard limit
# allows, and haproxy's connection cap fits in them.
want_fds=$((2 * HOSTS + 8192))
hard_fds=$(ulimit -Hn)
[[ $hard_fds != unlimited ]] && ((hard_fds < want_fds)) && want_fds=$hard_fds
ulimit -n "$want_fds" 2>/dev/null || die "cannot raise the open-file limit to $want_fds"
HAPROXY_MAXCONN=$(((want_fds - 1024) / 2))

TMP=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-fleet-bench.XXXXXX")
DIR=$TMP/collector
PIDS=()     # the collector processes of the topology being measured
HAPROXY_PID=
PG_DIR=
BG=()
stop_collectors() {
  for p in "${PIDS[@]}" $HAPROXY_PID; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}" $HAPROXY_PID; do wait "$p" 2>/dev/null || true; done
  PIDS=(); HAPROXY_PID=
}
cleanup() {
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_collectors
  [[ -n $PG_DIR ]] && "$REPO_ROOT/.ci/postgres.sh" stop "$PG_DIR"
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
"$COLLECTOR" init "$DIR" --listen "127.0.0.1:$PORT" >/dev/null
# Hosts heartbeat every 60 s: silence after 3 missed ones, never inside the run.
printf '\n[hosts]\nmissed_heartbeats = 3\n' >>"$DIR/collector.toml"
TOKEN=$(cat "$DIR/operator.token")

# serve CONFIG LOG PORT: one collector process, added to PIDS once it answers.
serve() {
  "$COLLECTOR" serve --config "$1" >>"$2" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf --cacert "$DIR/ca.pem" "https://127.0.0.1:$3/healthz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { tail "$2" >&2; die "the collector did not start"; }
    sleep 0.1
  done
  PIDS+=("$pid")
}

start_sqlite() {
  serve "$DIR/collector.toml" "$TMP/sqlite.log" "$PORT"
}

# REPLICAS collectors on one fresh PostgreSQL database, haproxy on PORT in front of
# them (the port the load generator and the hosts page reach, as with one collector).
start_replicas() {
  if [[ -z $PG_DIR ]]; then
    eval "$(POSTGRES_FSYNC=on "$REPO_ROOT/.ci/postgres.sh" start)"
    PG_DIR=$DRIFTWATCH_TEST_POSTGRES_DIR
    PG_ADMIN=$DRIFTWATCH_TEST_POSTGRES
  fi
  psql -q "$PG_ADMIN" -c "CREATE DATABASE driftwatch_bench" >&2
  local url=${PG_ADMIN%/postgres}/driftwatch_bench?sslmode=disable
  local cfg=$TMP/haproxy.cfg i port
  cat >"$cfg" <<EOF_HAPROXY
global
  maxconn $HAPROXY_MAXCONN
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend collectors
  bind 127.0.0.1:$PORT
  default_backend replicas
backend replicas
  balance roundrobin
EOF_HAPROXY
  for ((i = 0; i < REPLICAS; i++)); do
    port=$(free_port)
    sed -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
        -e "s|^database = .*|database = \"$url\"|" "$DIR/collector.toml" >"$DIR/replica-$i.toml"
    grep -q "127.0.0.1:$port" "$DIR/replica-$i.toml" || die "no listen line in collector.toml"
    # One at a time: the first creates the schema.
    serve "$DIR/replica-$i.toml" "$TMP/replica-$i.log" "$port"
    echo "  server replica$i 127.0.0.1:$port" >>"$cfg"
  done
  "$HAPROXY" -c -q -f "$cfg" || die "haproxy rejects $cfg"
  "$HAPROXY" -f "$cfg" -db >>"$TMP/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  for _ in $(seq 100); do
    curl -sf --cacert "$DIR/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null && return
    sleep 0.1
  done
  die "haproxy does not answer on $PORT"
}

log "issuing $HOSTS host certificates…"
"$LOADGEN" certs --collector "$DIR" --hosts "$HOSTS" >&2
HZ=$(getconf CLK_TCK)
# CPU ticks of the collectors (with `pg`, of the PostgreSQL cluster: its postmaster,
# the children it reaped, and its live children).
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
pg_ticks() {
  [[ -n $PG_DIR ]] || { echo 0; return; }
  local master
  master=$(head -1 "$PG_DIR/data/postmaster.pid")
  local own children
  own=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$master/stat")
  children=$(cpu_ticks $(pgrep -P "$master"))
  echo $((own + children))
}

# measure TOPOLOGY LABEL SHARE: one open-loop run at SHARE of the full load, with the
# page poller and the RSS sampler beside it; appends its lines to the report.
measure() {
  local topology=$1 label=$2 share=$3
  local hb_rate findings_req_rate rate percent
  hb_rate=$(awk -v h="$HOSTS" -v s="$share" 'BEGIN{print h / 60 * s}')
  findings_req_rate=$(awk -v f="$FINDINGS_RATE" -v s="$share" 'BEGIN{print f / 10 * s}')
  # Findings ride in batches with their heartbeat, as the agent sends them.
  rate=$(awk -v a="$hb_rate" -v b="$findings_req_rate" 'BEGIN{printf "%.1f", a + b}')
  percent=$(awk -v a="$hb_rate" -v b="$findings_req_rate" 'BEGIN{printf "%d", b / (a + b) * 100 + 0.5}')
  local base=$TMP/$topology-$label
  local pages=$base-pages.txt rss=$base-rss.txt text=$base-loadgen.txt
  : >"$pages"; : >"$rss"
  (while :; do
     curl -s -o /dev/null -w '%{time_total}\n' --cacert "$DIR/ca.pem" \
       -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/v1/hosts?limit=100" >>"$pages" || true
     sleep "$(awk -v r="$PAGE_RATE" 'BEGIN{print 1 / r}')"
   done) &
  BG+=($!)
  local poller=$!
  # Peak RSS of the largest collector process, each second.
  (while :; do
     for p in "${PIDS[@]}"; do awk '/^VmRSS/{print $2}' "/proc/$p/status"; done | sort -n | tail -1 >>"$rss"
     sleep 1
   done) &
  BG+=($!)
  local sampler=$!
  local t0 t1 pg0 pg1
  t0=$(cpu_ticks "${PIDS[@]}"); pg0=$(pg_ticks)
  log "$topology $label: $rate requests/s ($percent % with 10 findings) for $DURATION s over $HOSTS hosts"
  local pid_arg=()
  ((${#PIDS[@]} == 1)) && pid_arg=(--collector-pid "${PIDS[0]}")
  "$LOADGEN" run --collector "$DIR" --hosts "$HOSTS" --scenario mixed --rate "$rate" \
    --findings-per-batch 10 --findings-percent "$percent" --interval-secs 60 \
    --duration-secs "$DURATION" "${pid_arg[@]}" --timeline --threads 2 >"$text" 2>>"$TMP/loadgen.err" \
    || { tail "$TMP/loadgen.err" >&2; die "the load generator failed ($topology $label)"; }
  t1=$(cpu_ticks "${PIDS[@]}"); pg1=$(pg_ticks)
  kill "$poller" "$sampler" 2>/dev/null || true
  wait "$poller" "$sampler" 2>/dev/null || true
  {
    echo "## $topology, $label load: $(grep -m1 'mixed' "$text" || true)"
    grep -E '^  (requests|events|by thirds|latency|errors|collector)' "$text" || true
    awk '/^ +[0-9]+: /{n++; c[n]=$2} END{
           if (n < 120) {print "  minutes     run too short for first/last minute"; exit}
           for (i=1;i<=60;i++) f+=c[i]; for (i=n-59;i<=n;i++) l+=c[i];
           printf "  minutes     first %d, last %d requests started: last/first %.1f %% (target >= 90 %%)\n", f, l, l/f*100}' "$text"
    sort -n "$pages" | awk '{v[NR]=$1} END{if (NR==0) {print "  hosts page  no answers"; exit}
           i=int(NR*0.99); if (i<1) i=1; m=int(NR*0.5); if (m<1) m=1
           printf "  hosts page  %d requests of 100 rows: p50 %.1f ms, p99 %.1f ms (target <= 50 ms; includes the TLS handshake)\n", NR, v[m]*1000, v[i]*1000}'
    sort -n "$rss" | awk -v n="${#PIDS[@]}" '{m=$1} END{printf "  rss         peak %.0f MiB of the largest of %d collector processes (target <= 300 MB)\n", m/1024, n}'
    # Hosts per core from the load served: the acknowledged share of the offered
    # requests, as hosts of this load, over the CPU it took.
    local served
    served=$(awk '/^  requests/{gsub(/,/,"",$2); print $2; exit}' "$text")
    awk -v a="$t0" -v b="$t1" -v p0="$pg0" -v p1="$pg1" -v hz="$HZ" -v d="$DURATION" -v h="$HOSTS" \
        -v s="$share" -v ok="${served:-0}" -v r="$rate" 'BEGIN{
           cores=(b-a)/hz/d; pg=(p1-p0)/hz/d; hosts=h*s*(ok/d)/r; if (hosts>h*s) hosts=h*s
           per=0; all=0; if (cores>0) per=hosts/cores; if (cores+pg>0) all=hosts/(cores+pg)
           printf "  cpu         collectors %.2f cores for the load of %.0f hosts served: %.0f hosts per core\n", cores, hosts, per
           if (pg>0) printf "  cpu         + PostgreSQL %.2f cores: %.0f hosts per core, database included\n", pg, all}'
    [[ -s $TMP/loadgen.err ]] && sed 's/[0-9][0-9.]*/N/g' "$TMP/loadgen.err" | sort | uniq -c | sort -rn | head -5 | sed 's/^/  loadgen err /'
    : >"$TMP/loadgen.err"
    echo "  loadavg     $(cat /proc/loadavg) (at the end)"
    echo
  } >>"$OUT.tmp"
}

mkdir -p "$(dirname "$OUT")"
{
  echo "# bench/fleet.sh, $(date -u +%FT%TZ)"
  echo "# HOSTS=$HOSTS DURATION=$DURATION FINDINGS_RATE=$FINDINGS_RATE HALF=$HALF PAGE_RATE=$PAGE_RATE TOPOLOGIES=\"$TOPOLOGIES\" REPLICAS=$REPLICAS"
  echo "# $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo); $PROFILE build; open files $(ulimit -n), haproxy maxconn $HAPROXY_MAXCONN; loadavg at the start $(cat /proc/loadavg)"
  echo
} >"$OUT.tmp"
for topology in $TOPOLOGIES; do
  case $topology in
    sqlite) start_sqlite ;;
    replicas) start_replicas ;;
    *) die "unknown topology $topology (sqlite, replicas)" ;;
  esac
  log "$topology: registering $HOSTS hosts…"
  pid_arg=()
  ((${#PIDS[@]} == 1)) && pid_arg=(--collector-pid "${PIDS[0]}")
  "$LOADGEN" register --collector "$DIR" --hosts "$HOSTS" --interval-secs 60 "${pid_arg[@]}" \
    | sed "s/^/# $topology register: /" >>"$OUT.tmp"
  echo >>"$OUT.tmp"
  measure "$topology" full 1
  if [[ $HALF != 0 ]]; then measure "$topology" half "$HALF"; fi
  stop_collectors
done
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "report: $OUT"
