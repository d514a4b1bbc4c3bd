#!/usr/bin/env bash
# Containers: N running podman containers (default 50) started from one image that
# holds FILES files (default 1,000) under /srv/data; in each container every one of
# them is copied up into the upper layer (opened for appending and closed: no change,
# so each must be compared with the image — lstat of both layers and a hash of both,
# sizes being equal — and none is drift), and 10 new files are written (drift).
# Needs root, podman, runc, a static busybox, jq, curl, GNU time and a release build.
#
# Usage: bench/containers.sh      (N, FILES, RUNS=5, IDLE_SECS=60, LATENCY=40)
#   check    `driftwatch containers --format json`, a full check of every container,
#            RUNS times: median wall time and CPU time, against `find` over the same
#            upper layers (one lstat per entry, the floor of any walk).
#   idle     the daemon for IDLE_SECS with the containers running, side by side with
#            the same daemon with `[containers] enabled = false`: CPU share of one core
#            and RSS of each.
#   latency  LATENCY writes inside one container by a process already running there
#            (woken through a FIFO on a volume, so podman exec is not timed); time from
#            the write to its finding on the daemon's /status. Median and max.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50}
FILES=${FILES:-1000}
RUNS=${RUNS:-5}
IDLE_SECS=${IDLE_SECS:-60}
LATENCY=${LATENCY:-40}
DW=${DW:-target/release/driftwatch}
[[ -x $DW ]] || { echo "build first: cargo build --release --locked -p driftwatch-agent" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
DW=$(realpath "$DW")
TMP=$(mktemp -d)
TAG=localhost/driftwatch-bench:1
PREFIX=dwbench-$$
PODMAN=(podman --runtime /usr/sbin/runc)
DAEMONS=()
cleanup() {
  for pid in "${DAEMONS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  podman ps -aq --filter "name=$PREFIX" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  podman volume rm -f "$PREFIX-vol" >/dev/null 2>&1 || true
  podman rmi -f "$TAG" >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now_ms() { date +%s%3N; }

echo "building the image ($FILES files) and starting $N containers…" >&2
mkdir -p "$TMP/rootfs/bin" "$TMP/rootfs/srv/data" "$TMP/rootfs/etc" "$TMP/rootfs/tmp"
cp /bin/busybox "$TMP/rootfs/bin/"
for a in sh sleep cat echo seq; do ln -s busybox "$TMP/rootfs/bin/$a"; done
python3 - "$TMP/rootfs/srv/data" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:05}"), "wb") as f:
        f.write((f"file {i} " * 120).encode()[:1024])
PY
tar -C "$TMP/rootfs" -cf "$TMP/image.tar" .
podman import -q "$TMP/image.tar" "$TAG" >/dev/null
podman volume create "$PREFIX-vol" >/dev/null
VOL=$(podman volume inspect -f '{{.Mountpoint}}' "$PREFIX-vol")
mkfifo "$VOL/wake"
for i in $(seq 1 "$N"); do
  "${PODMAN[@]}" run -d --name "$PREFIX-$i" --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
    --network none -v "$PREFIX-vol:/vol" "$TAG" /bin/sleep 100000 >/dev/null
  "${PODMAN[@]}" exec "$PREFIX-$i" /bin/sh -c \
    'for f in /srv/data/*; do : >> "$f"; done; for j in $(seq 1 10); do echo "$j" > /srv/new-$j; done'
done
UPPERS=()
for i in $(seq 1 "$N"); do UPPERS+=("$(podman inspect -f '{{.GraphDriver.Data.UpperDir}}' "$PREFIX-$i")"); done
echo "upper layers: $(find "${UPPERS[@]}" | wc -l) entries in $N containers" >&2

cat >"$TMP/policy.toml" <<'POLICY'
[scan]
paths = ["/etc/hostname"]
[runtime]
enabled = false
[packages]
enabled = false
POLICY
sed 's/^\[packages\]/[containers]\nenabled = false\n[packages]/' "$TMP/policy.toml" >"$TMP/policy-off.toml"
"$DW" baseline create --root / --policy "$TMP/policy.toml" --out "$TMP/baseline" >/dev/null

echo "## check"
ours=() floor=() cpu=()
for _ in $(seq 1 "$RUNS"); do
  t0=$(now_ms)
  /usr/bin/time -o "$TMP/time" -f '%U %S' "$DW" containers --format json --policy "$TMP/policy.toml" >"$TMP/containers.json" || true
  t1=$(now_ms)
  find "${UPPERS[@]}" -printf '' ; t2=$(now_ms)
  ours+=($((t1 - t0))); floor+=($((t2 - t1)))
  cpu+=("$(awk 'END {printf "%d", ($1 + $2) * 1000}' "$TMP/time")")
done
drift=$(jq '[.containers[] | select(.name | startswith("'"$PREFIX"'")) | .drift] | add' "$TMP/containers.json")
m_ours=$(printf '%s\n' "${ours[@]}" | median); m_floor=$(printf '%s\n' "${floor[@]}" | median)
m_cpu=$(printf '%s\n' "${cpu[@]}" | median)
echo "| full check of $N containers × $FILES copied-up files | ${m_ours} ms (CPU ${m_cpu} ms, user + system, all threads) | find over the upper layers ${m_floor} ms | ratio $(awk -v a="$m_ours" -v b="$m_floor" 'BEGIN{printf "%.1f", a/(b>0?b:1)}') | drift found $drift (expected $((N * 10))) |"

start_daemon() { # policy file, name → pid, port
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$TMP/$2"
  printf 'baseline = "%s"\npolicy = "%s"\nstate_dir = "%s/state"\nrun_dir = "%s/run"\n[health]\nlisten = "127.0.0.1:%s"\n' \
    "$TMP/baseline" "$1" "$TMP/$2" "$TMP/$2" "$port" >"$TMP/$2/agent.toml"
  "$DW" run --config "$TMP/$2/agent.toml" 2>"$TMP/$2/log" &
  DAEMONS+=($!)
  echo "$! $port"
}
wait_status() { # port, jq condition, seconds
  local deadline=$((SECONDS + $3))
  until curl -sf "http://127.0.0.1:$1/status" | jq -e "$2" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "timed out waiting for $2" >&2; exit 1; }
    sleep 0.2
  done
}

