#!/usr/bin/env bash
# bench/scan.sh - driftwatch vs AIDE vs the raw hashing limit, side by side.
# Run `bench/scan.sh --help` for usage; docs/performance.md has the results.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/scan.sh [full|memory|cold] [--help]

Modes
  full (default)  Warm the page cache, then run, interleaved round by round,
                  RUNS times each:
                    - AIDE --init with --workers=1 and --workers=2
                    - AIDE --check --workers=2 (see AIDE_CHECK_RUNS)
                    - find | xargs -0 -P2 -n 500 b3sum --num-threads 1
                    - find | xargs -0 -P2 -n 500 sha256sum
                    - find | xargs -0 -P2 -n 500 openssl dgst -sha256
                    - driftwatch baseline create (--threads 1 and 2 if the
                      binary has --threads) and driftwatch check, with the
                      default (BLAKE3) policy and with a sha256 policy
                  plus one extra AIDE --init with the other gzip_dbout setting
                  (to report the database size compressed and uncompressed).
                  Prints a Markdown report (medians, min-max, peak RSS, ratio
                  vs driftwatch, sizes, targets) on stdout; progress on stderr.
  cold            The boot check: before every run, sync and drop the page
                  cache (echo 3 > /proc/sys/vm/drop_caches; needs root), then
                  run, interleaved round by round, RUNS times each:
                    - find | xargs -0 -P32 -n 100 cat  (the disk's read limit)
                    - find | xargs -0 -P16 -n 100 b3sum --num-threads 1
                    - driftwatch baseline create, and check against it, with
                      the default read-ahead and with --readers 0
                  Reports medians and each ratio to the 32-reader cat. Then,
                  unless SKIP contains warm-ratio, the same driftwatch commands
                  and b3sum -P2 on a warm cache (read-ahead on, and off).
  memory          Generate (or reuse) a synthetic tree of 450,000 small files
                  with bench/make_tree.py, then compare the peak RSS of
                  `driftwatch check` on SCAN_PATH and on that tree.

Environment
  RUNS=5             runs per measurement; medians are reported
  DW=PATH            driftwatch binary (default: <repo>/target/release/driftwatch);
                     driftwatch rows are skipped with a message if it is missing
  SCAN_PATH=/usr     tree to scan (one filesystem; mounts below it are excluded)
  AIDE_CHECK_RUNS=N  runs of `aide --check` (default: RUNS if RUNS<=3, else 1,
                     because one AIDE check takes about a minute)
  IDLE_WAIT=60       before each run, wait up to this many seconds for other
                     processes to use <= 0.25 cores (0: don't wait); runs that
                     were contended anyway are flagged in the report
  RETRY_CONTENDED=1  repeat a run during which other processes used > 0.25
                     cores, up to this many times (the contended attempt is
                     kept in the raw TSV with used=0 but not counted)
  SKIP=a,b,...       skip parts: aide, aide-check, aide-gzip, b3sum, sha256sum,
                     openssl, driftwatch, warm
  BENCH_DIR=DIR      where `memory` keeps its tree (default /var/tmp/driftwatch-bench,
                     i.e. on the same disk as /usr on a one-disk machine)
  TREE_DIRS=450 TREE_FILES=1000
                     shape of the synthetic tree (memory mode)
  TMPDIR             parent of the scratch dir (databases, baselines, raw TSV)
  KEEP_TMP=1         keep the scratch dir (its path is printed)

Needs: bash, GNU time at /usr/bin/time, find, xargs, awk, and for the peers
aide (0.18), b3sum, sha256sum, openssl; python3 for the memory mode.
On Debian/Ubuntu: apt-get install -y aide b3sum attr libcap2-bin time hyperfine

Examples
  bench/scan.sh                    # full comparison, RUNS=5
  RUNS=3 bench/scan.sh             # about 7-8 minutes on an idle machine
  SKIP=aide RUNS=3 bench/scan.sh   # without AIDE (fast)
  bench/scan.sh memory             # memory flatness, /usr vs 450k-file tree
EOF
}

MODE=full
case "${1:-}" in
  -h | --help | help) usage; exit 0 ;;
  "" | full) MODE=full ;;
  memory) MODE=memory ;;
  cold) MODE=cold ;;
  *) echo "scan.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
DW=${DW:-$REPO_ROOT/target/release/driftwatch}
DW_SHOWN=${DW#"$REPO_ROOT"/} # for messages: relative to the repo when inside it
SCAN_PATH=${SCAN_PATH:-/usr}
SKIP=${SKIP:-}
BENCH_DIR=${BENCH_DIR:-/var/tmp/driftwatch-bench}
TREE_DIRS=${TREE_DIRS:-450}
TREE_FILES=${TREE_FILES:-1000}
KEEP_TMP=${KEEP_TMP:-0}
IDLE_WAIT=${IDLE_WAIT:-60}
IDLE_MAX=0.25      # "other load" (cores) above which a run counts as contended
RETRY_CONTENDED=${RETRY_CONTENDED:-1}
RSS_LIMIT_KB=65536 # 64 MiB: check peak RSS target on /usr
FLAT_LIMIT=1.20    # check peak RSS on the 4x tree <= 1.2 x on /usr
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

die() { echo "scan.sh: $*" >&2; exit 1; }
log() { echo "scan.sh: $*" >&2; }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got '$RUNS')"
if [[ -z "${AIDE_CHECK_RUNS:-}" ]]; then
  if ((RUNS <= 3)); then AIDE_CHECK_RUNS=$RUNS; else AIDE_CHECK_RUNS=1; fi
