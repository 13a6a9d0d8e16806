#!/usr/bin/env bash
# The browser client as a package (clients/js): `npm pack` it, install the tarball into a scratch
# app, import it in Node (ESM, exports map) and type-check tests/browser/package-check/usage.ts
# against the installed .d.ts with the TypeScript pinned in tests/browser/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

tarball="$(cd "$scratch" && npm pack --silent "$root/clients/js")"
cp tests/browser/package-check/usage.ts tests/browser/package-check/tsconfig.json "$scratch/"
cd "$scratch"
echo '{"name":"scratch-app","private":true,"type":"module"}' >package.json
npm install --silent --no-audit --no-fund --offline "./$tarball"
node --input-type=module -e 'import("sse-notify-client").then((m) => { if (typeof m.connect !== "function") throw new Error("no connect export"); })'
"$root/tests/browser/node_modules/.bin/tsc" -p tsconfig.json
echo "clients/js: $tarball installs, imports and type-checks"
