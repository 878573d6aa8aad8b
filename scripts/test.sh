#!/usr/bin/env bash
# Builds the guests, then runs every test (unit, CLI, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-guests.sh
cargo test --quiet "$@"
