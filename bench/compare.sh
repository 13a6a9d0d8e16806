#!/usr/bin/env bash
# sse-notify and Nchan (nginx + libnginx-mod-nchan, Redis storage) on the same machine, same Redis
# build, same load generator, every scenario in alternation; then writes the medians, ratios and
# targets into BENCHMARKS.md (between its `compare.sh` markers) and the raw RESULT lines into
# bench/results/compare.jsonl.
#   bench/compare.sh [RUNS]        (default 3; takes ~7 min per run)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_apt redis-server redis-tools curl nginx libnginx-mod-nchan python3

runs="${1:-3}"
cargo build --release --quiet -p sse-notify -p sse-bench
results="$(mktemp)"
scenarios=(
  "idle --streams 10000"
  "idle --streams 18000"
  "fanout --subscribers 1000 --publishers 32 --duration 20"
  "fanout --subscribers 1000 --rate 2000 --duration 20"
  "publish --publishers 32 --duration 10"
  "replay --members 10000 --missed 100"
)

# What run_nchan started, stopped by the trap if the script ends (or is interrupted) mid-run.
nchan_pids=()
nchan_work=""
stop_nchan() {
  kill "${nchan_pids[@]}" 2>/dev/null || true
  wait "${nchan_pids[@]}" 2>/dev/null || true
  [ -z "$nchan_work" ] || rm -rf "$nchan_work"
  nchan_pids=()
  nchan_work=""
}
trap 'stop_nchan; rm -f "$results"' EXIT

# One Nchan (1 worker, Redis store) on its own Redis; the run's RESULT line is appended to $results.
run_nchan() {
  local work redis_port port master worker
  work="$(mktemp -d)"
  nchan_work="$work"
  redis_port="$(free_port 26379)"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis.log" --maxclients 20000 &
  local redis_pid=$!
  nchan_pids+=("$redis_pid")
  wait_until 10 "redis on $redis_port" redis_up "$redis_port"
  port="$(free_port 28080)"
  mkdir -p "$work/nginx/conf" "$work/nginx/logs"
  sed "s/@PORT@/$port/" bench/nchan.conf >"$work/nginx/conf/nginx.conf"
  printf 'nchan_use_redis on;\nnchan_redis_url "redis://127.0.0.1:%s";\n' "$redis_port" >"$work/nginx/conf/storage.conf"
  nginx -p "$work/nginx/" -c conf/nginx.conf -g 'worker_processes 1;' 2>/dev/null &
  master=$!
  nchan_pids+=("$master")
  wait_until 10 "nginx on $port" http_ok "http://127.0.0.1:$port/nchan_status"
  worker="$(pgrep -P "$master" | head -1)"
  ./target/release/sse-bench "$@" --target nchan --addr "127.0.0.1:$port" --server-pid "$worker" \
    --redis-port "$redis_port" --redis-pid "$redis_pid" | grep '^RESULT' | tee -a "$results"
  stop_nchan
}

started="$(date -u '+%Y-%m-%d %H:%M UTC')"
for run in $(seq 1 "$runs"); do
  for scenario in "${scenarios[@]}"; do
    echo "== run $run/$runs: $scenario" >&2
    # shellcheck disable=SC2086  # the scenario is a word list on purpose
    bench/run.sh $scenario | grep '^RESULT' | tee -a "$results"
    # shellcheck disable=SC2086
    run_nchan $scenario
  done
done

export BENCH_STARTED="$started" BENCH_RUNS="$runs"
export BENCH_MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
export BENCH_VERSIONS="sse-notify $(git rev-parse --short HEAD)$(git diff --quiet -- src migrations-lua bench Cargo.toml Cargo.lock || echo '+changes'), $(rustc --version | cut -d' ' -f1-2), $(redis-server --version | grep -o 'v=[^ ]*' | sed 's/v=/Redis /'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'), libnginx-mod-nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan)"
mkdir -p bench/results
sed 's/^RESULT //' "$results" >bench/results/compare.jsonl
python3 bench/report.py bench/results/compare.jsonl BENCHMARKS.md
echo "BENCHMARKS.md updated (section between the compare.sh markers)" >&2
