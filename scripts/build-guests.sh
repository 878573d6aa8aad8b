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
