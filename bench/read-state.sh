#!/usr/bin/env bash
# The cost of an exact unread count: GET /notifications/unread for a member with 10 and one with
# 10,000 retained notifications (MAX_PER_MEMBER's default), on a release build and a fresh Redis.
# Reports requests/s (wrk, 2 threads, 32 keep-alive connections, 10 s) and Redis's own time per
# call (INFO commandstats, the unread script's EVALSHA).
#   bench/read-state.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools curl wrk python3
cargo build --release --quiet -p sse-notify
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
redis_port="$(free_port 16777)"
port="$(free_port 18777)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
wait_until 10 "redis on $redis_port" redis_up "$redis_port"
LISTEN_ADDR="127.0.0.1:$port" REDIS_URL="redis://127.0.0.1:$redis_port" AUTH_MODE=gateway \
  PUBLISH_TOKEN=t RUST_LOG=warn ./target/release/sse-notify 2>"$work/sse-notify.log" &
pids+=($!)
wait_until 30 "sse-notify to be ready" http_ok "http://127.0.0.1:$port/readyz"

# Fill: `small` gets 10 notifications, `large` 10,000, through the service (so entries carry
# their ordinals as in production); half of each is then marked read.
python3 - "$port" <<'PY'
import http.client, json, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
def post(path, body, headers):
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **headers})
    response = conn.getresponse()
    data = response.read()
    assert response.status in (200, 201), (response.status, data)
    return json.loads(data)
for member, count in (("small", 10), ("large", 10_000)):
    ids = [post("/notifications", {"member_id": member, "content": {"n": n, "text": "a notification of typical size"}},
                {"authorization": "Bearer t"})["ids"][0] for n in range(count)]
    post("/notifications/read", {"up_to": ids[count // 2 - 1]}, {"member_id": member})
PY

for member in small large; do
  redis-cli -p "$redis_port" config resetstat >/dev/null
  out="$(wrk -t2 -c32 -d10s -H "member_id: $member" "http://127.0.0.1:$port/notifications/unread")"
  rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(awk '/Latency/ {print $2}' <<<"$out")"
  usec="$(redis-cli -p "$redis_port" info commandstats | grep '^cmdstat_evalsha:' | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')"
  retained="$(curl -sf -H "member_id: $member" "http://127.0.0.1:$port/notifications/unread")"
  echo "RESULT {\"scenario\": \"unread\", \"member\": \"$member\", \"requests_per_s\": $rps, \"latency_avg\": \"$p50\", \"redis_usec_per_call\": $usec, \"state\": $retained}"
done