echo "## idle"
read -r on_pid on_port < <(start_daemon "$TMP/policy.toml" on)
read -r off_pid off_port < <(start_daemon "$TMP/policy-off.toml" off)
wait_status "$on_port" "(.containers | length) >= $N and .full_checks >= 1" 300
wait_status "$off_port" '.full_checks >= 1' 120
sleep 5
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
a0=$(cpu "$on_pid"); b0=$(cpu "$off_pid")
sleep "$IDLE_SECS"
a1=$(cpu "$on_pid"); b1=$(cpu "$off_pid")
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
share() { awk -v a="$1" -v b="$2" -v hz="$hz" -v t="$IDLE_SECS" 'BEGIN{printf "%.3f", 100*(b-a)/hz/t}'; }
echo "| daemon idle $IDLE_SECS s, $N containers watched | CPU $(share "$a0" "$a1") % of one core | RSS $(( $(rss "$on_pid") / 1024 )) MiB |"
echo "| same daemon, [containers] enabled = false | CPU $(share "$b0" "$b1") % of one core | RSS $(( $(rss "$off_pid") / 1024 )) MiB |"
echo "| difference | RSS $(( ($(rss "$on_pid") - $(rss "$off_pid")) / 1024 )) MiB |"

echo "## latency"
"${PODMAN[@]}" exec -d "$PREFIX-1" /bin/sh -c 'while true; do read n < /vol/wake; echo x > /srv/lat-$n; done'
sleep 1
python3 - "$on_port" "$VOL/wake" "$LATENCY" <<'PY'
import json, statistics, sys, time, urllib.request
port, fifo, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def found(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status") as r:
        status = json.load(r)
    return any(f["finding"].get("path") == path for f in status["findings"])
latencies = []
for n in range(1, count + 1):
    start = time.monotonic()
    with open(fifo, "w") as w:
        w.write(f"{n}\n")
    while not found(f"/srv/lat-{n}"):
        time.sleep(0.002)
    latencies.append((time.monotonic() - start) * 1000)
print(f"| detection latency, {count} writes in a container | median {statistics.median(latencies):.0f} ms "
      f"| max {max(latencies):.0f} ms |")
PY
