#!/usr/bin/env bash
# Builds the guests, then runs every test (unit, CLI, end to end, hostile,
# fuzz bursts, and every benchmark once in quick mode).
set -euo pipefail
cd "$(dirname "$0")/.."
# What the tests need beyond Rust: a real SMTP server (aiosmtpd) for the email
# tests, and componentize-py for the Python example (componentize-js for the
# JavaScript one comes from npm in build-guests.sh).
python3 -c "import aiosmtpd" 2>/dev/null || python3 -m pip install --quiet aiosmtpd
if ! command -v componentize-py >/dev/null; then
  python3 -m pip install --quiet componentize-py==0.25.1
  command -v pyenv >/dev/null && pyenv rehash || true
fi
./scripts/build-guests.sh
# --all-targets also runs every benchmark once in quick mode, so they never rot.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --quiet --all-targets "$@" 2>&1 | tee "$log"
# The template languages' renderers are compiled only into the evaluator guest;
# their own tests run natively with the feature that turns them on.
cargo test --quiet -p warden-eval --features evaluate "$@" 2>&1 | tee -a "$log"
# The connectors' own unit tests (input checks, request shapes, error mapping)
# run natively: the plugins are also rlibs, and their host imports are never called.
plugins=(-p slack-notify -p virustotal-lookup -p servicenow-incident -p crowdstrike-contain -p http-request)
cargo test --quiet --lib "${plugins[@]}" "$@" 2>&1 | tee -a "$log"
# One closing line for the whole run (cargo's last summary is often an empty target's).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
