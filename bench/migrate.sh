#!/usr/bin/env bash
# Times `sse-notify migrate-zset` on a fresh Redis filled with the old layout:
#   bench/migrate.sh [MEMBERS] [ENTRIES_PER_MEMBER]     (default 10000 x 100 = 1,000,000 entries)
# Entries are spread over the last 12 hours, ~60-byte JSON contents, a few sharing a millisecond.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools python3

members="${1:-10000}"
per_member="${2:-100}"
cargo build --release --quiet -p sse-notify
work="$(mktemp -d)"
port="$(free_port 16479)"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "$work/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
wait_until 10 "redis on $port" redis_up "$port"

# The old layout, written with redis-cli --pipe (raw RESP, fastest).
python3 - "$members" "$per_member" <<'PY' | redis-cli -p "$port" --pipe >/dev/null
import json, sys, time
members, per = int(sys.argv[1]), int(sys.argv[2])
now = int(time.time() * 1000)
out = sys.stdout.buffer
def cmd(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    out.write(b"".join(parts))
for m in range(members):
    args = ["ZADD", str(1000000 + m)]
    for n in range(per):
        t = now - 12 * 3600 * 1000 + (m * 7919 + n * 431) % (12 * 3600 * 1000) // 10 * 10
        args += [t, json.dumps({"content": {"text": f"notification {n} for {m}", "n": n}, "time": t}, separators=(",", ":"))]
    cmd(*args)
    cmd("EXPIRE", str(1000000 + m), 86400)
PY
echo "filled: $(redis-cli -p "$port" dbsize) keys, $((members * per_member)) entries" >&2
start=$(date +%s.%N)
REDIS_URL="redis://127.0.0.1:$port" RUST_LOG=warn ./target/release/sse-notify migrate-zset --batch 500
end=$(date +%s.%N)
echo "wall time: $(python3 -c "print(round($end - $start, 2))") s" >&2
echo "streams: $(redis-cli -p "$port" --scan --pattern 'n:*:s:*' | wc -l)" >&2
