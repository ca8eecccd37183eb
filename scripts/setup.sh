#!/usr/bin/env bash
# Installs what callmeter's demo and tests need, when missing:
#   ClickHouse server (Debian package), Prometheus + promtool (Debian package),
#   docker-compose (to validate the compose file), curl, and tansu (a Kafka-compatible
#   broker, built with cargo: about 8 minutes on 2 cores the first time).
# Debian packages need root (or sudo).
set -euo pipefail

need_apt=()
command -v clickhouse-server >/dev/null 2>&1 || need_apt+=(clickhouse-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v tansu >/dev/null 2>&1; then
  echo "setup: installing tansu (cargo install, several minutes)"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
fi
echo "setup: clickhouse-server $(command -v clickhouse-server), tansu $(command -v tansu), promtool $(command -v promtool)"
