#!/usr/bin/env bash
# Runs every test of callmeter against real servers: unit and property tests, integration
# tests (they start their own Apache Kafka and ClickHouse processes), the real-data test once
# more on tansu (the Java-free broker), the DDL and the contract's queries on a current
# ClickHouse engine (chDB), and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

# The features turn on `callmeter bench` (bench) and the Stripe test double (testkit), which
# the integration tests use; the production build (no features) is linted too.
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo clippy --release --all-targets --all-features -- -D warnings
cargo test --release --all-targets --all-features
# The decoder's fuzz target (its own workspace) still builds against the library.
CARGO_TARGET_DIR=target cargo check --release --manifest-path fuzz/Cargo.toml
# The published event schemas (schemas/events/) equal the ones generated from the decoder.
cargo test --release --all-features --lib event_schemas_are_in_sync
BROKER=tansu cargo test --release --all-features --test it realdata
python3 scripts/check_ddl_current.py
if [ -d prometheus/tests ]; then
  for t in prometheus/tests/*.yml; do promtool test rules "$t"; done
fi
if [ -f prometheus/prometheus.yml ]; then
  promtool check config prometheus/prometheus.yml
fi
if [ -f docker-compose.yml ]; then
  # The compose file takes its passwords from the environment; any values do for the check.
  CLICKHOUSE_PASSWORD=check GRAFANA_ADMIN_PASSWORD=check API_TOKEN=check \
    docker-compose -f docker-compose.yml config -q
fi
echo "all tests passed"
