#!/usr/bin/env bash
# sse-notify and Nchan (nginx + libnginx-mod-nchan, Redis storage), same machine, same Redis build,
# same load generator, in alternation; prints every RESULT line and a table of medians and ratios.
#   bench/compare.sh [RUNS]        (default 3)
# Scenarios: idle 10,000 streams; fan-out at maximal rate (10 s); fan-out at 2,000/s (10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools curl nginx libnginx-mod-nchan python3

runs="${1:-3}"
cargo build --release --quiet -p sse-notify -p sse-bench
results="$(mktemp)"
scenarios=("idle --streams 10000" "fanout --subscribers 1000 --duration 10" "fanout --subscribers 1000 --rate 2000 --duration 10")

# One Nchan (1 worker, Redis store) on its own Redis; the run's RESULT line is appended to $results.
run_nchan() {
  local work redis_port port master worker
  work="$(mktemp -d)"
  redis_port="$(free_port 26379)"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis.log" --maxclients 20000 &
  local redis_pid=$!
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
  port="$(free_port 28080)"
  mkdir -p "$work/nginx/conf" "$work/nginx/logs"
  sed "s/@PORT@/$port/" bench/nchan.conf >"$work/nginx/conf/nginx.conf"
  printf 'nchan_use_redis on;\nnchan_redis_url "redis://127.0.0.1:%s";\n' "$redis_port" >"$work/nginx/conf/storage.conf"
  nginx -p "$work/nginx/" -c conf/nginx.conf -g 'worker_processes 1;' &
  master=$!
  until curl -s -o /dev/null "http://127.0.0.1:$port/nchan_status"; do sleep 0.05; done
  worker="$(pgrep -P "$master" | head -1)"
  ./target/release/sse-bench "$@" --target nchan --addr "127.0.0.1:$port" --server-pid "$worker" \
    --redis-port "$redis_port" --redis-pid "$redis_pid" | grep '^RESULT' | tee -a "$results"
  kill "$master" "$redis_pid" 2>/dev/null || true
  wait "$master" "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}

for run in $(seq 1 "$runs"); do
  for scenario in "${scenarios[@]}"; do
    echo "== run $run: $scenario" >&2
    # shellcheck disable=SC2086  # the scenario is a word list on purpose
    bench/run.sh $scenario | grep '^RESULT' | tee -a "$results"
    # shellcheck disable=SC2086
    run_nchan $scenario
  done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line.split(" ", 1)[1]) for line in open(sys.argv[1]) if line.startswith("RESULT ")]
def median(scenario, target, field):
    values = [r[field] for r in rows if r["scenario"] == scenario and r["target"] == target and r.get(field) is not None]
    return statistics.median(values) if values else None
table = [
    ("idle", "pss_bytes_per_stream", "idle memory per stream (PSS, bytes), 10k streams", "lower"),
    ("idle", "redis_connections", "Redis connections held, 10k streams", "lower"),
    ("idle", "connect_ms_p99", "connect p99 (ms), 10k streams", "lower"),
    ("fanout-max", "delivered_per_sec", "max-rate fan-out, delivered/s", "higher"),
    ("fanout-max", "latency_ms_p99", "max-rate fan-out, p99 (ms)", "lower"),
    ("fanout-max", "lost", "max-rate fan-out, lost", "lower"),
    ("fanout-max", "duplicates", "max-rate fan-out, duplicates", "lower"),
    ("fanout-fixed", "latency_ms_p50", "2,000/s fan-out, p50 (ms)", "lower"),
    ("fanout-fixed", "latency_ms_p99", "2,000/s fan-out, p99 (ms)", "lower"),
    ("fanout-max", "cpu_pct_server", "max-rate: server CPU (% of a core)", "lower"),
    ("fanout-max", "cpu_pct_redis", "max-rate: Redis CPU (% of a core)", "lower"),
    ("fanout-max", "cpu_pct_loadgen", "max-rate: load generator CPU (% of a core)", "-"),
]
print("| metric (median of runs) | sse-notify | Nchan (Redis) | ours / Nchan |")
print("|---|---|---|---|")
for scenario, field, label, better in table:
    ours, theirs = median(scenario, "sse-notify", field), median(scenario, "nchan", field)
    ratio = f"{ours / theirs:.2f}" if ours is not None and theirs else "–"
    print(f"| {label} | {ours} | {theirs} | {ratio} |")
PY
