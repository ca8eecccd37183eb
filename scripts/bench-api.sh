#!/usr/bin/env bash
# HTTP API latency under load (BENCHMARKS.md, "The HTTP API"): brings up Apache Kafka and
# ClickHouse as local processes (as scripts/bench.sh does), runs `callmeter run` with
# examples/bench.toml, produces loadgen calls for --tenants tenants in the current usage
# period, waits until the pipeline has counted them, then loads the API with wrk (Debian
# package `wrk`): 16 connections, 2 threads, each request for a random tenant, on
#   - the entitlement check  GET /v1/tenants/{t}/entitlements/call_minutes
#   - the usage answer       GET /v1/tenants/{t}/usage
# and prints wrk's requests per second and latency distribution for each. Everything runs
# on this machine: wrk's threads share the cores with the server, the broker and ClickHouse.
#
#   scripts/bench-api.sh [--events N] [--tenants N] [--duration 20s] [--connections 16]
#                        [--threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/.bench-api
EVENTS=200000 TENANTS=10000 DURATION=20s CONNECTIONS=16 THREADS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --events) EVENTS=$2; shift 2 ;;
    --tenants) TENANTS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "bench-api: unknown option $1" >&2; exit 2 ;;
  esac
done
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench-api: installing wrk (Debian package)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get install -y -qq wrk >/dev/null
fi
echo "bench-api: building callmeter"
cargo build --release --quiet --bin callmeter
BIN=$ROOT/target/release/callmeter

. scripts/local-servers.sh
start_local_servers "$BENCH" memory bench-api
API_PORT=$(free_port)
create_pipeline_topics

export CALLMETER_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
export CALLMETER_CLICKHOUSE__URL="http://127.0.0.1:$CH_PORT"
export CALLMETER_API__LISTEN="127.0.0.1:$API_PORT"
export CALLMETER_API__TOKENS='["bench"]'
CONFIG=examples/bench.toml
"$BIN" migrate --config "$CONFIG" >/dev/null
"$BIN" run --config "$CONFIG" >"$BENCH/callmeter.log" 2>&1 &
pids+=($!)
wait_ready "$API_PORT"

echo "bench-api: producing $EVENTS calls for $TENANTS tenants"
"$BIN" loadgen --config "$CONFIG" --events "$EVENTS" --tenants "$TENANTS" --seed 7 >/dev/null
consumed() {
  curl -sf "http://127.0.0.1:$API_PORT/metrics" |
    sed -n 's/^callmeter_events_consumed_total \([0-9.e+]*\)$/\1/p' |
    python3 -c 'import sys; print(int(float(sys.stdin.read() or 0)))'
}
for _ in $(seq 1 600); do
  [ "$(consumed)" -ge "$EVENTS" ] && break; sleep 0.2
done
echo "bench-api: the pipeline counted $(consumed) of $EVENTS events"

cat >"$BENCH/random-tenant.lua" <<LUA
-- One random tenant per request; ROUTE is appended to /v1/tenants/{tenant}.
math.randomseed(7)
local headers = { ["Authorization"] = "Bearer bench" }
request = function()
  local t = string.format("t%05d", math.random(0, $TENANTS - 1))
  return wrk.format("GET", "/v1/tenants/" .. t .. os.getenv("ROUTE"), headers)
end
LUA
# Every request must succeed: wrk counts non-2xx answers apart.
for route in /entitlements/call_minutes /usage; do
  echo
  echo "bench-api: wrk -t$THREADS -c$CONNECTIONS -d$DURATION GET /v1/tenants/{random tenant}$route"
  ROUTE=$route wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$BENCH/random-tenant.lua" "http://127.0.0.1:$API_PORT" | tee "$BENCH/wrk.out" |
    grep -E "Requests/sec|Non-2xx|Socket errors|^ +(50|90|99)%"
  if grep -q "Non-2xx" "$BENCH/wrk.out"; then
    echo "bench-api: some answers were not 2xx" >&2
    exit 1
  fi
done
