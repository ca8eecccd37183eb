#!/usr/bin/env bash
# The main job, end to end on the real call records (1999 Anonymous Bank call center):
# brings up Apache Kafka (BROKER=tansu: tansu) and ClickHouse as local processes
# (installing them when missing), creates topics and tables, runs the pipeline, replays the
# records through it, changes three subscriptions in February 1999 (an upgrade, an add-on
# bought, a cancellation: events on the events topic), and prints per tenant and month the calls, minutes, alerts and charges
# read back from ClickHouse, the statements of the closed periods (January 1999 closes while
# February replays; February stays open, as no event after 1999-03-02 arrives), then per
# tenant what the Stripe test server received next to ClickHouse's totals. Everything it starts is stopped on exit; state lives in .demo/.
#
#   scripts/demo.sh [DATASET_DIR]      (default: data/anonbank, shipped in the repo)
#
# BROKER=tansu runs it on tansu (SQLite engine) instead of Apache Kafka. It also signs a
# tenant portal token and prints the usage page's URL for anonbank-ne (February 1999), and
# saves that page to .demo/portal.html (self-contained: it opens offline);
# DEMO_PORTAL_WAIT=SECONDS keeps the pipeline up that long so the URL can be opened.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DATASET=${1:-$ROOT/data/anonbank}
CONFIG=$ROOT/examples/anonbank.toml
DEMO=$ROOT/.demo
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh
echo "demo: building callmeter and the Stripe test server"
cargo build --release --quiet --features bench,testkit
BIN=$ROOT/target/release/callmeter

. scripts/local-servers.sh
start_local_servers "$DEMO" sqlite demo
API_PORT=$(free_port); STRIPE_PORT=$(free_port)

# Stripe is unreachable from here: usage goes to the Stripe test server (a test double),
# whose clock, like the reporter's (stripe.clock), reads early March 1999, with a few
# injected faults (429, 500, dropped connections) that the reporter retries through.
echo "demo: starting the Stripe test server on 127.0.0.1:$STRIPE_PORT"
"$ROOT/target/release/stripe-test-server" --listen "127.0.0.1:$STRIPE_PORT" \
  --clock 1999-03-03T00:00:00+02:00 --fault-429 0.1 --fault-500 0.1 --fault-drop 0.1 \
  >"$DEMO/stripe-test-server.log" 2>&1 &
pids+=($!)

create_pipeline_topics

export CALLMETER_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
export CALLMETER_CLICKHOUSE__URL="http://127.0.0.1:$CH_PORT"
export CALLMETER_API__LISTEN="127.0.0.1:$API_PORT"
export CALLMETER_STRIPE__API_BASE="http://127.0.0.1:$STRIPE_PORT"
export CALLMETER_STRIPE__METER_EVENTS_BASE="http://127.0.0.1:$STRIPE_PORT"
export STRIPE_API_KEY="sk_test_callmeter_demo"
# The tenant portal: an admin token to sign portal tokens, a fresh HMAC secret per run, and
# the raw events stored so that the page can chart usage per day.
export CALLMETER_API__ADMIN_TOKENS='["demo-admin"]'
CALLMETER_API__PORTAL_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export CALLMETER_API__PORTAL_SECRET
export CALLMETER_API__PORTAL_UPGRADE_URL="https://example.com/upgrade"
export CALLMETER_CLICKHOUSE__RAW_EVENTS=true

"$BIN" migrate --config "$CONFIG"
echo "demo: starting the pipeline (log: .demo/callmeter.log, API: http://127.0.0.1:$API_PORT)"
"$BIN" run --config "$CONFIG" >"$DEMO/callmeter.log" 2>&1 &
PIPE=$!
pids+=($PIPE)
wait_ready "$API_PORT"

echo "demo: replaying $DATASET"
"$BIN" replay --config "$CONFIG" --dataset "$DATASET" | tee "$DEMO/replay.out"
EXPECTED=$(sed -n 's/^published \([0-9]*\) events.*/\1/p' "$DEMO/replay.out")

echo "demo: waiting until ClickHouse holds all $EXPECTED calls"
started=$(python3 -c 'import time; print(time.time())')
for _ in $(seq 1 600); do
  GOT=$(curl -sf "http://127.0.0.1:$CH_PORT/" --data-binary \
    "SELECT sum(event_count) FROM callmeter.usage_rollups FINAL WHERE meter = 'calls'" || echo 0)
  [ "$GOT" = "$EXPECTED" ] && break
  sleep 0.5
done
took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
echo "demo: ClickHouse holds $GOT of $EXPECTED calls ($took s after the replay finished publishing)"

echo
echo "demo: live usage API for anonbank-ne in February 1999:"
curl -sf -H "Authorization: Bearer change-me" \
  "http://127.0.0.1:$API_PORT/v1/tenants/anonbank-ne/usage?at=1999-02-15T12:00:00%2B02:00" | python3 -m json.tool
