#!/usr/bin/env bash
# Soaks the fault-injection checker (tests/it/chaos): schedules of two minutes each, seeds S, S+1,
# ... until N minutes have passed or a violation is found; prints each schedule's report (seed,
# clients, sessions, notifications, faults by kind, violations, the first one in full) and the
# totals. Installs redis-server if missing; everything else is started by the test itself.
#
#   scripts/chaos.sh [--minutes N] [--seed S]     (defaults: 30 minutes from seed 1)
#
# A violation names its seed: CHAOS_SEEDS=S cargo test --test it chaos::check_fixed_seeds
# replays that schedule (45 s of faults), CHAOS_LOG=1 adds the instances' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

minutes=30
seed=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="${2:-}"; shift 2 ;;
    --seed) seed="${2:-}"; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
for value in "$minutes" "$seed"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "chaos.sh: --minutes and --seed take whole numbers" >&2; exit 64; }
done

ensure_apt build-essential zlib1g-dev redis-server redis-tools
CHAOS_MINUTES="$minutes" CHAOS_SEED="$seed" \
  cargo test --locked --test it chaos::soak -- --ignored --nocapture --test-threads 1
