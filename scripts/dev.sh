#!/usr/bin/env bash
# Runs sse-notify in its development configuration, with a Redis of its own and the demo page.
#   scripts/dev.sh                 # http://127.0.0.1:8080
#   PORT=9000 REDIS_PORT=6400 scripts/dev.sh
# Installs redis-server if it is missing. Redis data (append-only file) lives in .dev/redis, so
# notifications survive restarts of this script. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_apt build-essential zlib1g-dev redis-server redis-tools

PORT="${PORT:-8080}"
REDIS_PORT="${REDIS_PORT:-$(free_port 6380)}"
PUBLISH_TOKEN="${PUBLISH_TOKEN:-dev-publish-token}"
JWT_SECRET="${JWT_SECRET:-dev-jwt-secret}"
mkdir -p .dev/redis

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/.dev/redis" \
  --appendonly yes --save "" --logfile "$PWD/.dev/redis/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  kill -0 "$redis_pid" 2>/dev/null || { echo "redis-server failed; see .dev/redis/redis.log" >&2; exit 1; }
  sleep 0.1
done

cargo build --release --quiet
cat >&2 <<MSG

  sse-notify (dev): member tokens signed with the dev secret below — never expose this setup.
  Demo page:  http://127.0.0.1:$PORT/?member=demo#publish_token=$PUBLISH_TOKEN&dev_jwt_secret=$JWT_SECRET
  Publish:    curl -X POST http://127.0.0.1:$PORT/notifications -H 'authorization: Bearer $PUBLISH_TOKEN' \\
                -H 'content-type: application/json' -d '{"member_id":"demo","type":"hello","content":{"text":"hi"}}'
  Redis:      redis://127.0.0.1:$REDIS_PORT (data in .dev/redis)

MSG
LISTEN_ADDR="127.0.0.1:$PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" AUTH_MODE=jwt JWT_SECRET="$JWT_SECRET" \
  PUBLISH_TOKEN="$PUBLISH_TOKEN" RUST_LOG="${RUST_LOG:-info}" ./target/release/sse-notify &
service_pid=$!
trap 'kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; kill "$redis_pid" 2>/dev/null || true' EXIT
wait "$service_pid"
