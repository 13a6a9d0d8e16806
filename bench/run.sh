#!/usr/bin/env bash
# Runs one sse-bench scenario against a fresh release build of sse-notify and a fresh Redis,
# each on a free loopback port, then stops both.
#   bench/run.sh idle --streams 10000
#   bench/run.sh fanout --subscribers 1000 --rate 1000 --duration 20
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools curl

cargo build --release --quiet -p sse-notify -p sse-bench
work="$(mktemp -d)"
redis_port="$(free_port 16379)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" --maxclients 20000 &
redis_pid=$!
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done

# The kafka scenario needs a broker with the topic in place before the service subscribes.
kafka_args=()
if [ "${1:-}" = kafka ]; then
  out="$(bash scripts/kafka-test-broker.sh start)"
  eval "$out"
  bash scripts/kafka-test-broker.sh create-topic bench 3
  export KAFKA_BROKERS="$KAFKA_BOOTSTRAP" KAFKA_TOPICS=bench KAFKA_GROUP_ID=bench
  kafka_args=(--brokers "$KAFKA_BOOTSTRAP" --topic bench)
  # --preloaded: fill the topic before the service starts, so its drain rate is what is measured.
  if [[ " $* " == *" --preloaded "* ]]; then
    produce_args=()
    for arg in "${@:2}"; do [ "$arg" = --preloaded ] || produce_args+=("$arg"); done
    ./target/release/sse-bench kafka --produce-only "${produce_args[@]}" "${kafka_args[@]}" | grep RESULT
  fi
fi

port="$(free_port 18080)"
LISTEN_ADDR="127.0.0.1:$port" REDIS_URL="redis://127.0.0.1:$redis_port" JWT_SECRET=bench-secret \
  PUBLISH_TOKEN=bench-publish-token HEARTBEAT_SECS=15 RUST_LOG=warn \
  ./target/release/sse-notify >"$work/sse-notify.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" "$redis_pid" 2>/dev/null || true; bash scripts/kafka-test-broker.sh stop; wait 2>/dev/null || true; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done

./target/release/sse-bench "$@" "${kafka_args[@]}" --addr "127.0.0.1:$port" --server-pid "$server_pid" \
  --redis-port "$redis_port" --redis-pid "$redis_pid"
