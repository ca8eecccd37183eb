#!/usr/bin/env bash
# Runs every test of callmeter against real servers: unit and property tests, integration
# tests (each starts its own tansu and ClickHouse processes), and lint checks.
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
if [ -d prometheus/tests ]; then
  for t in prometheus/tests/*.yml; do promtool test rules "$t"; done
fi
if [ -f prometheus/prometheus.yml ]; then
  promtool check config prometheus/prometheus.yml
fi
if [ -f docker-compose.yml ]; then
  docker-compose -f docker-compose.yml config -q
fi
echo "all tests passed"