fi
[[ "$AIDE_CHECK_RUNS" =~ ^[0-9]+$ ]] || die "AIDE_CHECK_RUNS must be an integer"
[[ "$IDLE_WAIT" =~ ^[0-9]+$ ]] || die "IDLE_WAIT must be a number of seconds"
[[ "$RETRY_CONTENDED" =~ ^[0-9]+$ ]] || die "RETRY_CONTENDED must be an integer"
[[ -x /usr/bin/time ]] || die "GNU time not found at /usr/bin/time (apt-get install -y time)"
/usr/bin/time -f '%e' -o /dev/null true 2>/dev/null || die "/usr/bin/time is not GNU time (needs -f/-o)"
[[ -d "$SCAN_PATH" ]] || die "SCAN_PATH '$SCAN_PATH' is not a directory"
SCAN_PATH=$(cd "$SCAN_PATH" && pwd -P)
for t in find xargs awk sort; do command -v "$t" >/dev/null || die "'$t' not found"; done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/driftwatch-bench.XXXXXX")
cleanup() {
  if [[ "$KEEP_TMP" == 1 ]]; then log "scratch dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
mkdir -p "$TMP/logs"
RAW=$TMP/raw.tsv
printf 'label\tround\twall_s\tmaxrss_kb\texit\tcpu_s\tother_cpu_cores\tused\n' >"$RAW"
NOTES=$TMP/notes.txt
: >"$NOTES"
note() { echo "- $*" >>"$NOTES"; log "NOTE: $*"; }

# ---------------------------------------------------------------- measuring
# busy jiffies of the whole machine (user nice system irq softirq steal)
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }

# wait_idle LABEL: before a run, wait up to IDLE_WAIT s for the rest of the
# machine to use <= IDLE_MAX cores (sampled over 0.5 s); then measure anyway.
wait_idle() {
  ((IDLE_WAIT > 0)) || return 0
  local waited=0 b0 b1 load
  while :; do
    b0=$(busy_jiffies); sleep 0.5; b1=$(busy_jiffies)
    load=$(awk -v a="$b0" -v b="$b1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz/0.5}')
    awk -v l="$load" -v m="$IDLE_MAX" 'BEGIN{exit !(l<=m)}' && return 0
    if ((waited >= IDLE_WAIT)); then
      note "machine still busy ($load cores) after waiting ${IDLE_WAIT}s before '$1' (round $ROUND): measured anyway"
      return 0
    fi
    ((waited == 0)) && log "other processes use $load cores; waiting up to ${IDLE_WAIT}s for the machine to be idle"
    sleep 5; waited=$((waited + 5))
  done
}

ROUND=0
# measure LABEL CMD... : run CMD once under GNU time, append a row to $RAW.
# stdout goes to $MEASURE_OUT (default /dev/null), stderr to a per-label log.
# "other_cpu_cores" = CPU time used by everything else on the machine during
# the run, divided by wall time (0 = the machine was otherwise idle). A run
# with other_cpu_cores > IDLE_MAX is repeated (up to RETRY_CONTENDED times);
# the contended attempt stays in the raw TSV with used=0 and is not counted.
measure() {
  local label=$1; shift
  local slug tf rc b0 b1 wall rss usr sys cpu other used attempt
  slug=$(printf '%s' "$label" | tr -c 'A-Za-z0-9=._-' '_')
  tf=$TMP/time.out
  for ((attempt = 0; ; attempt++)); do
    wait_idle "$label"
    rc=0
    b0=$(busy_jiffies)
    /usr/bin/time -f '%e %M %x %U %S' -o "$tf" "$@" >"${MEASURE_OUT:-/dev/null}" \
      2>>"$TMP/logs/$slug.err" || rc=$?
    b1=$(busy_jiffies)
    read -r wall rss _ usr sys < <(tail -n1 "$tf")
    cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    other=$(awk -v b0="$b0" -v b1="$b1" -v hz="$HZ" -v c="$cpu" -v w="$wall" \
      'BEGIN{o=((b1-b0)/hz - c); if (o<0) o=0; printf "%.2f", (w>0 ? o/w : 0)}')
    used=1
    # contended: other load above IDLE_MAX and more than 0.2 s of CPU in total
    # (short runs are at the mercy of the 1/HZ accounting granularity)
    if awk -v o="$other" -v w="$wall" -v m="$IDLE_MAX" 'BEGIN{exit !(o>m && o*w>0.2)}' &&
      ((attempt < RETRY_CONTENDED)); then
      used=0
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$ROUND" "$wall" "$rss" "$rc" "$cpu" "$other" "$used" >>"$RAW"
    log "  [round $ROUND] $label: ${wall}s wall, ${cpu}s cpu, ${rss} KB max RSS, exit $rc, other load ${other} cores$( ((used)) || echo ' -> contended, repeating')"
    ((used)) && break
  done
  LAST_RC=$rc
  return 0
}

# stats LABEL FIELD -> "median min max n" (FIELD 3 = wall s, 4 = max RSS KB)
stats() {
  awk -F'\t' -v l="$1" -v f="$2" 'NR>1 && $8==1 && $1==l {print $f}' "$RAW" | sort -g |
    awk '{a[NR]=$1} END {
      if (NR==0) {print "NA NA NA 0"; exit}
      m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
      print m, a[1], a[NR], NR}'
}
median() { stats "$1" "${2:-3}" | awk '{print $1}'; }
max_other() { awk -F'\t' -v l="$1" 'NR>1 && $8==1 && $1==l && $7>m {m=$7} END{printf "%.2f", m+0}' "$RAW"; }
exits() { awk -F'\t' -v l="$1" 'NR>1 && $8==1 && $1==l {print $5}' "$RAW" | sort -u | paste -sd, -; }
# arithmetic helpers that pass "NA" through
div() { awk -v a="$1" -v b="$2" -v p="${3:-2}" 'BEGIN{ if (a=="NA"||b=="NA"||b+0==0) print "NA"; else printf "%.*f", p, a/b }'; }
minof() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA") print b; else if (b=="NA") print a; else print (a<b ? a : b) }'; }
mib() { awk -v k="$1" 'BEGIN{ if (k=="NA") print "NA"; else printf "%.1f", k/1024 }'; }
bytes_h() {
  awk -v b="$1" 'BEGIN{ if (b=="NA" || b=="") {print "NA"; exit}
    if (b>=1048576) printf "%.1f MiB (%.0f bytes)", b/1048576, b; else printf "%.1f KiB (%.0f bytes)", b/1024, b }'
}
# first_line CMD...: first line of CMD's output, "CMD n/a" if it fails
# (sed reads everything, so no SIGPIPE under pipefail as with head)
first_line() {
  local out
  out=$("$@" 2>&1) || { echo "$1 n/a"; return 0; }
  sed -n 1p <<<"$out"
}
fsize() { if [[ -f "$1" ]]; then stat -c %s "$1"; else echo NA; fi; }
is_gzip() { [[ -f "$1" ]] && [[ "$(head -c2 "$1" | od -An -tx1 | tr -d ' \n')" == "1f8b" ]]; }

