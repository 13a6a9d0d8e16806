#!/usr/bin/env bash
# The browser client's size as the service serves it (clients/js/dist/sse-notify.js, embedded at
# build time): bytes, and bytes after gzip -9, against the 6,144-byte budget of CLIENT.md.
set -euo pipefail
cd "$(dirname "$0")/.."
file=clients/js/dist/sse-notify.js
raw="$(wc -c <"$file")"
gz="$(gzip -9 -c "$file" | wc -c)"
echo "sse-notify.js: $raw bytes, $gz bytes gzip -9 (budget 6144)"
[ "$gz" -le 6144 ]
