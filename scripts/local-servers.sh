# Sourced by scripts/demo.sh and scripts/bench.sh: starts ClickHouse and tansu as plain
# processes with their state under a directory, on free loopback ports, and stops them (and
# anything else added to `pids`) when the calling script exits.
#
#   start_local_servers DIR ENGINE LABEL   (ENGINE: sqlite or memory; LABEL prefixes messages)
#
# Sets CH_PORT and KAFKA_PORT; returns once both answer.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

start_local_servers() {
  local dir=$1 engine=$2 label=$3 storage
  case "$engine" in
    memory) storage=memory://tansu/ ;;
    sqlite) storage=sqlite://tansu.db ;;
    *) echo "$label: the tansu engine must be memory or sqlite, not $engine" >&2; exit 2 ;;
  esac
  CH_PORT=$(free_port); KAFKA_PORT=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir/clickhouse/tmp" "$dir/tansu"

  echo "$label: starting ClickHouse on 127.0.0.1:$CH_PORT"
  clickhouse-server --config-file=/etc/clickhouse-server/config.xml -- \
    --path="$dir/clickhouse/" --tmp_path="$dir/clickhouse/tmp/" --http_port="$CH_PORT" \
    --tcp_port="$(free_port)" --interserver_http_port="$(free_port)" \
    --logger.log="$dir/clickhouse/log" --logger.errorlog="$dir/clickhouse/err" \
    >/dev/null 2>&1 &
  pids+=($!)
  echo "$label: starting tansu ($engine engine) on 127.0.0.1:$KAFKA_PORT"
  (cd "$dir/tansu" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "$storage" \
    >"$dir/tansu/log" 2>&1) &
  pids+=($!)

  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$CH_PORT/?query=SELECT%201" >/dev/null 2>&1 && break; sleep 0.2
  done
  for _ in $(seq 1 150); do
    (echo > "/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.2
  done
}