# flag_contended: a note for every label with a run where other processes
# used more than IDLE_MAX cores (its figures are not clean).
flag_contended() {
  local l
  while IFS= read -r l; do
    [[ -n "$l" ]] && note "'$l': other processes used up to $(max_other "$l") cores during a run; its figures are not clean (re-run on an idle machine)"
  done < <(awk -F'\t' -v m="$IDLE_MAX" 'NR>1 && $8==1 && $7>m && $7*$3>0.2 && !s[$1]++ {print $1}' "$RAW")
  return 0
}

# ---------------------------------------------------------------- machine facts
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
fs_type=$(findmnt -n -o FSTYPE -T "$SCAN_PATH" 2>/dev/null || echo '?')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_EPOCH=$(date +%s)

scan_facts() { # path -> "files bytes"
  find "$1" -xdev -type f -printf '%s\n' | awk '{n++; s+=$1} END{printf "%d %.0f\n", n, s}'
}

warm() { # warm the page cache for a tree (untimed)
  skipped warm && return 0
  log "warming page cache: $1 (untimed)"
  find "$1" -xdev -type f -print0 | xargs -0 -P2 -n 500 cat >/dev/null 2>&1 || true
}

write_policy() { # file path sha256(true|false)
  cat >"$1" <<EOF
[scan]
paths = ["$2"]
one_filesystem = true
sha256 = $3

[default]
attributes = ["type", "mode", "uid", "gid", "size", "content", "link_target", "xattrs", "rdev", "mtime"]
severity = "high"

# Files only, like the peers: packages and runtime are measured by bench/packages.sh.
[packages]
enabled = false

[runtime]
enabled = false
EOF
}

# ---------------------------------------------------------------- driftwatch
DW_OK=0
DW_THREADS=()
dw_probe() {
  if skipped driftwatch; then
    note "driftwatch skipped (SKIP contains driftwatch)"
  elif [[ ! -x "$DW" ]]; then
    note "driftwatch binary not found at '$DW_SHOWN': driftwatch rows are skipped (build the release binary or set DW=/path/to/driftwatch)"
  else
    DW_OK=1
    local help
    help=$("$DW" baseline create --help 2>&1 || true)
    if grep -q -- '--threads' <<<"$help"; then DW_THREADS=(1 2); else DW_THREADS=(""); fi
    DW_VERSION=$(first_line "$DW" --version)
  fi
}
# dw_create LABEL POLICY OUT [THREADS]
dw_create() {
  local label=$1 pol=$2 out=$3 w=${4:-}
  local extra=()
  [[ -n "$w" ]] && extra=(--threads "$w")
  rm -f "$out"
  measure "$label" "$DW" baseline create --root / --policy "$pol" --out "$out" "${extra[@]}"
  ((LAST_RC == 0)) || note "'$label' exited $LAST_RC in round $ROUND"
}
# dw_check LABEL POLICY BASELINE
dw_check() {
  local label=$1
  measure "$label" "$DW" check --root / --policy "$2" --baseline "$3" --format json --no-runtime
  case $LAST_RC in
    0) ;;
    1) note "'$label' reported drift (exit 1) in round $ROUND" ;;
    *) note "'$label' failed with exit $LAST_RC in round $ROUND" ;;
  esac
}
wlabel() { if [[ -n "$1" ]]; then echo " --threads $1"; else echo ""; fi; }

