#!/usr/bin/env bash
# bench/collector.sh - the collector's ingest throughput, latency and memory, measured
# with simulated agents (driftwatch-loadgen: real mutual TLS, one certificate per host).
# Run `bench/collector.sh --help` for usage; docs/performance.md has the results.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/collector.sh [--help]

Builds the release binaries (driftwatch-collector, driftwatch-loadgen), makes a
fresh collector directory with `driftwatch-collector init` in a scratch dir (the
database is a real file: WAL, synchronous=FULL, one fsync per group commit),
and measures, RUNS times each, every measurement on a freshly started collector
with an empty database unless it says otherwise:

  findings throughput   closed loop, CONCURRENCY workers, HOSTS hosts, batches of
                        FINDINGS_PER_BATCH file findings + 1 heartbeat, DURATION s;
                        the rate in the run's last third is what is sustained
  findings p99 (after)  open loop at half the target (2,500 findings/s) for
                        DURATION s, on the same collector right after the
                        throughput run (its database holds what that run stored)
  findings p99 (fresh)  the same on an empty database
  findings, big batches closed loop with BIG_BATCH findings per batch
  heartbeats throughput closed loop, heartbeat-only batches, HOSTS hosts
  heartbeats p99        open loop at half the target (1,000 heartbeats/s),
                        right after the heartbeat throughput run
  RSS, registered       REGISTER_HOSTS hosts send one heartbeat each (each over
                        its own new connection, closed afterwards); the
                        collector's VmRSS/VmHWM from /proc 2 s later
  RSS, live fleet       REGISTER_HOSTS hosts heartbeating every 30 s (open loop,
                        REGISTER_HOSTS/30 heartbeats/s) for FLEET_SECS, each
                        host's first heartbeat inside the run, connections
                        handled as the agent does (let go after 5 s idle); the
                        collector's VmRSS/VmHWM at the end
  RSS, reconnect storm  every one of REGISTER_HOSTS hosts connects within
                        seconds and keeps its connection (a collector restart
                        under a running fleet): the collector's peak (VmHWM)

Open-loop latency is counted from when each request was due, not when it was
sent (no coordinated omission). The collector keeps its default [ingest]
limits (10 requests/s per host, burst 20, 1000 events per batch): the load is
spread over enough hosts to stay under them.

Prints a report (medians, min-max, targets) on stdout and writes it to
bench/results/collector-<date>.txt; progress on stderr.

Environment
  RUNS=3                 repetitions of every measurement; medians are reported
  DURATION=30            seconds of each measured load
  HOSTS=2000             simulated hosts for throughput and latency
  REGISTER_HOSTS=10000   hosts for the memory measurement
  FINDINGS_PER_BATCH=10  findings in each findings batch
  BIG_BATCH=100          findings per batch of the big-batch row (0: skip it)
  FLEET_SECS=60          seconds of the live-fleet memory measurement
  CONCURRENCY=64         closed-loop workers (and connect/register concurrency)
  IDLE_WAIT=60           before each measurement, wait up to this many seconds
                         for the machine to use <= IDLE_MAX cores
  IDLE_MAX=0.3           "other processes" (the machine's busy time less the
                         collector's and the load generator's) above this many
                         cores make a measurement contended. The kernel's
                         writeback of the collector's own fsyncs counts here:
                         about 0.2 cores while findings pour in.
  RETRY_CONTENDED=2      repeat a contended measurement (with its collector
                         group) up to this many times; the contended rows stay
                         in the raw TSV with used=0; still contended: flagged
  SKIP_BUILD=1           use the binaries in target/release as they are
  OUT=FILE               where the report goes (default
                         bench/results/collector-<date>.txt; "-" for none)
  TMPDIR                 parent of the scratch dir (collector dir, database, logs)
  KEEP_TMP=1             keep the scratch dir (its path is printed)

Needs: cargo, curl, jq, awk, python3 (to find a free port), a file-descriptor
limit above REGISTER_HOSTS (raised with ulimit -n when allowed).

Examples
  bench/collector.sh                      # RUNS=3: about 12 minutes on an idle machine
  RUNS=1 DURATION=10 bench/collector.sh   # a quick look (about 2 minutes)
EOF
}

case "${1:-}" in
  -h | --help | help) usage; exit 0 ;;
  "") ;;
  *) echo "collector.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
