#!/usr/bin/env bash
# The README demo: start the local simulators, run the example against them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-guests.sh
cargo build --quiet -p warden -p warden-sim
target/debug/warden-sim --origin 127.0.0.1:8700 >/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null' EXIT
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/8700) 2>/dev/null && break; sleep 0.1; done

export DEMO_TOKEN=demo-token-not-a-real-secret
echo "== warden action run http-fetch (allowed, with the demo credential injected by the host)"
target/debug/warden action run http-fetch --policy examples/warden.toml --audit \
  --input '{"url": "http://127.0.0.1:8700/echo", "credential": "demo"}'
echo
echo "== the same plugin asking for the cloud metadata endpoint (denied by policy)"
target/debug/warden action run http-fetch --policy examples/warden.toml --audit \
  --input '{"url": "http://169.254.169.254/latest/meta-data/"}' || true
