#!/usr/bin/env bash
# End-to-end measurements (BENCHMARKS.md): brings up a local Kafka-compatible broker (tansu)
# and ClickHouse as local processes, the way scripts/demo.sh does (installing them when
# missing), then runs `callmeter bench` against them. Everything it starts is stopped on
# exit; state lives in .bench/.
#
#   scripts/bench.sh [callmeter bench options]      e.g. scripts/bench.sh --rate 50000
#
# BENCH_CONFIG=FILE: another configuration (default examples/bench.toml).
# BENCH_ENGINE=memory (default) or sqlite: tansu's storage engine. The memory engine is the
# one to measure throughput on; the SQLite engine slows down as topics grow.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/.bench
ENGINE=${BENCH_ENGINE:-memory}
CONFIG=${BENCH_CONFIG:-examples/bench.toml}
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
echo "bench: building callmeter"
cargo build --release --quiet --bin callmeter
BIN=$ROOT/target/release/callmeter

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CH_PORT=$(free_port); KAFKA_PORT=$(free_port)

rm -rf "$BENCH"; mkdir -p "$BENCH/clickhouse/tmp" "$BENCH/tansu"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "bench: starting ClickHouse on 127.0.0.1:$CH_PORT"
clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
  --path="$BENCH/clickhouse/" --tmp_path="$BENCH/clickhouse/tmp/" --http_port="$CH_PORT" \
  --tcp_port="$(free_port)" --interserver_http_port="$(free_port)" \
  --logger.log="$BENCH/clickhouse/log" --logger.errorlog="$BENCH/clickhouse/err" \
  >/dev/null 2>&1 &
pids+=($!)
case "$ENGINE" in
  memory) STORAGE=memory://tansu/ ;;
  sqlite) STORAGE=sqlite://tansu.db ;;
  *) echo "bench: BENCH_ENGINE must be memory or sqlite" >&2; exit 2 ;;
esac
echo "bench: starting tansu ($ENGINE engine) on 127.0.0.1:$KAFKA_PORT"
(cd "$BENCH/tansu" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "$STORAGE" \
  >"$BENCH/tansu/log" 2>&1) &
pids+=($!)

for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$CH_PORT/?query=SELECT%201" >/dev/null 2>&1 && break; sleep 0.2
done
for _ in $(seq 1 150); do
  (echo > "/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.2
done

export CALLMETER_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
export CALLMETER_CLICKHOUSE__URL="http://127.0.0.1:$CH_PORT"
echo "bench: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
if ! "$BIN" bench --config "$CONFIG" "$@" 2>"$BENCH/bench.log"; then
  echo "bench: failed; the last lines of .bench/bench.log:" >&2
  tail -n 20 "$BENCH/bench.log" >&2
  exit 1
fi
