#!/usr/bin/env bash
# Installs what callmeter's demo and tests need, when missing:
#   ClickHouse server (Debian package), Prometheus + promtool (Debian package),
#   docker-compose (to validate the compose file), curl, OpenJDK 17 and Maven (Debian
#   packages), the Apache Kafka broker jars (the version pinned in scripts/kafka/pom.xml,
#   from Maven Central into .tools/kafka/libs), tansu (a Kafka-compatible broker without
#   Java, built with cargo: about 8 minutes on 2 cores the first time) and chdb-core (PyPI:
#   a current ClickHouse engine in-process, for scripts/check_ddl_current.py), Chromium and
#   chromedriver (Debian packages, for the portal's browser test).
# Debian packages need root (or sudo).
set -euo pipefail

need_apt=()
command -v clickhouse-server >/dev/null 2>&1 || need_apt+=(clickhouse-server)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The portal's browser test: headless Chromium driven by chromedriver.
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)

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
# Apache Kafka: the broker's jars and their dependencies, from Maven Central, once per
# pinned version (a stamp file names the pom they came from).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KAFKA_HOME=$ROOT/.tools/kafka
if ! cmp -s "$ROOT/scripts/kafka/pom.xml" "$KAFKA_HOME/pom.xml" 2>/dev/null; then
  echo "setup: installing the Apache Kafka broker jars (mvn, Maven Central) into .tools/kafka/libs"
  rm -rf "$KAFKA_HOME"; mkdir -p "$KAFKA_HOME"
  mvn -q -B -Dstyle.color=never -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_HOME/libs"
  cp "$ROOT/scripts/kafka/pom.xml" "$KAFKA_HOME/pom.xml"
fi

# chdb-core: ClickHouse 26.x in-process, to check the DDL on a current engine.
if ! python3 -c 'import chdb' >/dev/null 2>&1; then
  echo "setup: installing chdb-core (pip)"
  python3 -m pip install --quiet chdb-core 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages chdb-core
fi

echo "setup: clickhouse-server $(command -v clickhouse-server), tansu $(command -v tansu), promtool $(command -v promtool), kafka $(ls "$KAFKA_HOME"/libs/kafka_2.13-*.jar | sed 's/.*kafka_2.13-//; s/.jar$//')"
