#!/usr/bin/env bash
# Rebuilds the seed corpora in fuzz/corpus/ from real inputs: the repository's test
# fixtures, this machine's own dpkg database (trimmed), and baselines, CSRs and
# configurations made by the real tools. The fuzzers grow their own corpora from these;
# only the seeds (and minimised finds) are committed.
#
# Usage: fuzz/make-seeds.sh   (after `cargo build`, which makes target/debug/driftwatch)
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dw=target/debug/driftwatch
fixtures=agent/tests/fixtures

seed() { # seed TARGET NAME [PREFIX-BYTE] < data
  mkdir -p "$out/$1"
  if [ $# -ge 3 ]; then
    { printf "\\x$3"; cat; } > "$out/$1/$2"
  else
    cat > "$out/$1/$2"
  fi
}

# Policies and configurations: the shipped ones.
seed policy_toml default < agent/policy/default.toml
seed agent_config_toml example < packaging/examples/agent.toml
seed agent_config_toml packaged < packaging/files/agent.toml
seed collector_toml example < packaging/examples/collector.toml

# dpkg: a few stanzas of this machine's status file (with conffiles, multi-arch and a
# non-installed state when present), a small md5sums file, and the diversions.
python3 - "$work/status" <<'PY'
import sys
stanzas = open("/var/lib/dpkg/status", "rb").read().split(b"\n\n")
picked = stanzas[:2]
for want in (b"\nConffiles:", b"\nMulti-Arch: same", b"config-files"):
    picked += [s for s in stanzas if want in s and s not in picked][:1]
open(sys.argv[1], "wb").write(b"\n\n".join(picked) + b"\n")
PY
seed dpkg status 00 < "$work/status"
seed dpkg status-fixture 00 < <(head -c 4000 "$fixtures/dpkg/status" | sed '$d')
md5sums=$(ls -S /var/lib/dpkg/info/*.md5sums | tail -n 20 | head -n 1)
seed dpkg md5sums 01 < "$md5sums"
[ -s /var/lib/dpkg/diversions ] && seed dpkg diversions 02 < /var/lib/dpkg/diversions

# rpm: the fixture header and each header of the SQLite fixture; the BerkeleyDB files.
seed rpm_header dw-hello < "$fixtures/rpm/dw-hello.header"
python3 - "$fixtures/rpm/rpmdb.sqlite" "$out/rpm_header" <<'PY'
import sqlite3, sys
for hnum, blob in sqlite3.connect(sys.argv[1]).execute("SELECT hnum, blob FROM Packages"):
    open(f"{sys.argv[2]}/sqlite-{hnum}", "wb").write(blob)
PY
seed rpm_bdb packages-le < "$fixtures/rpm/Packages"
seed rpm_bdb packages-be < "$fixtures/rpm/Packages-be"

# apk: the fixture database.
seed apk installed < "$fixtures/apk/installed"

# Baselines made by `driftwatch baseline create` on a small tree: whole files (mode 0)
# and their content without the seal (modes 1 to 3 seal it themselves).
mkdir -p "$work/tree/etc" "$work/tree/usr/bin" "$work/tree/var/log"
echo hello > "$work/tree/etc/motd"
printf 'root:x:0:0::/root:/bin/sh\n' > "$work/tree/etc/passwd"
printf '\x7fELF' > "$work/tree/usr/bin/tool"
chmod 4755 "$work/tree/usr/bin/tool"
ln -s tool "$work/tree/usr/bin/alias"
mkdir -p "$work/tree/usr/lib/x"
for i in $(seq 1 70); do echo "$i" > "$work/tree/usr/lib/x/f$i"; done
"$dw" key generate --private "$work/key.pem" --public "$work/key.pub" >/dev/null
export SOURCE_DATE_EPOCH=1700000000
"$dw" baseline create --root "$work/tree" --out "$work/unsigned" --image-id ami-1 >/dev/null
"$dw" baseline create --root "$work/tree" --out "$work/signed" --sign-key "$work/key.pem" >/dev/null
seed baseline unsigned 00 < "$work/unsigned"
seed baseline signed 00 < "$work/signed"
unsigned_len=$(( $(stat -c %s "$work/unsigned") - 12 - 33 ))
seed baseline content-resealed 01 < <(head -c "$unsigned_len" "$work/unsigned")
seed baseline content-signed 02 < <(head -c "$unsigned_len" "$work/unsigned")

# CSRs as a provisioning script makes them (openssl), raw and inside a request.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=host-1 \
  -keyout "$work/host.key" -out "$work/host.csr" 2>/dev/null
openssl req -new -newkey ed25519 -nodes -subj /CN=host-2 \
  -keyout "$work/host2.key" -out "$work/host2.csr" 2>/dev/null
seed enroll csr-p256.pem 01 < "$work/host.csr"
seed enroll csr-ed25519.der 02 < <(openssl req -in "$work/host2.csr" -outform DER)
python3 - "$work/host.csr" <<'PY' | seed enroll request.json 00
import json, sys
print(json.dumps({"token": "t0ken", "host_id": "host-1", "csr_pem": open(sys.argv[1]).read()}))
PY

# The daemon's own state: run it briefly on the tree (changed after the baseline) with
# an unreachable collector, so that it writes its hash cache and spools its findings.
echo changed > "$work/tree/etc/motd"
echo new > "$work/tree/etc/added"
chmod 600 "$work/tree/etc/passwd"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=ca -days 30 \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
cat > "$work/agent.toml" <<TOML
baseline = "$work/unsigned"
root = "$work/tree"
state_dir = "$work/state"
run_dir = "$work/run"
[schedule]
fast_verify_interval_secs = 2
full_verify_interval_secs = 4
[health]
listen = "127.0.0.1:0"
[collector]
url = "https://127.0.0.1:9"
ca_file = "$work/ca.pem"
cert_file = "$work/ca.pem"
key_file = "$work/ca.key"
host_id = "host-1"
heartbeat_interval_secs = 1
TOML
timeout 8 "$dw" run --config "$work/agent.toml" >/dev/null 2>&1 || true
state=$work/state
seed hash_cache file 00 < "$state/hash-cache"
cache_len=$(( $(stat -c %s "$state/hash-cache") - 8 - 32 ))
seed hash_cache records 01 < <(tail -c +9 "$state/hash-cache" | head -c "$cache_len")
segment=$(ls "$state"/spool/segment-*.jsonl | head -n 1)
seed spool segment < "$segment"
seed spool acked-and-segment < <(cat "$state/spool/acked.json"; printf '\0'; cat "$segment")

# Ingest: the spooled events as the agent batches them, plain and gzip-encoded.
python3 - "$segment" <<'PY' > "$work/batch.json"
import json, sys
events = [json.loads(line)["event"] for line in open(sys.argv[1]) if line.strip()]
print(json.dumps({"schema": "driftwatch.ingest/v1", "host_id": "host-1", "hostname": "web-1",
                  "image": {"image_id": "ami-1", "baseline_digest": None}, "events": events}))
PY
seed ingest batch.json 00 < "$work/batch.json"
seed ingest batch.json.gz 01 < <(gzip -9n < "$work/batch.json")