# ============================================================== cold mode
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
if [[ "$MODE" == cold ]]; then
  [[ -w /proc/sys/vm/drop_caches ]] || die "cold mode drops the page cache: run as root"
  command -v b3sum >/dev/null || die "b3sum not found (apt-get install -y b3sum)"
  dw_probe
  ((DW_OK)) || die "cold mode needs the driftwatch binary ($DW_SHOWN)"
  write_policy "$TMP/usr-policy.toml" "$SCAN_PATH" false
  read -r scan_files scan_bytes < <(scan_facts "$SCAN_PATH")
  # shellcheck disable=SC2016 # $1 is expanded by the bash -c child
  CAT32='find "$1" -xdev -type f -print0 | xargs -0 -P32 -n 100 cat >/dev/null'
  # shellcheck disable=SC2016
  B3_16='find "$1" -xdev -type f -print0 | xargs -0 -P16 -n 100 b3sum --num-threads 1 >/dev/null'
  # shellcheck disable=SC2016
  B3_2='find "$1" -xdev -type f -print0 | xargs -0 -P2 -n 500 b3sum --num-threads 1 >/dev/null'
  "$DW" baseline create --root / --policy "$TMP/usr-policy.toml" --out "$TMP/usr.dwb" >/dev/null 2>&1 ||
    note "the reference baseline for the check rows had errors (exit $?)"
  cold_round() { # label cmd...
    drop_caches
    measure "$@"
  }
  for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
    log "cold round $ROUND/$RUNS"
    cold_round "cat -P32 (cold)" bash -c "$CAT32" _ "$SCAN_PATH"
    cold_round "b3sum -P16 (cold)" bash -c "$B3_16" _ "$SCAN_PATH"
    for r in "" 0; do
      lab=${r:+ --readers $r}
      ex=(); [[ -n "$r" ]] && ex=(--readers "$r")
      rm -f "$TMP/cold.dwb"
      cold_round "create$lab (cold)" "$DW" baseline create --root / --policy "$TMP/usr-policy.toml" --out "$TMP/cold.dwb" "${ex[@]}"
      cold_round "check$lab (cold)" "$DW" check --root / --baseline "$TMP/usr.dwb" --format json --no-runtime "${ex[@]}"
    done
  done
  if ! skipped warm-ratio; then
    warm "$SCAN_PATH"
    for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
      log "warm round $ROUND/$RUNS"
      measure "b3sum -P2 (warm)" bash -c "$B3_2" _ "$SCAN_PATH"
      for r in "" 0; do
        lab=${r:+ --readers $r}
        ex=(); [[ -n "$r" ]] && ex=(--readers "$r")
        rm -f "$TMP/warm.dwb"
        measure "create$lab (warm)" "$DW" baseline create --root / --policy "$TMP/usr-policy.toml" --out "$TMP/warm.dwb" "${ex[@]}"
        measure "check$lab (warm)" "$DW" check --root / --baseline "$TMP/usr.dwb" --format json --no-runtime "${ex[@]}"
      done
    done
  fi
  flag_contended
  echo "## Cold-cache boot check on $SCAN_PATH ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(nproc) CPUs ($cpu_model), $mem_total RAM, $fs_type, kernel $(uname -r)."
  echo "Tree: $scan_files files, $(awk -v b="$scan_bytes" 'BEGIN{printf "%.2f GiB", b/1073741824}'). Runs: $RUNS (medians; page cache dropped before every cold run). driftwatch: ${DW_VERSION}."
  echo
  echo "| Measurement | Wall median (s) | min-max (s) | Ratio | Other load (max cores) |"
  echo "|---|---:|---:|---:|---:|"
  ref=$(median "cat -P32 (cold)")
  wref=$(median "b3sum -P2 (warm)")
  for l in "cat -P32 (cold)" "b3sum -P16 (cold)" "create (cold)" "check (cold)" "create --readers 0 (cold)" "check --readers 0 (cold)" \
    "b3sum -P2 (warm)" "create (warm)" "check (warm)" "create --readers 0 (warm)" "check --readers 0 (warm)"; do
    read -r m lo hi n < <(stats "$l" 3)
    ((n > 0)) || continue
    case $l in
      *"(cold)") ratio="$(div "$m" "$ref") x cat -P32" ;;
      *) ratio="$(div "$m" "$wref") x b3sum -P2" ;;
    esac
    echo "| $l | $m | $lo-$hi | $ratio | $(max_other "$l") |"
  done
  echo
  echo "Targets: cold create and check <= 1.10 x cat -P32; warm create and check <= 1.00 x b3sum -P2."
  if [[ -s "$NOTES" ]]; then echo; echo "Notes:"; cat "$NOTES"; fi
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg). Total time: $(($(date +%s) - START_EPOCH)) s."
  echo
  echo '<details><summary>Raw TSV</summary>'
  echo
  echo '```'
  cat "$RAW"
  echo '```'
  echo '</details>'
  exit 0
fi

