#!/usr/bin/env bash
# Builds the browser client as the service serves it and the package exports it:
# clients/js/sse-notify.js (the source) -> clients/js/dist/sse-notify.js (minified ES module), with
# the esbuild pinned in tests/browser/package-lock.json (`npm ci --prefix tests/browser` first).
#   scripts/client-build.sh           # rebuild; commit the result with the source
#   scripts/client-build.sh --check   # fail if the committed build is not the source's (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
esbuild=tests/browser/node_modules/.bin/esbuild
out=clients/js/dist/sse-notify.js
build() {
  "$esbuild" clients/js/sse-notify.js --minify --format=esm --target=es2022 --legal-comments=none \
    --banner:js="// sse-notify browser client (CLIENT.md v1), minified from clients/js/sse-notify.js" \
    --log-level=warning --outfile="$1"
}
if [ "${1:-}" = "--check" ]; then
  fresh="$(mktemp)"
  trap 'rm -f "$fresh"' EXIT
  build "$fresh"
  if ! cmp -s "$fresh" "$out"; then
    echo "$out is not the build of clients/js/sse-notify.js: run scripts/client-build.sh and commit it" >&2
    exit 1
  fi
  echo "$out is the build of its source"
else
  mkdir -p "$(dirname "$out")"
  build "$out"
fi
