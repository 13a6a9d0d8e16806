#!/usr/bin/env bash
# A throw-away Kafka-protocol broker for tests: tansu 0.6.0 with its SQLite engine in a fresh temp
# dir, on a free 127.0.0.1 port. Built once per machine into the user's cache (~6-8 min on 2 cores).
#   scripts/kafka-test-broker.sh install
#   out="$(scripts/kafka-test-broker.sh start)" && eval "$out"   # exports KAFKA_BOOTSTRAP, KAFKA_BROKER_PID, KAFKA_BROKER_DIR
#   scripts/kafka-test-broker.sh create-topic NAME 3              # on the broker started above
#   scripts/kafka-test-broker.sh stop                            # stops the broker started above
#   scripts/kafka-test-broker.sh run DIR PORT                    # in the foreground (tests/it/support/kafka.rs)
# Why these choices (measured): plain `cargo install tansu` has no storage engine; `memory://`
# loses records when a consumer resumes inside a producer batch, `sqlite://` does not; a port in
# use makes tansu exit 0, so readiness checks our pid and an anchored '^ready in' line.
set -euo pipefail
TANSU_VERSION=0.6.0
TANSU_ROOT="${TANSU_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/sse-notify/tansu-$TANSU_VERSION}"
TANSU_BIN="${TANSU_BIN:-$TANSU_ROOT/bin/tansu}"

install_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "tansu $TANSU_VERSION"; then
    return 0
  fi
  echo "building tansu $TANSU_VERSION into $TANSU_ROOT (once per machine, ~6-8 min on 2 cores)" >&2
  CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version "$TANSU_VERSION" --locked \
    --features libsql --debug --root "$TANSU_ROOT" >&2
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# run DIR PORT: the one way tansu is launched (here and by the Rust tests), in the foreground.
# From an empty DIR and a cleaned environment: tansu reads a .env and several variables.
run() {
  [ -x "$TANSU_BIN" ] || { echo "tansu is not installed at $TANSU_BIN: run $0 install" >&2; exit 1; }
  cd "$1" && exec env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u CLUSTER_ID \
    -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT NO_COLOR=1 \
    "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$2" \
    --advertised-listener-url "tcp://127.0.0.1:$2" \
    --storage-engine sqlite://tansu.db
}

start() {
  install_tansu
  local port="${KAFKA_PORT:-$(free_port)}"
  local dir; dir="$(mktemp -d /tmp/kafka-test.XXXXXX)"
  ( run "$dir" "$port" ) >"$dir/broker.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/broker.pid"
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then echo "tansu exited early:" >&2; cat "$dir/broker.log" >&2; return 1; fi
    if grep -q '^ready in' "$dir/broker.log" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "export KAFKA_BOOTSTRAP=127.0.0.1:$port KAFKA_BROKER_PID=$pid KAFKA_BROKER_DIR=$dir"
      return 0
    fi
    sleep 0.1
  done
  echo "tansu not ready after 10 s" >&2; cat "$dir/broker.log" >&2; kill "$pid" 2>/dev/null || true; return 1
}

stop() {
  local pid="${KAFKA_BROKER_PID:-}"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  [ -n "${KAFKA_BROKER_DIR:-}" ] && rm -rf "$KAFKA_BROKER_DIR"
  return 0
}

# create-topic NAME PARTITIONS: on the broker started above (KAFKA_BOOTSTRAP).
create_topic() {
  "$TANSU_BIN" topic create --broker "tcp://${KAFKA_BOOTSTRAP:?start the broker first}" --partitions "$2" "$1" >/dev/null
}

case "${1:-}" in
  start) start ;;
  run) run "$2" "$3" ;;
  stop) stop ;;
  install) install_tansu ;;
  create-topic) create_topic "$2" "${3:-1}" ;;
  *) echo "usage: $0 install|start|stop|create-topic NAME [PARTITIONS]|run DIR PORT" >&2; exit 2 ;;
esac