# ============================================================== memory mode
if [[ "$MODE" == memory ]]; then
  command -v python3 >/dev/null || die "python3 is needed to generate the tree"
  TREE=$BENCH_DIR/tree
  mkdir -p "$BENCH_DIR"
  log "generating (or reusing) $TREE_DIRS x $TREE_FILES files under $TREE"
  python3 "$REPO_ROOT/bench/make_tree.py" "$TREE" --dirs "$TREE_DIRS" --files "$TREE_FILES"
  TREE=$(cd "$TREE" && pwd -P)
  [[ "$(stat -c %d "$TREE")" == "$(stat -c %d "$SCAN_PATH")" ]] ||
    note "the tree ($TREE) is not on the same filesystem as $SCAN_PATH"
  read -r usr_files usr_bytes < <(scan_facts "$SCAN_PATH")
  read -r tree_files tree_bytes < <(scan_facts "$TREE")
  dw_probe
  warm "$SCAN_PATH"
  warm "$TREE"
  if ((DW_OK)); then
    write_policy "$TMP/usr-policy.toml" "$SCAN_PATH" false
    write_policy "$TMP/tree-policy.toml" "$TREE" false
    w=""; ((${#DW_THREADS[@]} > 1)) && w=2
    ROUND=0
    dw_create "create usr" "$TMP/usr-policy.toml" "$TMP/usr.dwb" "$w"
    dw_create "create tree" "$TMP/tree-policy.toml" "$TMP/tree.dwb" "$w"
    for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
      dw_check "check usr" "$TMP/usr-policy.toml" "$TMP/usr.dwb"
      dw_check "check tree" "$TMP/tree-policy.toml" "$TMP/tree.dwb"
    done
  fi

  flag_contended
  echo "## driftwatch memory flatness ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "Machine: $(nproc) CPUs ($cpu_model), $mem_total RAM, $fs_type, kernel $(uname -r)."
  echo "Runs: $RUNS (medians). driftwatch: ${DW_VERSION:-not measured}."
  echo
  echo "| Tree | Files | Bytes | check wall median (s) | check peak RSS median (KiB) | min-max (KiB) | vs $SCAN_PATH |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  if ((DW_OK)); then
    read -r um umin umax _ < <(stats "check usr" 4)
    read -r tm tmin tmax _ < <(stats "check tree" 4)
    uw=$(median "check usr"); tw=$(median "check tree")
  else
    um=NA umin=NA umax=NA tm=NA tmin=NA tmax=NA uw=NA tw=NA
  fi
  ratio=$(div "$tm" "$um")
  echo "| \`$SCAN_PATH\` | $usr_files | $usr_bytes | $uw | $um | $umin-$umax | 1.00 |"
  echo "| \`$TREE\` | $tree_files | $tree_bytes | $tw | $tm | $tmin-$tmax | $ratio |"
  echo
  if ((DW_OK)); then
    echo "Baseline create (1 run, not part of the targets): $SCAN_PATH max RSS $(stats "create usr" 4 | cut -d' ' -f1) KiB, tree max RSS $(stats "create tree" 4 | cut -d' ' -f1) KiB."
    echo
    p1=$(awk -v m="$um" -v l="$RSS_LIMIT_KB" 'BEGIN{print (m<=l ? "PASS" : "FAIL")}')
    p2=$(awk -v r="$ratio" -v l="$FLAT_LIMIT" 'BEGIN{print (r!="NA" && r<=l ? "PASS" : "FAIL")}')
    echo "| Target | Measured | Result |"
    echo "|---|---|---|"
    echo "| check peak RSS on $SCAN_PATH <= 64 MiB | $(mib "$um") MiB | $p1 |"
    echo "| check peak RSS on the tree <= 1.20 x $SCAN_PATH | ${ratio} x | $p2 |"
  else
    echo "driftwatch not measured (binary missing or skipped); the tree is ready at \`$TREE\`."
  fi
  if [[ -s "$NOTES" ]]; then echo; echo "Notes:"; cat "$NOTES"; fi
  echo
  echo "Load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg). Total time: $(($(date +%s) - START_EPOCH)) s."
  exit 0
fi

# ============================================================== full mode
HAVE_AIDE=0 HAVE_B3=0 HAVE_SHA=0 HAVE_OSSL=0
if skipped aide; then note "AIDE skipped (SKIP)";
elif command -v aide >/dev/null; then HAVE_AIDE=1;
else note "aide not found: AIDE rows skipped (apt-get install -y aide)"; fi
if skipped b3sum; then note "b3sum skipped (SKIP)";
elif command -v b3sum >/dev/null; then HAVE_B3=1;
else note "b3sum not found: BLAKE3 limit row skipped (apt-get install -y b3sum)"; fi
if skipped sha256sum; then note "sha256sum skipped (SKIP)";
elif command -v sha256sum >/dev/null; then HAVE_SHA=1;
else note "sha256sum not found: row skipped (coreutils)"; fi
if skipped openssl; then note "openssl skipped (SKIP)";
elif command -v openssl >/dev/null; then HAVE_OSSL=1;
else note "openssl not found: row skipped (apt-get install -y openssl)"; fi
dw_probe

read -r scan_files scan_bytes < <(scan_facts "$SCAN_PATH")
scan_entries=$(find "$SCAN_PATH" -xdev | wc -l)
largest=$(find "$SCAN_PATH" -xdev -type f -printf '%s\n' | sort -n | tail -n1)
# hard links: paths with nlink > 1 are hashed once per path by the peers
read -r hl_paths hl_inodes hl_extra < <(find "$SCAN_PATH" -xdev -type f -links +1 -printf '%i %s\n' |
  awk '{p++; if (!($1 in seen)) {seen[$1]=1; u++; } else x+=$2} END{printf "%d %d %.0f\n", p, u, x}')

# ---- AIDE configuration
AIDE_ATTRS="ftype+p+u+g+s+m+l+xattrs+acl+sha256"
AIDE_DB=$TMP/aide.db         # AIDE's default gzip_dbout (no line in the config)
AIDE_DB_ALT=$TMP/aide-alt.db # the opposite gzip_dbout setting, for the size
regex_escape() { printf '%s' "$1" | sed -e 's/[][\\.^$*+?(){}|]/\\&/g' -e 's/ /\\ /g'; }
write_aide_conf() { # file db [gzip_dbout value or empty for AIDE's default]
  {
    echo "# generated by bench/scan.sh"
    echo "database_in=file:$2"
    echo "database_out=file:$2"
    if [[ -n "${3:-}" ]]; then echo "gzip_dbout=$3"; fi
    echo "log_level=warning"
    echo "report_level=changed_attributes"
    echo "# the attributes driftwatch records (AIDE has no rdev attribute)"
    echo "DW = $AIDE_ATTRS"
    echo "# -xdev: exclude other filesystems mounted below $SCAN_PATH"
    findmnt -rn -o TARGET 2>/dev/null | while read -r m; do
      m=$(printf '%b' "$m") # findmnt escapes spaces as \x20
      if [[ "$m" == "$SCAN_PATH"/* ]]; then echo "!$(regex_escape "$m")"; fi
    done
    echo "$(regex_escape "$SCAN_PATH") DW"
  } >"$1"
}
if ((HAVE_AIDE)); then
  AIDE_VERSION=$(first_line aide --version)
  write_aide_conf "$TMP/aide.conf" "$AIDE_DB" ""
  aide --config-check -c "$TMP/aide.conf" >"$TMP/logs/aide-config-check.out" 2>&1 ||
    die "aide --config-check failed: $(cat "$TMP/logs/aide-config-check.out")"
fi

write_policy "$TMP/usr-policy.toml" "$SCAN_PATH" false
write_policy "$TMP/usr-policy-sha256.toml" "$SCAN_PATH" true

warm "$SCAN_PATH"

# shellcheck disable=SC2016 # $1 is expanded by the bash -c child
HASH_CMD='find "$1" -xdev -type f -print0 | xargs -0 -P2 -n 500 '
L_AIDE1="AIDE --init --workers=1"
L_AIDE2="AIDE --init --workers=2"
L_AIDEC="AIDE --check --workers=2"
L_AIDEG="AIDE --init --workers=2 (other gzip_dbout, 1 run)"
L_B3="b3sum -P2"
L_SHA="sha256sum -P2"
L_OSSL="openssl dgst -sha256 -P2"
L_DWC="driftwatch baseline create"
L_DWK="driftwatch check"
L_DWC256="driftwatch baseline create (sha256)"
L_DWK256="driftwatch check (sha256)"

for ((ROUND = 1; ROUND <= RUNS; ROUND++)); do
  log "round $ROUND/$RUNS"
  if ((HAVE_AIDE)); then
    MEASURE_OUT=$TMP/logs/aide-init-w1.$ROUND.out measure "$L_AIDE1" aide --init --workers=1 -c "$TMP/aide.conf"
    ((LAST_RC == 0)) || note "AIDE --init --workers=1 exited $LAST_RC in round $ROUND"
    MEASURE_OUT=$TMP/logs/aide-init-w2.$ROUND.out measure "$L_AIDE2" aide --init --workers=2 -c "$TMP/aide.conf"
    ((LAST_RC == 0)) || note "AIDE --init --workers=2 exited $LAST_RC in round $ROUND"
    if ((ROUND == 1)) && ! skipped aide-gzip; then
      if is_gzip "$AIDE_DB"; then alt=no; else alt=yes; fi
      write_aide_conf "$TMP/aide-alt.conf" "$AIDE_DB_ALT" "$alt"
      L_AIDEG="AIDE --init --workers=2 gzip_dbout=$alt (1 run)"
      MEASURE_OUT=$TMP/logs/aide-init-alt.out measure "$L_AIDEG" aide --init --workers=2 -c "$TMP/aide-alt.conf"
    fi
    if ((ROUND <= AIDE_CHECK_RUNS)) && ! skipped aide-check; then
      MEASURE_OUT=$TMP/logs/aide-check.$ROUND.out measure "$L_AIDEC" aide --check --workers=2 -c "$TMP/aide.conf"
      # AIDE: 0 = no differences, 1-7 = added/removed/changed bit mask, >= 14 = error
      if ((LAST_RC >= 1 && LAST_RC <= 7)); then note "AIDE --check reported differences (exit $LAST_RC) in round $ROUND"
      elif ((LAST_RC != 0)); then note "AIDE --check failed (exit $LAST_RC) in round $ROUND"; fi
    fi
  fi
  if ((HAVE_B3)); then
    measure "$L_B3" bash -c "$HASH_CMD b3sum --num-threads 1" _ "$SCAN_PATH"
    ((LAST_RC == 0)) || note "b3sum pipeline exited $LAST_RC in round $ROUND"
  fi
  if ((HAVE_SHA)); then
    measure "$L_SHA" bash -c "$HASH_CMD sha256sum" _ "$SCAN_PATH"
    ((LAST_RC == 0)) || note "sha256sum pipeline exited $LAST_RC in round $ROUND"
  fi
  if ((HAVE_OSSL)); then
    measure "$L_OSSL" bash -c "$HASH_CMD openssl dgst -sha256" _ "$SCAN_PATH"
    ((LAST_RC == 0)) || note "openssl pipeline exited $LAST_RC in round $ROUND"
  fi
  if ((DW_OK)); then
    for w in "${DW_THREADS[@]}"; do
      dw_create "$L_DWC$(wlabel "$w")" "$TMP/usr-policy.toml" "$TMP/usr.dwb" "$w"
    done
    dw_check "$L_DWK" "$TMP/usr-policy.toml" "$TMP/usr.dwb"
    for w in "${DW_THREADS[@]}"; do
      dw_create "$L_DWC256$(wlabel "$w")" "$TMP/usr-policy-sha256.toml" "$TMP/usr-sha256.dwb" "$w"
    done
    dw_check "$L_DWK256" "$TMP/usr-policy-sha256.toml" "$TMP/usr-sha256.dwb"
  fi
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
TOTAL_S=$(($(date +%s) - START_EPOCH))
flag_contended
scan_entries_end=$(find "$SCAN_PATH" -xdev | wc -l)
if [[ "$scan_entries_end" != "$scan_entries" ]]; then
  note "$SCAN_PATH changed during the benchmark ($scan_entries -> $scan_entries_end entries): something was installed or removed meanwhile, so checks may report drift and the runs did not all see the same tree"
fi
REPEATED=$(awk -F'\t' 'NR>1 && $8==0' "$RAW" | wc -l)

# ---- references for the ratio column
best_of() { # labels... -> smallest median (NA if none)
  local best=NA l
  for l in "$@"; do best=$(minof "$best" "$(median "$l")"); done
  echo "$best"
}
dwc_labels=() dwc256_labels=()
for w in "${DW_THREADS[@]}"; do dwc_labels+=("$L_DWC$(wlabel "$w")"); dwc256_labels+=("$L_DWC256$(wlabel "$w")"); done
REF_CREATE=NA REF_CHECK=NA REF_CREATE256=NA REF_CHECK256=NA
if ((DW_OK)); then
  REF_CREATE=$(best_of "${dwc_labels[@]}")
  REF_CHECK=$(median "$L_DWK")
  REF_CREATE256=$(best_of "${dwc256_labels[@]}")
  REF_CHECK256=$(median "$L_DWK256")
fi
AIDE_BEST_INIT=$(best_of "$L_AIDE1" "$L_AIDE2")
AIDE_CHECK=$(median "$L_AIDEC")
B3=$(median "$L_B3")
SHA_LIMIT=$(best_of "$L_SHA" "$L_OSSL")

# ---- report
row() { # label what ref refname
  local label=$1 what=$2 ref=$3 refname=$4 m mn mx n r rss
  read -r m mn mx n < <(stats "$label" 3)
  ((n > 0)) || return 0
  rss=$(mib "$(median "$label" 4)")
  r=$(div "$m" "$ref")
  [[ "$r" != NA ]] && r="${r} x $refname" || r="n/a"
  echo "| $label | $what | $n | $m | $mn-$mx | $rss | $r | $(max_other "$label") | $(exits "$label") |"
}

echo "## driftwatch scan benchmark: \`$SCAN_PATH\` ($(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "- Machine: $(nproc) CPUs, $cpu_model, $mem_total RAM, kernel $(uname -r), $fs_type"
echo "- Tree: \`$SCAN_PATH\`, $scan_files regular files ($scan_entries entries), $(awk -v b="$scan_bytes" 'BEGIN{printf "%.2f GiB", b/1073741824}'), one filesystem, warm page cache"
echo "- Hard links: $hl_paths paths share $hl_inodes inodes; path-by-path hashing reads $(awk -v b="$hl_extra" 'BEGIN{printf "%.2f GiB", b/1073741824}') more than the unique content. Largest file: $(bytes_h "$largest")"
echo "- Runs: $RUNS per row, interleaved round by round; AIDE --check runs: $AIDE_CHECK_RUNS; contended runs repeated: $REPEATED (RETRY_CONTENDED=$RETRY_CONTENDED, IDLE_WAIT=${IDLE_WAIT}s)"
echo "- Tools: ${AIDE_VERSION:-AIDE not measured}; $(first_line b3sum --version); $(first_line sha256sum --version); $(first_line openssl version); driftwatch: ${DW_VERSION:-not measured}"
echo "- Load average at start: $LOAD_START; at end: $LOAD_END; total time: ${TOTAL_S} s"
echo
echo "Ratio = this row's median wall time / the driftwatch median named (x > 1: driftwatch is faster)."
echo "\"Other load\" = the most CPU (in cores) that other processes used during any run of the row."
echo "Peak RSS = GNU time %M (for pipelines: the largest process). It counts file pages mapped with mmap:"
echo "b3sum maps whole files, so its peak is about the largest file; AIDE read()s in chunks and its peak"
echo "is its in-memory database (it grows with the number of entries)."
echo
echo "| Measurement | What it does | Runs | Wall median (s) | min-max (s) | Peak RSS median (MiB) | Ratio vs driftwatch | Other load | Exit |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
row "$L_AIDE1" "AIDE baseline, 1 worker" "$REF_CREATE" "create"
row "$L_AIDE2" "AIDE baseline, 2 workers" "$REF_CREATE" "create"
row "$L_AIDEG" "same, only to size the other DB format" "$REF_CREATE" "create"
row "$L_AIDEC" "AIDE check vs its DB" "$REF_CHECK" "check"
row "$L_B3" "BLAKE3 of every file, 2 processes" "$REF_CREATE" "create"
row "$L_SHA" "SHA-256 of every file, 2 processes" "$REF_CREATE256" "create sha256"
row "$L_OSSL" "SHA-256 of every file, 2 processes" "$REF_CREATE256" "create sha256"
if ((DW_OK)); then
  for l in "${dwc_labels[@]}"; do row "$l" "driftwatch baseline (BLAKE3)" "$REF_CREATE" "create"; done
  row "$L_DWK" "driftwatch check (BLAKE3)" "$REF_CHECK" "check"
  for l in "${dwc256_labels[@]}"; do row "$l" "driftwatch baseline (SHA-256)" "$REF_CREATE256" "create sha256"; done
  row "$L_DWK256" "driftwatch check (SHA-256)" "$REF_CHECK256" "check sha256"
else
  echo "| driftwatch | (driftwatch: to be measured) | 0 | NA | NA | NA | n/a | | |"
fi
echo

# ---- sizes
AIDE_PLAIN=NA AIDE_GZ=NA
for db in "$AIDE_DB" "$AIDE_DB_ALT"; do
  [[ -f "$db" ]] || continue
  if is_gzip "$db"; then
    AIDE_GZ=$(fsize "$db")
    AIDE_PLAIN_FROM_GZ=$(gzip -dc "$db" | wc -c)
  else
    AIDE_PLAIN=$(fsize "$db")
  fi
done
[[ "$AIDE_PLAIN" == NA && -n "${AIDE_PLAIN_FROM_GZ:-}" ]] && AIDE_PLAIN=$AIDE_PLAIN_FROM_GZ
AIDE_DEFAULT_FMT=NA
[[ -f "$AIDE_DB" ]] && { if is_gzip "$AIDE_DB"; then AIDE_DEFAULT_FMT=gzip; else AIDE_DEFAULT_FMT=plain; fi; }
DWB=$(fsize "$TMP/usr.dwb")
DWB256=$(fsize "$TMP/usr-sha256.dwb")
echo "| Artifact | Size | vs AIDE DB (uncompressed) | vs AIDE DB (gzip) |"
echo "|---|---:|---:|---:|"
echo "| AIDE database, uncompressed (gzip_dbout=no) | $(bytes_h "$AIDE_PLAIN") | $(div "$AIDE_PLAIN" "$AIDE_PLAIN") | $(div "$AIDE_PLAIN" "$AIDE_GZ") |"
echo "| AIDE database, gzip_dbout=yes (decompresses to ${AIDE_PLAIN_FROM_GZ:-NA} bytes) | $(bytes_h "$AIDE_GZ") | $(div "$AIDE_GZ" "$AIDE_PLAIN") | $(div "$AIDE_GZ" "$AIDE_GZ") |"
echo "| driftwatch baseline (BLAKE3) | $(bytes_h "$DWB") | $(div "$DWB" "$AIDE_PLAIN") | $(div "$DWB" "$AIDE_GZ") |"
echo "| driftwatch baseline (SHA-256) | $(bytes_h "$DWB256") | $(div "$DWB256" "$AIDE_PLAIN") | $(div "$DWB256" "$AIDE_GZ") |"
echo
echo "AIDE's default output (no gzip_dbout line) on this build: $AIDE_DEFAULT_FMT."
echo

# ---- targets
verdict() { # value op limit -> PASS/FAIL/n/a
  awk -v v="$1" -v o="$2" -v l="$3" 'BEGIN{
    if (v=="NA" || l=="NA") {print "n/a"; exit}
    if (o=="<=") print (v+0 <= l+0 ? "PASS" : "FAIL"); else print (v+0 >= l+0 ? "PASS" : "FAIL") }'
}
CHECK_RSS=NA
((DW_OK)) && CHECK_RSS=$(median "$L_DWK" 4)
sp_init=$(div "$AIDE_BEST_INIT" "$REF_CREATE" 1)
sp_check=$(div "$AIDE_CHECK" "$REF_CHECK" 1)
sp_check_init=$(div "$AIDE_BEST_INIT" "$REF_CHECK" 1)
echo "| Target | Measured | Result |"
echo "|---|---|---|"
echo "| baseline create >= 10x faster than AIDE's best --init | AIDE ${AIDE_BEST_INIT} s / driftwatch ${REF_CREATE} s = ${sp_init} x | $(verdict "$sp_init" '>=' 10) |"
echo "| baseline create no slower than b3sum -P2 | driftwatch ${REF_CREATE} s vs b3sum ${B3} s | $(verdict "$REF_CREATE" '<=' "$B3") |"
echo "| check >= 10x faster than AIDE --check | AIDE ${AIDE_CHECK} s / driftwatch ${REF_CHECK} s = ${sp_check} x | $(verdict "$sp_check" '>=' 10) |"
echo "| check >= 10x faster than AIDE's best --init | AIDE ${AIDE_BEST_INIT} s / driftwatch ${REF_CHECK} s = ${sp_check_init} x | $(verdict "$sp_check_init" '>=' 10) |"
echo "| check no slower than b3sum -P2 | driftwatch ${REF_CHECK} s vs b3sum ${B3} s | $(verdict "$REF_CHECK" '<=' "$B3") |"
echo "| SHA-256 baseline create no slower than the SHA-256 limit | driftwatch ${REF_CREATE256} s vs ${SHA_LIMIT} s | $(verdict "$REF_CREATE256" '<=' "$SHA_LIMIT") |"
echo "| SHA-256 check no slower than the SHA-256 limit | driftwatch ${REF_CHECK256} s vs ${SHA_LIMIT} s | $(verdict "$REF_CHECK256" '<=' "$SHA_LIMIT") |"
echo "| check peak RSS <= 64 MiB on $SCAN_PATH | $(mib "$CHECK_RSS") MiB | $(verdict "$CHECK_RSS" '<=' "$RSS_LIMIT_KB") |"
echo "| baseline size <= AIDE DB size (uncompressed) | $(bytes_h "$DWB") vs $(bytes_h "$AIDE_PLAIN") | $(verdict "$DWB" '<=' "$AIDE_PLAIN") |"
echo "| baseline size <= AIDE DB size (gzip) | $(bytes_h "$DWB") vs $(bytes_h "$AIDE_GZ") | $(verdict "$DWB" '<=' "$AIDE_GZ") |"
echo
echo "SHA-256 limit = the faster of sha256sum -P2 and openssl -P2: ${SHA_LIMIT} s. Memory flatness: \`bench/scan.sh memory\`."
if [[ -s "$NOTES" ]]; then echo; echo "Notes:"; echo; cat "$NOTES"; fi
echo
echo "<details><summary>AIDE configuration used</summary>"
echo
echo '```'
if [[ -f "$TMP/aide.conf" ]]; then sed "s#$TMP#\$TMP#g" "$TMP/aide.conf"; else echo "(AIDE not measured)"; fi
echo '```'
echo "</details>"
echo
echo "<details><summary>Raw measurements (TSV)</summary>"
echo
echo '```'
cat "$RAW"
echo '```'
echo "</details>"
