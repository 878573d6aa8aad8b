#!/usr/bin/env bash
# Re-records the bundled connectors' cassettes (plugins/*/tests/cassettes/*.json)
# against the local simulators. Run it after changing a connector on purpose;
# the tests replay the cassettes offline (`warden plugin test`), so a change in
# what a connector asks or answers shows up as a failing test until re-recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-guests.sh
cargo build --quiet -p warden -p warden-sim
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install --quiet aiosmtpd
export S1_API_TOKEN=s1-demo-token JIRA_API_TOKEN=jira-demo-token DEMO_TOKEN=demo-token
mail_dir=$(mktemp -d)
target/debug/warden-sim --origin 127.0.0.1:8700 --s1 127.0.0.1:8701 --jira 127.0.0.1:8702 >/dev/null &
sim=$!
python3 tests/smtp_server.py --port 8725 --dir "$mail_dir" >/dev/null &
smtp=$!
trap 'kill $sim $smtp 2>/dev/null || true; rm -rf "$mail_dir"' EXIT
for port in 8700 8701 8702 8725; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
record() { # plugin cassette input
  mkdir -p "plugins/$1/tests/cassettes"
  target/debug/warden action run "$1" --policy examples/warden.toml --team soc -q --input "$3" \
    --record "plugins/$1/tests/cassettes/$2.json" >/dev/null
}
record sentinelone-hunt hunt-seen-on-two-hosts \
  '{"console_url":"http://127.0.0.1:8701","credential":"sentinelone","ioc":{"kind":"domain","value":"evil.example"},"from":"-24h","page_size":2}'
record sentinelone-hunt hunt-seen-nowhere \
  '{"console_url":"http://127.0.0.1:8701","credential":"sentinelone","ioc":{"kind":"domain","value":"nobody-saw.example"},"from":"-24h"}'
record jira-ticket open-with-comment \
  '{"operation":"open","site_url":"http://127.0.0.1:8702","credential":"jira","project":"SEC","issue_type":"Task","priority":"High","labels":["ioc","warden"],"summary":"evil.example seen on 2 hosts","description":"WS-ALICE-01, WS-BOB-02","comment":"opened by warden","internal":true}'
record email notify-two-leads \
  '{"to":["soc-lead@corp.example","ir-lead@corp.example"],"subject":"[warden] evil.example seen on 2 host(s): SEC-1","text":"Domain evil.example was seen on 2 host(s): WS-ALICE-01, WS-BOB-02.\n\nTicket SEC-1 (To Do): http://127.0.0.1:8702/browse/SEC-1\n"}'
record sentinelone-isolate disconnect-two-agents \
  '{"console_url":"http://127.0.0.1:8701","credential":"sentinelone","action":"disconnect","uuids":["a1f0c9e2-0000-4000-8000-000000000001","b2e1d8f3-0000-4000-8000-000000000002"]}'
record http-fetch get-with-credential \
  '{"url":"http://127.0.0.1:8700/echo","credential":"demo"}'
echo "recorded: $(ls plugins/*/tests/cassettes/*.json | tr '\n' ' ')"
