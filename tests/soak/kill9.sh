#!/usr/bin/env bash
# The kill -9 soak (docs/reliability.md): a `driftwatch run` daemon reporting to a real
# `driftwatch-collector serve` on loopback is killed with SIGKILL at random points while
# it finds, spools, sends and records acknowledgements of drift, and restarted on the
# same state; at the end the collector must hold every finding, each arriving exactly
# once. The test is tests/tests/soak.rs; `cargo test` runs it with 5 kills.
#
#   tests/soak/kill9.sh                 # 100 kills
#   ITERATIONS=500 tests/soak/kill9.sh  # more
#   SEED=1234 tests/soak/kill9.sh       # replay the kill points of an earlier run
#
# Needs nothing but the workspace (the collector's SQLite store, real TLS); prints the
# seed, the number of kills and findings, and the test's verdict.
set -euo pipefail
cd "$(dirname "$0")/../.."
iterations=${ITERATIONS:-100}
cargo build --locked -p driftwatch-agent --bin driftwatch -p driftwatch-collector --bin driftwatch-collector
export DRIFTWATCH_SOAK_ITERATIONS=$iterations
if [ -n "${SEED:-}" ]; then
  export DRIFTWATCH_SOAK_SEED=$SEED
fi
exec cargo test --locked -p driftwatch-tests --test soak -- --nocapture