RUNS=${RUNS:-3}
DURATION=${DURATION:-30}
HOSTS=${HOSTS:-2000}
REGISTER_HOSTS=${REGISTER_HOSTS:-10000}
FINDINGS_PER_BATCH=${FINDINGS_PER_BATCH:-10}
BIG_BATCH=${BIG_BATCH:-100}
CONCURRENCY=${CONCURRENCY:-64}
FLEET_SECS=${FLEET_SECS:-60}
IDLE_WAIT=${IDLE_WAIT:-60}
IDLE_MAX=${IDLE_MAX:-0.3}
RETRY_CONTENDED=${RETRY_CONTENDED:-2}
KEEP_TMP=${KEEP_TMP:-0}
if [[ -z "${OUT:-}" ]]; then
  OUT=$REPO_ROOT/bench/results/collector-$(date +%F).txt
  # Never overwrite an earlier report of the same day.
  [[ -e $OUT ]] && OUT=$REPO_ROOT/bench/results/collector-$(date +%F-%H%M).txt
fi
# The targets (issue text).
FINDINGS_TARGET=5000
HEARTBEATS_TARGET=2000
P99_TARGET_MS=50
RSS_TARGET_MB=200
FINDINGS_HALF=$((FINDINGS_TARGET / 2))
HEARTBEATS_HALF=$((HEARTBEATS_TARGET / 2))

log() { echo "collector.sh: $*" >&2; }
die() { log "$*"; exit 2; }
for t in cargo curl jq awk python3; do command -v "$t" >/dev/null || die "'$t' not found"; done

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries…"
  cargo build --release --locked -p driftwatch-collector -p driftwatch-loadgen >&2
fi
COLLECTOR=$REPO_ROOT/target/release/driftwatch-collector
LOADGEN=$REPO_ROOT/target/release/driftwatch-loadgen
[[ -x $COLLECTOR && -x $LOADGEN ]] || die "build first: cargo build --release -p driftwatch-collector -p driftwatch-loadgen"

want_fds=$((REGISTER_HOSTS + 1024))
if (($(ulimit -n) < want_fds)); then
  ulimit -n "$want_fds" 2>/dev/null || die "the open-file limit ($(ulimit -n)) is below $want_fds and cannot be raised: lower REGISTER_HOSTS"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-collector-bench.XXXXXX")
