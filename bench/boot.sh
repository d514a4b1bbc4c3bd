#!/usr/bin/env bash
# Boot times of the baked stock cloud image, from the end-to-end tests that boot it for
# real: systemd-nspawn (tests/tests/image.rs, three machines per run: A, B, C) and qemu
# with the image's own kernel (tests/tests/qemu.rs; KVM when /dev/kvm is usable, else
# software emulation — the output says which). Each test prints a `timings:` line;
# this runs each RUNS times (default 3) and prints the medians of
#   boot-to-active       start of nspawn/qemu to systemd calling driftwatch.service
#                        active (systemd's own timestamp)
#   first-boot-to-clean  start of nspawn/qemu to the first boot's check finished, the
#                        provisioning window sealed and the host clean (polled)
# with /proc/loadavg before each run. The root file system is cached under
# target/boot-cache/ by the first run; build the .deb once first
# (`bash packaging/build.sh agent-deb`) and pass it in DRIFTWATCH_TEST_DEB.
#
# Usage (as root): bench/boot.sh [nspawn|qemu|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
RUNS=${RUNS:-3}
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
# The tests run in tests/: a relative path would name nothing there.
[[ -n ${DRIFTWATCH_TEST_DEB:-} ]] && export DRIFTWATCH_TEST_DEB=$(realpath "$DRIFTWATCH_TEST_DEB")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

run_test() { # NAME TEST [TEST-ARGS...]
  local name=$1 test=$2 i
  shift 2
  cargo build --workspace --locked -q
  for i in $(seq "$RUNS"); do
    echo "$name run $i/$RUNS, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    cargo test -q -p driftwatch-tests --test "$test" -- --nocapture "$@" >"$OUT/$name.$i.log" 2>&1 ||
      { tail -40 "$OUT/$name.$i.log" >&2; echo "$name run $i failed" >&2; exit 1; }
    grep -h '^boots: ' "$OUT/$name.$i.log" >&2 || true
    grep -h '^timings: ' "$OUT/$name.$i.log" >>"$OUT/$name.timings"
  done
}

case $MODE in
  nspawn) run_test nspawn image ;;
  qemu) run_test qemu qemu --ignored ;;
  all) run_test nspawn image; run_test qemu qemu --ignored ;;
  *) echo "usage: bench/boot.sh [nspawn|qemu|all]" >&2; exit 2 ;;
esac

python3 - "$OUT" <<'PY'
import glob, os, re, statistics, sys
UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
def seconds(text):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.timings"))):
    name = os.path.basename(path).split(".")[0]
    samples = {}
    boots = "nspawn"
    for line in open(path):
        for part in line[len("timings: "):].split(" | "):
            key, _, value = part.rpartition(" ")
            if key == "boots":
                boots = value
            for what in ("boot-to-active", "first-boot-to-clean"):
                if key == what or key.endswith(" " + what):
                    s = seconds(value)
                    if s is not None:
                        samples.setdefault(what, []).append(s)
    for what, values in samples.items():
        print(f"{boots:10} {what:20} median {statistics.median(values):6.2f} s "
              f"(n={len(values)}: {', '.join(f'{v:.2f}' for v in values)})")
PY
