#!/usr/bin/env bash
# Runs one sse-bench scenario against a fresh release build of sse-notify and a fresh Redis,
# each on a free loopback port, then stops both.
#   bench/run.sh idle --streams 10000
#   bench/run.sh fanout --subscribers 1000 --rate 1000 --duration 20
#   bench/run.sh publish --publishers 32 --duration 10   (then redis-benchmark's ceilings)
#   REDIS_CLUSTER=1 bench/run.sh publish ...             (on a local 3+3 Redis Cluster)
#   PUBLISH_WAIT_REPLICAS=1 ...                          (any service setting passes through)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools curl

cargo build --release --quiet -p sse-notify -p sse-bench
work="$(mktemp -d)"
# Everything started is stopped on any exit: the trap is set before the first start.
pids=()
kafka_started=0
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  [ "$kafka_started" = 0 ] || bash scripts/kafka-test-broker.sh stop
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
redis_port="$(free_port 16379)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" --maxclients 20000 &
redis_pid=$!
pids+=("$redis_pid")
wait_until 10 "redis on $redis_port" redis_up "$redis_port"
redis_url="redis://127.0.0.1:$redis_port"
redis_args=(--redis-port "$redis_port" --redis-pid "$redis_pid")

# REDIS_CLUSTER=1: a local Redis Cluster (3 masters + 3 replicas) instead of the single Redis.
# Redis CPU is then not reported (six processes); the server's connections to it are counted.
cluster_ports=()
if [ "${REDIS_CLUSTER:-0}" = 1 ]; then
  next=21000
  for _ in 1 2 3 4 5 6; do
    port="$(free_port "$next")"
    cluster_ports+=("$port")
    next=$((port + 1))
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000 --save "" \
      --appendonly no --dir "$work" --logfile "$work/redis-$port.log" --maxclients 20000 &
    pids+=($!)
  done
  for port in "${cluster_ports[@]}"; do
    wait_until 10 "redis on $port" redis_up "$port"
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") \
    --cluster-replicas 1 --cluster-yes >/dev/null
  cluster_ok() { redis-cli -p "$1" cluster info | grep -q cluster_state:ok; }
  replica_online() { redis-cli -p "$1" info replication | grep -q 'slave0:.*state=online'; }
  for port in "${cluster_ports[@]}"; do
    wait_until 30 "the cluster state on $port" cluster_ok "$port"
  done
  # Replicas in sync before measuring (a WAIT would otherwise time out on the initial sync).
  for port in "${cluster_ports[@]}"; do
    if redis-cli -p "$port" role | head -1 | grep -q master; then
      wait_until 30 "the replica of $port" replica_online "$port"
    fi
  done
  redis_url="redis+cluster://$(printf '127.0.0.1:%s,' "${cluster_ports[@]:0:3}" | sed 's/,$//')"
  redis_args=()
fi

# The kafka scenario needs a broker with the topic in place before the service subscribes.
kafka_args=()
if [ "${1:-}" = kafka ]; then
  out="$(bash scripts/kafka-test-broker.sh start)"
  eval "$out"
  kafka_started=1
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
LISTEN_ADDR="127.0.0.1:$port" REDIS_URL="$redis_url" JWT_SECRET=bench-secret \
  PUBLISH_TOKEN=bench-publish-token HEARTBEAT_SECS=15 RUST_LOG=warn \
  ./target/release/sse-notify >"$work/sse-notify.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_until 30 "sse-notify to be ready (log: $work/sse-notify.log)" http_ok "http://127.0.0.1:$port/readyz"

./target/release/sse-bench "$@" "${kafka_args[@]}" --addr "127.0.0.1:$port" --server-pid "$server_pid" \
  "${redis_args[@]}"
if [ ${#cluster_ports[@]} -gt 0 ]; then
  pattern="$(printf ':%s$|' "${cluster_ports[@]}" | sed 's/|$//')"
  connections="$(ss -Htnp state established | grep "pid=$server_pid," | awk '{print $4}' | grep -cE "$pattern" || true)"
  echo "RESULT {\"scenario\": \"cluster-connections\", \"target\": \"sse-notify\", \"redis_connections\": $connections}"
fi

# After HTTP publishing: how many publishes each publish.lua call carried (group commit).
if [ "${1:-}" = publish ]; then
  curl -fsS "http://127.0.0.1:$port/metrics" | python3 -c 'import json, sys
m = {l.split()[0]: float(l.split()[1]) for l in sys.stdin if l.startswith("sse_notify_publish_call_publishes_")}
calls, carried = m.get("sse_notify_publish_call_publishes_count", 0), m.get("sse_notify_publish_call_publishes_sum", 0)
print("RESULT " + json.dumps({"scenario": "publish-calls", "target": "sse-notify", "calls": calls, "publishes": carried, "publishes_per_call": round(carried / calls, 2) if calls else None}))'
fi

# After HTTP publishing: the same Redis's ceiling, from redis-benchmark with as many clients as
# publishers, over 1,000 streams. First a bare XADD, then publish.lua alone (what one HTTP publish
# asks of Redis), so the report can say where the time goes.
if [ "${1:-}" = publish ] && [ ${#cluster_ports[@]} -eq 0 ]; then
  clients=32
  for ((i = 2; i <= $#; i++)); do
    if [ "${!i}" = --publishers ]; then j=$((i + 1)); clients="${!j}"; fi
  done
  content='{"n":1,"text":"a notification of typical size"}'
  ceiling() { # scenario, command...
    local name="$1"; shift
    redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$clients" -n 400000 -r 1000 --csv "$@" |
      python3 -c 'import json, sys
# The last CSV line; the command in its first field may hold unescaped quotes, so count from the end:
# rps, avg, min, p50, p95, p99, max.
row = sys.stdin.read().strip().splitlines()[-1].strip("\"").split("\",\"")[-7:]
print("RESULT " + json.dumps({"scenario": sys.argv[1], "target": "redis-benchmark", "clients": int(sys.argv[2]), "requests_per_sec": round(float(row[0])), "latency_ms_p50": float(row[3]), "latency_ms_p99": float(row[5])}))' "$name" "$clients"
  }
  ceiling xadd-ceiling XADD 'bench:s:__rand_int__' '*' t bench c "$content"
  # The script as the service loads it: the preludes first (src/store/scripts.rs).
  script="$(cat migrations-lua/_epoch.lua; echo; cat migrations-lua/_read.lua; echo; cat migrations-lua/publish.lua)"
  sha="$(redis-cli -p "$redis_port" SCRIPT LOAD "$script")"
  ceiling lua-ceiling EVALSHA "$sha" 3 'n:{b}:s:__rand_int__' 'n:{b}:live' 'n:{b}:epoch' \
    86400000 10000 10000 1 0 bench "$content" 'member-__rand_int__' 0-0
  # One call carrying 8 publishes, as the group commit sends under load (8 member-appends per call).
  keys=() args=()
  for _ in 1 2 3 4 5 6 7 8; do
    keys+=('n:{b}:s:__rand_int__' 'n:{b}:live' 'n:{b}:epoch')
    args+=(1 0 bench "$content" 'member-__rand_int__' 0-0)
  done
  ceiling lua-ceiling-x8 EVALSHA "$sha" 24 "${keys[@]}" 86400000 10000 10000 "${args[@]}"
fi
