#!/usr/bin/env bash
# What package and runtime sources add to a check of this machine, and how
# driftwatch's package verification compares with `debsums -s`.
#
# Usage: RUNS=5 bench/packages.sh      (needs root, a dpkg host; installs debsums)
#
# Rows, each RUNS times, medians reported (the same machine, one run, warm cache):
#   files only               check of / with [packages] and [runtime] disabled
#   files + packages         ... with the package set compared, verify = "uncovered"
#   files + packages + runtime  the built-in defaults (what a host runs)
#   verification of every packaged file
#                            scan paths point at an empty directory, verify = "all":
#                            reading the dpkg database and re-hashing every file it
#                            lists — what debsums does
#   debsums -s               the peer for the row above
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DW=${DW:-target/release/driftwatch}
[[ -x $DW ]] || { echo "build first: cargo build --release --locked" >&2; exit 2; }
command -v debsums >/dev/null || apt-get install -y -qq debsums >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/empty"
DEFAULT=agent/policy/default.toml

variant() { # name, then sed expressions applied to the built-in policy
  local name=$1
  shift
  sed "$@" "$DEFAULT" >"$TMP/$name.toml"
}
variant files -e 's/^enabled = true$/enabled = false/'
variant packages -e '/^\[runtime\]/,$ s/^enabled = true$/enabled = false/'
variant runtime -e ''
variant verify -e "s|^paths = \[\"/\"\]|paths = [\"$TMP/empty\"]|" \
  -e 's/^verify = "uncovered"/verify = "all"/' \
  -e '/^\[runtime\]/,$ s/^enabled = true$/enabled = false/'

for v in files packages runtime verify; do
  "$DW" baseline create --capture-runtime --policy "$TMP/$v.toml" --out "$TMP/$v.dwb" >/dev/null
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
measure() { # label, command...
  local label=$1 wall rss
  shift
  : >"$TMP/t"
  : >"$TMP/m"
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f '%e %M' -o "$TMP/one" "$@" >/dev/null 2>&1 || true
    # GNU time writes "Command exited with non-zero status N" first when N != 0
    # (debsums exits 2 when it finds changed files).
    read -r wall rss < <(tail -n 1 "$TMP/one")
    echo "$wall" >>"$TMP/t"
    echo "$rss" >>"$TMP/m"
  done
  printf '| %s | %s | %s |\n' "$label" "$(median <"$TMP/t")" "$(($(median <"$TMP/m") / 1024))"
}

echo "## Package and runtime sources on this machine ($(date -u +%FT%RZ), RUNS=$RUNS)"
echo
echo "$(nproc) CPUs; $(grep -c '^Package:' /var/lib/dpkg/status) dpkg stanzas; warm page cache; medians."
echo
echo "| Check | Wall median (s) | Peak RSS median (MiB) |"
echo "|---|---:|---:|"
measure "files only" "$DW" check --baseline "$TMP/files.dwb" --format json
measure "files + packages (verify uncovered)" "$DW" check --baseline "$TMP/packages.dwb" --format json
measure "files + packages + runtime (defaults)" "$DW" check --baseline "$TMP/runtime.dwb" --format json
measure "verification of every packaged file" "$DW" check --baseline "$TMP/verify.dwb" --format json
measure "debsums -s" debsums -s
