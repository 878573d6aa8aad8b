#!/usr/bin/env bash
# Builds every guest (plugins and test guests) for wasm32-wasip2.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target add wasm32-wasip2
guests=()
for dir in plugins/*/ tests/hostile/*/; do
  [ -f "$dir/Cargo.toml" ] || continue
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)
  # Library crates such as an SDK are not components.
  grep -q 'cdylib' "$dir/Cargo.toml" && guests+=(-p "$name")
done
cargo build --quiet --profile guest --target wasm32-wasip2 "${guests[@]}"

# Connectors in other languages, when their toolchains are here (CI installs them).
out=target/wasm32-wasip2/guest
newer() { [ -f "$1" ] && [ -z "$(find "${@:2}" -newer "$1" 2>/dev/null | head -1)" ]; }
if command -v npm >/dev/null; then
  if ! newer "$out/js_fetch.wasm" plugins/js-fetch/fetch.js plugins/js-fetch/build.mjs wit; then
    (cd plugins/js-fetch && { [ -d node_modules ] || npm ci --no-audit --no-fund --silent; } && node build.mjs "../../$out/js_fetch.wasm" >/dev/null)
  fi
else
  echo "build-guests: npm not found; skipping the JavaScript example" >&2
fi
command -v componentize-py >/dev/null || { command -v pyenv >/dev/null && pyenv rehash; } || true
if command -v componentize-py >/dev/null; then
  if ! newer "$out/py_fetch.wasm" plugins/py-fetch/app.py plugins/py-fetch/warden_http.py wit; then
    (cd plugins/py-fetch && componentize-py -d ../../wit -w action-http componentize app -o "../../$out/py_fetch.wasm" >/dev/null)
  fi
else
  echo "build-guests: componentize-py not found (pip install componentize-py); skipping the Python example" >&2
fi
