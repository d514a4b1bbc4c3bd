#!/usr/bin/env bash
# A private, throw-away PostgreSQL cluster for the tests: its own data directory, its
# own socket directory, a free loopback port, trust authentication for the local
# `postgres` user. Nothing of the machine's own clusters is touched.
#
#   .ci/postgres.sh run CMD ARGS...   start a cluster, run CMD with
#                                     DRIFTWATCH_TEST_POSTGRES set, stop and delete it
#   .ci/postgres.sh start             start one; prints the lines to `eval`
#                                     (DRIFTWATCH_TEST_POSTGRES, DRIFTWATCH_TEST_POSTGRES_DIR)
#   .ci/postgres.sh stop DIR          stop the cluster started in DIR and delete it
#
# As root the server runs as the `postgres` user (initdb refuses root); as anyone else
# it runs as that user. Tests run it with fsync off (POSTGRES_FSYNC=off, the default:
# a throw-away cluster need not survive a power cut); a benchmark sets it on.
set -euo pipefail

pg_bin() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$initdb" ]; then
    initdb=$(command -v initdb || true)
  fi
  if [ -z "$initdb" ]; then
    echo "postgres.sh: initdb not found: install PostgreSQL (apt-get install postgresql)" >&2
    exit 1
  fi
  dirname "$initdb"
}

# Runs a command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A loopback port nothing listens on (bash's /dev/tcp: no extra tool needed).
free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "postgres.sh: no free loopback port found" >&2
  exit 1
}

start() {
  local bin dir port
  bin=$(pg_bin)
  dir=$(mktemp -d -t driftwatch-pg.XXXXXX)
  chmod 755 "$dir"
  mkdir "$dir/data" "$dir/socket"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir/data" "$dir/socket"
  fi
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
    --no-instructions >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
  }
  # A few tries: another process may take the port between the probe and the bind.
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 30 \
      -o "-k $dir/socket -c listen_addresses=127.0.0.1 -p $port -c fsync=${POSTGRES_FSYNC:-off} -c max_connections=300" \
      start >/dev/null; then
      echo "export DRIFTWATCH_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
      echo "export DRIFTWATCH_TEST_POSTGRES_DIR=$dir"
      return
    fi
  done
  cat "$dir/data/server.log" >&2
  exit 1
}

stop() {
  local dir=$1
  [ -d "$dir/data" ] || return 0
  as_owner "$(pg_bin)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:?usage: postgres.sh stop DIR}" ;;
run)
  shift
  [ $# -gt 0 ] || { echo "usage: postgres.sh run CMD ARGS..." >&2; exit 2; }
  eval "$(start)"
  trap 'stop "$DRIFTWATCH_TEST_POSTGRES_DIR"' EXIT
  "$@"
  ;;
*)
  echo "usage: postgres.sh run CMD ARGS... | start | stop DIR" >&2
  exit 2
  ;;
esac
