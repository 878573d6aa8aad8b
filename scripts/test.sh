#!/usr/bin/env bash
# Builds the guests, then runs every test (unit, CLI, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-guests.sh
# The email tests need aiosmtpd (a real SMTP server); install it if missing.
python3 -c "import aiosmtpd" 2>/dev/null || python3 -m pip install --quiet aiosmtpd
# --all-targets also runs every benchmark once in quick mode, so they never rot.
cargo test --quiet --all-targets "$@"
