#!/usr/bin/env bash
# The daemon's costs on this machine's real /usr (and /etc), side by side with the
# floor they are compared with. Needs root and a release build.
#
# Usage: bench/daemon.sh [latency|fast|throttle|idle|all]   (default: all)
#   latency   200 files written one by one under /usr/local/share (a critical,
#             watched path); time from each write to its finding on /status.
#             Median and p99. The files are removed afterwards.
#   fast      fast verification of unchanged /usr with a warm hash cache, against
#             `find /usr -xdev -printf ''` (one lstat per entry) — RUNS times, medians.
#   throttle  one scheduled full re-hash at read_bytes_per_sec=64 MiB/s: measured rate,
#             and CPU time spent beyond hashing (the hashing cost itself is taken from
#             an unthrottled full check of the same tree).
#   idle      the daemon watching /usr and /etc for IDLE_SECS (default 600): CPU share
#             of one core and RSS at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
RUNS=${RUNS:-5}
IDLE_SECS=${IDLE_SECS:-600}
DW=${DW:-target/release/driftwatch}
[[ -x $DW ]] || { echo "build first: cargo build --release --locked" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DAEMON=
cleanup() {
  [[ -n $DAEMON ]] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  rm -rf "$TMP" /usr/local/share/driftwatch-bench
}
trap cleanup EXIT

# Files only (packages and runtime have their own benchmark), everything critical, so
# that every directory of /usr and /etc is watched.
cat >"$TMP/policy.toml" <<'POLICY'
exclude = ["/etc/machine-id", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/mtab", "/etc/ld.so.cache", "/etc/adjtime"]
[scan]
paths = ["/usr", "/etc"]
[default]
severity = "critical"
[packages]
enabled = false
[runtime]
enabled = false
POLICY
"$DW" baseline create --policy "$TMP/policy.toml" --out "$TMP/baseline" >/dev/null

config() { # extra TOML lines
  cat >"$TMP/agent.toml" <<CONFIG
baseline = "$TMP/baseline"
state_dir = "$TMP/state"
run_dir = "$TMP/run"
[health]
listen = "127.0.0.1:$PORT"
$*
CONFIG
}
start() {
  rm -rf "$TMP/state" "$TMP/run"
  RUST_LOG=driftwatch=warn "$DW" run --config "$TMP/agent.toml" 2>"$TMP/daemon.log" &
  DAEMON=$!
}
stop() { kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=; }
status() { curl -s "http://127.0.0.1:$PORT/status"; }
wait_status() { # jq filter that must be true, timeout seconds
  local deadline=$((SECONDS + $2))
  until status 2>/dev/null | jq -e "$1" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "timed out waiting for: $1" >&2; tail "$TMP/daemon.log" >&2; exit 1; }
    sleep 0.05
  done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p99() { sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99+0.999); if(i<1)i=1; print a[i]}'; }
command -v jq >/dev/null || apt-get install -y -qq jq curl >/dev/null

if [[ $MODE == latency || $MODE == all ]]; then
  config "[schedule]
fast_verify_interval_secs = 86400
full_verify_interval_secs = 86400"
  start
  wait_status '.full_checks >= 1' 120
  mkdir -p /usr/local/share/driftwatch-bench
  : >"$TMP/latency"
  for i in $(seq 200); do
    path=/usr/local/share/driftwatch-bench/f$i
    t0=$(date +%s%N)
    echo "$i" >"$path"
    until status | jq -e --arg p "$path" '[.findings[].finding.path] | index($p)' >/dev/null; do :; done
    echo $((($(date +%s%N) - t0) / 1000000)) >>"$TMP/latency"
  done
  stop
  echo "| detection latency, 200 changes | median $(median <"$TMP/latency") ms | p99 $(p99 <"$TMP/latency") ms |"
  rm -rf /usr/local/share/driftwatch-bench
fi

if [[ $MODE == fast || $MODE == all ]]; then
  config "[schedule]
fast_verify_interval_secs = 2
full_verify_interval_secs = 86400
jitter = 0.0
[throttle]
read_bytes_per_sec = 0
cpu_share = 1.0
[watch]
enabled = false"
  start
  wait_status '.full_checks >= 1' 120
  : >"$TMP/fast"
  : >"$TMP/find"
  for i in $(seq "$RUNS"); do
    wait_status ".fast_checks >= $i" 60
    status | jq '.last_fast_check_ms' >>"$TMP/fast"
    /usr/bin/time -f '%e' -o "$TMP/one" find /usr /etc -xdev -printf '' 2>/dev/null
    awk '{print $1 * 1000}' "$TMP/one" >>"$TMP/find"
  done
  bytes=$(status | jq '.last_check_bytes_hashed')
  stop
  f=$(median <"$TMP/fast")
  l=$(median <"$TMP/find")
  echo "| fast verification of unchanged /usr + /etc | $f ms (re-read $bytes bytes) | find -printf '' $l ms | ratio $(awk -v a="$f" -v b="$l" 'BEGIN{printf "%.2f", a/b}') |"
fi

if [[ $MODE == throttle || $MODE == all ]]; then
  config "[schedule]
full_verify_interval_secs = 1
fast_verify_interval_secs = 86400
jitter = 0.0
[throttle]
read_bytes_per_sec = 67108864
[watch]
enabled = false"
  start
  wait_status '.full_checks >= 1' 120
  pid=$DAEMON
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  boot_ms=$(status | jq '.last_full_check_ms')
  wait_status '.full_checks >= 2' 600
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  ms=$(status | jq '.last_full_check_ms')
  bytes=$(status | jq '.last_check_bytes_hashed')
  stop
  hz=$(getconf CLK_TCK)
  # The boot check (unthrottled, everything hashed) is all the CPU used before u0/s0:
  # the cost of hashing this tree. The throttled run's CPU beyond that is the cost of
  # pacing and everything else, spread over its duration.
  boot_cpu=$(awk -v a="$u0" -v b="$s0" -v hz="$hz" 'BEGIN{print (a+b)/hz}')
  cpu=$(awk -v a="$u0" -v b="$s0" -v c="$u1" -v d="$s1" -v hz="$hz" 'BEGIN{print (c+d-a-b)/hz}')
  rate=$(awk -v b="$bytes" -v ms="$ms" 'BEGIN{printf "%.1f", b/1048576/(ms/1000)}')
  beyond=$(awk -v c="$cpu" -v b="$boot_cpu" -v ms="$ms" 'BEGIN{printf "%.1f", 100*(c-b)/(ms/1000)}')
  echo "| throttled full re-hash (limit 64 MiB/s) | $rate MiB/s over $((ms / 1000)) s | CPU $cpu s; unthrottled boot check $boot_cpu s CPU (${boot_ms} ms wall) | beyond hashing: $beyond % of one core |"
fi

if [[ $MODE == idle || $MODE == all ]]; then
  config ""
  start
  wait_status '.full_checks >= 1' 120
  pid=$DAEMON
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  sleep "$IDLE_SECS"
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  watches=$(status | jq '.degradations | length')
  stop
  hz=$(getconf CLK_TCK)
  echo "| idle, watching /usr and /etc for $IDLE_SECS s | CPU $(awk -v a="$u0" -v b="$s0" -v c="$u1" -v d="$s1" -v hz="$hz" -v t="$IDLE_SECS" 'BEGIN{printf "%.3f", 100*(c+d-a-b)/hz/t}') % of one core | RSS $((rss / 1024)) MiB | degradations $watches |"
fi