echo
echo "demo: subscription changes in February 1999 (CONTRACT section 10): anonbank-tt upgrades"
echo "  to professional on the 15th (prorated base fee, the new limit), anonbank-ne buys 24 more"
echo "  extra_minutes on the 10th (PUT /v1/tenants/{t}/subscription), anonbank-in cancels on the 25th"
put_subscription() {
  curl -sf -X PUT -H "Authorization: Bearer demo-admin" -H "Content-Type: application/json" \
    -H "Idempotency-Key: $2" -d "$3" "http://127.0.0.1:$API_PORT/v1/tenants/$1/subscription"
  echo
}
put_subscription anonbank-tt demo-upgrade-tt \
  '{"plan": "professional", "effective_at": "1999-02-15T00:00:00+02:00"}'
put_subscription anonbank-ne demo-addon-ne \
  '{"plan": "professional", "addons": {"extra_minutes": 120}, "effective_at": "1999-02-10T00:00:00+02:00"}'
# A cancellation is a subscription.canceled event on the events topic, keyed by the tenant.
CANCEL='{"specversion":"1.0","id":"demo-cancel-in","source":"callmeter-demo","type":"subscription.canceled","subject":"anonbank-in","time":"1999-02-25T00:00:00+02:00","data":{"effective_at":"1999-02-25T00:00:00+02:00"}}'
if [ "$BROKER" = kafka ]; then
  printf 'anonbank-in|%s\n' "$CANCEL" | kafka_java org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --topic call-events \
    --property parse.key=true --property key.separator='|' >/dev/null
else
  echo "  (BROKER=$BROKER: the cancellation is produced with Apache Kafka's console producer; skipped)"
fi
for _ in $(seq 1 120); do
  S=$(curl -sf "http://127.0.0.1:$CH_PORT/" --data-binary \
    "SELECT count() FROM callmeter.subscriptions FINAL" || echo 0)
  [ "${S:-0}" -ge 2 ] && [ "$BROKER" != kafka -o "${S:-0}" -ge 3 ] && break
  sleep 0.5
done
echo "demo: anonbank-tt in February 1999 after its upgrade:"
curl -sf -H "Authorization: Bearer change-me" \
  "http://127.0.0.1:$API_PORT/v1/tenants/anonbank-tt/usage?at=1999-02-15T12:00:00%2B02:00" | python3 -m json.tool
echo
echo "demo: waiting for January's statements (period end + late_event_grace behind the watermark)"
for _ in $(seq 1 120); do
  N=$(curl -sf "http://127.0.0.1:$CH_PORT/" --data-binary \
    "SELECT uniqExact(statement_id) FROM callmeter.usage_statements FINAL" || echo 0)
  [ "${N:-0}" -ge 6 ] && break
  sleep 0.5
done
echo "demo: statements API for anonbank-ne (closed periods, newest first):"
curl -sf -H "Authorization: Bearer change-me" \
  "http://127.0.0.1:$API_PORT/v1/tenants/anonbank-ne/statements" | python3 -m json.tool
echo

PORTAL_PATH=$(curl -sf -H "Authorization: Bearer demo-admin" -H "Content-Type: application/json" \
  -d '{"tenant_id": "anonbank-ne", "ttl": "1h"}' "http://127.0.0.1:$API_PORT/v1/portal/tokens" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["url"])')
PORTAL_URL="http://127.0.0.1:$API_PORT$PORTAL_PATH&at=1999-02-15T12:00:00%2B02:00"
curl -sf "$PORTAL_URL" -o "$DEMO/portal.html"
echo "demo: tenant portal for anonbank-ne, February 1999 (token valid 1 h):"
echo "  $PORTAL_URL"
echo "  (a copy of the page: .demo/portal.html)"
if [ -n "${DEMO_PORTAL_WAIT:-}" ]; then
  echo "demo: keeping the pipeline up for ${DEMO_PORTAL_WAIT} s (DEMO_PORTAL_WAIT)"
  sleep "$DEMO_PORTAL_WAIT"
fi
echo

kill -TERM "$PIPE"; wait "$PIPE" || true
echo "demo: pipeline stopped (SIGTERM: drained, flushed, committed)"
echo
"$BIN" report --config "$CONFIG"
echo
echo "demo: Stripe (test server) next to ClickHouse, whole units per tenant and Stripe meter:"
STRIPE_OK=0
scripts/stripe_compare.py "$CONFIG" "http://127.0.0.1:$CH_PORT" "http://127.0.0.1:$STRIPE_PORT" || STRIPE_OK=1
[ "$GOT" = "$EXPECTED" ] && [ "$STRIPE_OK" = 0 ]
