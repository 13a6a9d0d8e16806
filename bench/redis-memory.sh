#!/usr/bin/env bash
# Redis memory per retained notification: 1,000 members x 100 notifications of ~110-byte content,
# published through a release build of sse-notify into a fresh Redis.
#   bench/redis-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools curl python3
cargo build --release --quiet -p sse-notify
work="$(mktemp -d)"
redis_port="$(free_port 16555)"
port="$(free_port 18555)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_until 10 "redis on $redis_port" redis_up "$redis_port"
LISTEN_ADDR="127.0.0.1:$port" REDIS_URL="redis://127.0.0.1:$redis_port" AUTH_MODE=gateway PUBLISH_TOKEN=t RUST_LOG=warn \
  ./target/release/sse-notify 2>"$work/sse-notify.log" &
pids+=($!)
wait_until 30 "sse-notify to be ready" http_ok "http://127.0.0.1:$port/readyz"

members="$(python3 -c 'import json; print(json.dumps(["member-%d" % i for i in range(1000)]))')"
text='"a notification of about one hundred bytes of JSON text, as an application would send it.."'
used() { redis-cli -p "$redis_port" info memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r'; }
before="$(used)"
for i in $(seq 1 100); do
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/notifications" -H 'authorization: Bearer t' \
    -H 'content-type: application/json' \
    -d "{\"member_ids\": $members, \"type\": \"order.shipped\", \"content\": {\"n\": $i, \"text\": $text}}"
done
after="$(used)"
echo "content: $(printf '{"n":1,"text":%s}' "$text" | wc -c) bytes"
echo "used_memory delta per notification (member stream + fan-out copy): $(((after - before) / 100000)) bytes"
key="$(redis-cli -p "$redis_port" --scan --pattern 'n:*:s:member-1' | head -1)"
echo "one member stream of 100 notifications: $(redis-cli -p "$redis_port" memory usage "$key" samples 0) bytes"
for k in $(redis-cli -p "$redis_port" --scan --pattern 'n:*:live' | head -2); do
  echo "fan-out stream $k: $(redis-cli -p "$redis_port" xlen "$k") entries, $(redis-cli -p "$redis_port" memory usage "$k" samples 0) bytes"
done