DIR=$TMP/collector
PID=
cleanup() {
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [[ "$KEEP_TMP" == 1 ]]; then log "scratch dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$COLLECTOR" init "$DIR" --listen "127.0.0.1:$PORT" >/dev/null

# A fresh collector: empty database, new process.
start_collector() {
  stop_collector
  rm -f "$DIR"/collector.db "$DIR"/collector.db-wal "$DIR"/collector.db-shm
  "$COLLECTOR" serve --config "$DIR/collector.toml" >>"$TMP/collector.log" 2>&1 &
  PID=$!
  local tries=0
  until curl -sf --cacert "$DIR/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null; do
    kill -0 "$PID" 2>/dev/null || { tail "$TMP/collector.log" >&2; die "the collector did not start"; }
    ((++tries < 100)) || die "the collector did not answer /healthz within 10 s"
    sleep 0.1
  done
}
stop_collector() {
  if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi
}

HZ=$(getconf CLK_TCK)
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
# Waits up to IDLE_WAIT s for the machine to be quiet (the collector is idle then).
wait_idle() {
  ((IDLE_WAIT > 0)) || return 0
  local waited=0 b0 b1 load
  while :; do
    b0=$(busy_jiffies); sleep 0.5; b1=$(busy_jiffies)
    load=$(awk -v a="$b0" -v b="$b1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz/0.5}')
    awk -v l="$load" -v m="$IDLE_MAX" 'BEGIN{exit !(l<=m)}' && return 0
    ((waited >= IDLE_WAIT)) && { log "machine still busy ($load cores) after ${IDLE_WAIT} s: measuring anyway"; return 0; }
    ((waited == 0)) && log "other processes use $load cores; waiting up to ${IDLE_WAIT} s"
    sleep 5; waited=$((waited + 5))
  done
}

RAW=$TMP/raw.tsv
printf 'label\trun\tfindings_s\theartbeats_s\trequests_s\tp50_ms\tp99_ms\tmax_ms\tfailed\tcollector_cores\tloadgen_cores\tother_cores\trss_mib\thwm_mib\tthirds_findings_s\tthirds_requests_s\tlast_third_findings_s\tused\n' >"$RAW"
OUTPUT=$TMP/loadgen-output.txt
: >"$OUTPUT"

# loadgen LABEL RUN ARGS...: one load generator run against the running collector;
# its JSON becomes a row of the raw TSV, its text goes to the output section.
loadgen() {
  local label=$1 run=$2; shift 2
  local json=$TMP/$label-$run.json
  wait_idle
  log "[run $run] $label"
  local text=$TMP/last-output.txt
  "$LOADGEN" "$@" --collector "$DIR" --collector-pid "$PID" --concurrency "$CONCURRENCY" --json "$json" \
    >"$text" 2>>"$TMP/loadgen.err" || echo "(failed: exit $?)" >>"$text"
  grep -v '^ *[0-9]*: ' "$text" | sed 's/^/    /' >&2
  { echo "### $label, run $run"; echo; cat "$text"; echo; } >>"$OUTPUT"
  [[ -s $json ]] || { log "no result for $label (see $TMP/loadgen.err)"; return 0; }
  jq -r --arg l "$label" --arg r "$run" '
    def r2: if . == null then "" else (. * 100 | round / 100 | tostring) end;
    def mib: if . == null then "" else (. / 1024 * 10 | round / 10 | tostring) end;
    [ $l, $r,
      (.findings_per_sec | r2), (.heartbeats_per_sec | r2), (.requests_per_sec | r2),
      (.latency_ms.p50 | r2), (.latency_ms.p99 | r2), (.latency_ms.max | r2),
      (.failed // 0 | tostring),
      (.resources.collector_cpu_cores | r2), (.resources.loadgen_cpu_cores | r2),
      (.resources.other_cpu_cores | r2),
      ((.collector_rss_kib // .resources.collector_rss_kib) | mib),
      ((.collector_hwm_kib // .resources.collector_hwm_kib) | mib),
      ((.findings_per_sec_by_third // []) | map(round) | join("/")),
      ((.requests_per_sec_by_third // []) | map(round) | join("/")),
      ((.findings_per_sec_by_third // [])[2] | r2),
      "1"
    ] | @tsv' "$json" >>"$RAW"
}

common=(--hosts "$HOSTS" --duration-secs "$DURATION")
findings=(run --scenario findings --findings-per-batch "$FINDINGS_PER_BATCH" "${common[@]}")
heartbeats=(run --scenario heartbeats "${common[@]}")
# Each group starts its own collector; a group with a measurement during which other
# processes used more than IDLE_MAX cores is repeated (RETRY_CONTENDED times); the
# contended rows stay in the raw TSV with used=0 and are not counted.
g_findings() {
  start_collector
  loadgen findings-throughput "$run" "${findings[@]}"
  loadgen findings-p99-after "$run" "${findings[@]}" --rate "$FINDINGS_HALF" --timeline
}
g_fresh() { start_collector; loadgen findings-p99-fresh "$run" "${findings[@]}" --rate "$FINDINGS_HALF" --timeline; }
g_big() {
  start_collector
  loadgen findings-big-batches "$run" run --scenario findings --findings-per-batch "$BIG_BATCH" "${common[@]}"
}
g_heartbeats() {
  start_collector
  loadgen heartbeats-throughput "$run" "${heartbeats[@]}"
  loadgen heartbeats-p99 "$run" "${heartbeats[@]}" --rate "$HEARTBEATS_HALF" --timeline
}
g_registered() { start_collector; loadgen rss-registered "$run" register --hosts "$REGISTER_HOSTS"; }
g_fleet() {
  start_collector
  loadgen rss-fleet "$run" run --scenario heartbeats --hosts "$REGISTER_HOSTS" --interval-secs 30 \
    --rate "$(awk -v n="$REGISTER_HOSTS" 'BEGIN{printf "%.3f", n/30}')" --duration-secs "$FLEET_SECS" --no-warmup
}
g_storm() { start_collector; loadgen rss-storm "$run" register --hosts "$REGISTER_HOSTS" --keep-connections; }
group() {
  local attempt before
  for ((attempt = 0; ; attempt++)); do
    before=$(wc -l <"$RAW")
    "$1"
    awk -F'\t' -v n="$before" -v m="$IDLE_MAX" 'NR>n && $12!="" && $12>m {c=1} END {exit !c}' "$RAW" || return 0
    if ((attempt >= RETRY_CONTENDED)); then
      log "${1#g_} was contended $((attempt + 1)) times: kept as it is (flagged in the report)"
      return 0
    fi
    log "${1#g_} was contended (other processes above $IDLE_MAX cores): repeating it"
    awk -F'\t' -v OFS='\t' -v n="$before" 'NR>n {$NF=0} {print}' "$RAW" >"$RAW.new" && mv "$RAW.new" "$RAW"
  done
}
for run in $(seq "$RUNS"); do
  group g_findings
  group g_fresh
  ((BIG_BATCH > 0)) && group g_big
  group g_heartbeats
  group g_registered
  group g_fleet
  group g_storm
done
stop_collector

# stat LABEL COLUMN -> "median min max" over the runs (empty when no value)
stat() {
  awk -F'\t' -v l="$1" -v c="$2" 'NR>1 && $NF==1 && $1==l && $c!="" {print $c}' "$RAW" | sort -g |
    awk '{a[NR]=$1} END {if (NR) printf "%s %s %s", a[int((NR+1)/2)], a[1], a[NR]}'
}
col() { head -1 "$RAW" | tr '\t' '\n' | grep -nx "$1" | cut -d: -f1; }
med() { local s; s=$(stat "$1" "$(col "$2")"); echo "${s%% *}"; }
range() {
  local s lo hi
  s=$(stat "$1" "$(col "$2")")
  [[ -n $s ]] || return 0
  read -r _ lo hi <<<"$s"
  echo "$(fmt "$lo")–$(fmt "$hi")"
}
fmt() { awk -v v="$1" 'BEGIN{ if (v=="") {print "—"; exit} if (v>=100) { s=sprintf("%.0f", v); o=""; n=length(s); for(i=1;i<=n;i++){o=o substr(s,i,1); if((n-i)%3==0 && i<n) o=o ","} print o } else printf "%.1f\n", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a==""||b==""||b==0) print "—"; else printf "%.2f\n", a/b }'; }
verdict() { # value target higher|lower
  awk -v v="$1" -v t="$2" -v d="$3" 'BEGIN{ if (v=="") print "—"; else if ((d=="higher" && v>=t) || (d=="lower" && v<=t)) print "PASS"; else print "FAIL" }'
}

report() {
  local f_tp f_last f_after f_fresh h_tp h_p99 rss_reg rss_fleet rss_storm worst_p99
  f_tp=$(med findings-throughput findings_s)
  f_last=$(med findings-throughput last_third_findings_s)
  f_after=$(med findings-p99-after p99_ms)
  f_fresh=$(med findings-p99-fresh p99_ms)
  h_tp=$(med heartbeats-throughput heartbeats_s)
  h_p99=$(med heartbeats-p99 p99_ms)
  rss_reg=$(med rss-registered hwm_mib)
  rss_fleet=$(med rss-fleet hwm_mib)
  rss_storm=$(med rss-storm hwm_mib)
  echo "# Collector ingest benchmark ($(date +%F), RUNS=$RUNS)"
  echo
  echo "\`RUNS=$RUNS DURATION=$DURATION HOSTS=$HOSTS REGISTER_HOSTS=$REGISTER_HOSTS FINDINGS_PER_BATCH=$FINDINGS_PER_BATCH BIG_BATCH=$BIG_BATCH CONCURRENCY=$CONCURRENCY bench/collector.sh\`"
  echo
  echo "- Machine: $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "- Database: $(df -PT "$TMP" | awk 'NR==2{print $2}') file in a scratch directory (WAL, synchronous=FULL); collector and load generator share the machine"
  echo "- Collector: default configuration from \`init\` ([ingest] 10 requests/s per host, burst 20, 1000 events per batch); binaries: release"
  echo "- Medians of $RUNS runs, with min–max; open-loop latency counts from when each request was due"
  echo
  echo "| Measurement | Median | min–max | Collector CPU (cores) | Load generator CPU | Other processes |"
  echo "|---|---:|---:|---:|---:|---:|"
  row() { # label column unit
    local m; m=$(med "$1" "$2")
    echo "| $4 | $(fmt "$m") $3 | $(range "$1" "$2") | $(med "$1" collector_cores) | $(med "$1" loadgen_cores) | $(med "$1" other_cores) |"
  }
  row findings-throughput findings_s "findings/s" "Findings, closed loop, $FINDINGS_PER_BATCH per batch"
  row findings-throughput last_third_findings_s "findings/s" "… in the last third of the run"
  echo "| … by thirds of the run (findings/s) | $(awk -F'\t' 'NR>1 && $NF==1 && $1=="findings-throughput" {printf "%s%s", sep, $15; sep="; "}' "$RAW") | | | | |"
  row findings-p99-after p99_ms ms "Findings p99 at $FINDINGS_HALF/s, after the throughput run"
  row findings-p99-fresh p99_ms ms "Findings p99 at $FINDINGS_HALF/s, empty database"
  ((BIG_BATCH > 0)) && row findings-big-batches findings_s "findings/s" "Findings, closed loop, $BIG_BATCH per batch"
  row heartbeats-throughput heartbeats_s "heartbeats/s" "Heartbeats, closed loop"
  row heartbeats-p99 p99_ms ms "Heartbeats p99 at $HEARTBEATS_HALF/s"
  row rss-registered hwm_mib MiB "Collector VmHWM, $REGISTER_HOSTS hosts registered (connections closed)"
  row rss-fleet hwm_mib MiB "Collector VmHWM, $REGISTER_HOSTS hosts heartbeating every 30 s for $FLEET_SECS s"
  row rss-storm hwm_mib MiB "Collector VmHWM, $REGISTER_HOSTS hosts connecting at once and staying connected"
  echo
  echo "| Target | Measured (median) | Ratio | |"
  echo "|---|---:|---:|---|"
  echo "| ≥ $(fmt "$FINDINGS_TARGET") findings/s sustained: the last third of the run | $(fmt "$f_last") | $(ratio "$f_last" "$FINDINGS_TARGET") | $(verdict "$f_last" "$FINDINGS_TARGET" higher) |"
  echo "| … the whole run's average | $(fmt "$f_tp") | $(ratio "$f_tp" "$FINDINGS_TARGET") | $(verdict "$f_tp" "$FINDINGS_TARGET" higher) |"
  echo "| ≥ $(fmt "$HEARTBEATS_TARGET") heartbeats/s | $(fmt "$h_tp") | $(ratio "$h_tp" "$HEARTBEATS_TARGET") | $(verdict "$h_tp" "$HEARTBEATS_TARGET" higher) |"
  worst_p99=$(awk -v a="$f_after" -v b="$f_fresh" 'BEGIN{ if (a=="") print b; else if (b=="" || a>b) print a; else print b }')
  echo "| p99 ≤ $P99_TARGET_MS ms at $(fmt "$FINDINGS_HALF") findings/s (worse of fresh / after) | $(fmt "$f_fresh") / $(fmt "$f_after") ms | $(ratio "$worst_p99" "$P99_TARGET_MS") | $(verdict "$worst_p99" "$P99_TARGET_MS" lower) |"
  echo "| p99 ≤ $P99_TARGET_MS ms at $(fmt "$HEARTBEATS_HALF") heartbeats/s | $(fmt "$h_p99") ms | $(ratio "$h_p99" "$P99_TARGET_MS") | $(verdict "$h_p99" "$P99_TARGET_MS" lower) |"
  mb() { awk -v m="$1" 'BEGIN{if (m!="") print m*1.048576}'; }
  rss_line() { # label MiB
    echo "| $1 | $(fmt "$2") MiB | $(ratio "$(mb "$2")" "$RSS_TARGET_MB") | $(verdict "$(mb "$2")" "$RSS_TARGET_MB" lower) |"
  }
  rss_line "RSS ≤ $RSS_TARGET_MB MB at $(fmt "$REGISTER_HOSTS") registered hosts: registered, idle" "$rss_reg"
  rss_line "… all heartbeating every 30 s" "$rss_fleet"
  rss_line "… all connecting at once (reconnect storm), peak" "$rss_storm"
  echo
  echo "Ratios: measured / target (above 1 is better for rates, below 1 for latency and memory; MiB converted to MB)."
  echo "\"Sustained\" is judged on the last third of each run: the collector slows down as the findings it holds grow, so the average flatters it."
  local contended
  contended=$(awk -F'\t' -v m="$IDLE_MAX" 'NR>1 && $NF==1 && $12!="" && $12>m {printf "%s%s run %s (%s cores)", sep, $1, $2, $12; sep="; "}' "$RAW")
  [[ -n $contended ]] && echo && echo "Contended (other processes above $IDLE_MAX cores): $contended."
  local failed
  failed=$(awk -F'\t' 'NR>1 && $NF==1 && $9>0 {printf "%s%s run %s: %s", sep, $1, $2, $9; sep="; "}' "$RAW")
  [[ -n $failed ]] && echo && echo "Failed requests: $failed (see the output below)."
  echo
  echo "## Raw results"
  echo
  echo '```'
  cat "$RAW"
  echo '```'
  echo
  echo "## Load generator output"
  echo
  sed 's/^/    /; s/^    ### /### /; s/^    $//' "$OUTPUT"
}

if [[ "$OUT" == "-" ]]; then
  report
else
  mkdir -p "$(dirname "$OUT")"
  report | tee "$OUT"
  log "report written to ${OUT#"$REPO_ROOT"/}"
fi
