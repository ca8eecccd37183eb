#!/usr/bin/env bash
# End-to-end measurements (BENCHMARKS.md): brings up Apache Kafka (BROKER=tansu: tansu)
# and ClickHouse as local processes, the way scripts/demo.sh does (installing them when
# missing), then runs `callmeter bench` against them. Everything it starts is stopped on
# exit; state lives in .bench/.
#
#   scripts/bench.sh [callmeter bench options]      e.g. scripts/bench.sh --rate 50000
#
# BENCH_CONFIG=FILE: another configuration (default examples/bench.toml).
# BROKER=kafka (default) or tansu: the broker (scripts/local-servers.sh).
# BENCH_ENGINE=memory (default) or sqlite: tansu's storage engine, with BROKER=tansu. The
# memory engine is the one to measure throughput on; the SQLite engine slows down as topics
# grow.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/.bench
ENGINE=${BENCH_ENGINE:-memory}
CONFIG=${BENCH_CONFIG:-examples/bench.toml}
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
echo "bench: building callmeter"
cargo build --release --quiet --features bench,testkit --bin callmeter
BIN=$ROOT/target/release/callmeter

. scripts/local-servers.sh
start_local_servers "$BENCH" "$ENGINE" bench

export CALLMETER_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
export CALLMETER_CLICKHOUSE__URL="http://127.0.0.1:$CH_PORT"
echo "bench: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
if ! "$BIN" bench --config "$CONFIG" "$@" 2>"$BENCH/bench.log"; then
  echo "bench: failed; the last lines of .bench/bench.log:" >&2
  tail -n 20 "$BENCH/bench.log" >&2
  exit 1
fi
