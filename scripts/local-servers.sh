# Sourced by scripts/demo.sh and scripts/bench.sh: starts ClickHouse and a Kafka broker as
# plain processes with their state under a directory, on free loopback ports, and stops them
# (and anything else added to `pids`) when the calling script exits.
#
#   start_local_servers DIR ENGINE LABEL   (LABEL prefixes messages)
#   create_topic NAME PARTITIONS           (on the broker started; retention unlimited)
#   create_pipeline_topics                 (the default configuration's topics: events in
#                                           4 partitions, dead letters, alerts, statements)
#   wait_ready PORT                        (until the pipeline's /readyz on PORT answers 200,
#                                           at most 60 s)
#
# BROKER=kafka (default): Apache Kafka, the version pinned in scripts/kafka/pom.xml
#   (installed by scripts/setup.sh into .tools/kafka/libs), in KRaft combined mode
#   (broker and controller in one JVM, -Xmx512m). ENGINE is ignored.
# BROKER=tansu: tansu, a Kafka-compatible broker without Java; ENGINE is its storage
#   engine, memory or sqlite.
#
# Sets CH_PORT and KAFKA_PORT; returns once both answer.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BROKER=${BROKER:-kafka}
KAFKA_LIBS=${KAFKA_LIBS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools/kafka/libs}
KAFKA_LOG4J=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka/log4j2.yaml

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

kafka_java() { java -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIBS/*" "$@"; }

# Apache Kafka in KRaft combined mode, all state under $1.
start_kafka() {
  local dir=$1 label=$2 ctl cluster started
  ctl=$(free_port)
  mkdir -p "$dir/data"
  sed -e "s|@PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$ctl|g" -e "s|@DATA@|$dir/data|g" \
    "$(dirname "$KAFKA_LOG4J")/server.properties" >"$dir/server.properties"
  cluster=$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  # --cluster-id=ID: an id may start with "-", which the tool would take for an option.
  kafka_java kafka.tools.StorageTool format --standalone --cluster-id="$cluster" \
    -c "$dir/server.properties" >"$dir/format.log" 2>&1
  echo "$label: starting Apache Kafka $(ls "$KAFKA_LIBS"/kafka_2.13-*.jar | sed 's/.*kafka_2.13-//; s/.jar$//') (KRaft) on 127.0.0.1:$KAFKA_PORT"
  started=$(date +%s.%N)
  (cd "$dir" && exec java -Xms256m -Xmx512m -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/log" 2>&1) &
  pids+=($!)
  KAFKA_PID=$!
  for _ in $(seq 1 600); do
    (echo > "/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1
  done
  echo "$label: Apache Kafka answers after $(python3 -c "import time; print(f'{time.time() - $started:.1f}')") s"
}

start_local_servers() {
  local dir=$1 engine=$2 label=$3 storage
  if [ "$BROKER" = tansu ]; then
    case "$engine" in
      memory) storage=memory://tansu/ ;;
      sqlite) storage=sqlite://tansu.db ;;
      *) echo "$label: the tansu engine must be memory or sqlite, not $engine" >&2; exit 2 ;;
    esac
  elif [ "$BROKER" != kafka ]; then
    echo "$label: BROKER must be kafka or tansu, not $BROKER" >&2; exit 2
  fi
  CH_PORT=$(free_port); KAFKA_PORT=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir/clickhouse/tmp" "$dir/$BROKER"

  echo "$label: starting ClickHouse on 127.0.0.1:$CH_PORT"
  clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$dir/clickhouse/" --tmp_path="$dir/clickhouse/tmp/" --http_port="$CH_PORT" \
    --tcp_port="$(free_port)" --interserver_http_port="$(free_port)" \
    --logger.log="$dir/clickhouse/log" --logger.errorlog="$dir/clickhouse/err" \
    >/dev/null 2>&1 &
  pids+=($!)
  if [ "$BROKER" = kafka ]; then
    start_kafka "$dir/kafka" "$label"
  else
    echo "$label: starting tansu ($engine engine) on 127.0.0.1:$KAFKA_PORT"
    (cd "$dir/tansu" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "$storage" \
      >"$dir/tansu/log" 2>&1) &
    pids+=($!)
    for _ in $(seq 1 150); do
      (echo > "/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.2
    done
  fi

  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$CH_PORT/?query=SELECT%201" >/dev/null 2>&1 && break; sleep 0.2
  done
}

create_topic() {
  local name=$1 partitions=$2
  if [ "$BROKER" = kafka ]; then
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --topic "$name" --partitions "$partitions" --config retention.ms=-1 >/dev/null
  else
    tansu topic create "$name" --partitions "$partitions" --config retention.ms=-1 \
      --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
  fi
}

create_pipeline_topics() {
  for t in call-events:4 call-events.dlq:1 usage-alerts:1 usage-statements:1; do
    create_topic "${t%%:*}" "${t##*:}"
  done
}

wait_ready() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.2
  done
}
