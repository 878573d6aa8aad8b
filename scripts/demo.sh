#!/usr/bin/env bash
# The README demo: the threat-hunt story against the local simulators.
#
# Starts warden-sim (SentinelOne on :8701, Jira on :8702, Slack, VirusTotal,
# ServiceNow and CrowdStrike on :8703–:8706) and a real SMTP
# server (tests/smtp_server.py on :8725), then runs examples/stories/threat-hunt.yaml
# under examples/warden.toml: hunt → ticket → email. Runs are recorded in .warden/demo.db.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build-guests.sh
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install --quiet aiosmtpd
cargo build --quiet -p warden -p warden-sim

export S1_API_TOKEN=s1-demo-token JIRA_API_TOKEN=jira-demo-token DEMO_TOKEN=demo-token
# The connector pack's simulators (Slack, VirusTotal, ServiceNow, CrowdStrike on :8703–:8706).
export SLACK_BOT_TOKEN=xoxb-demo-token SLACK_SIGNING_SECRET=slack-demo-signing-secret VT_API_KEY=vt-demo-key \
  SERVICENOW_PASSWORD=snow-demo-password CS_CLIENT_ID=cs-demo-client CS_CLIENT_SECRET=cs-demo-secret
mail_dir=.warden/demo-mail
rm -rf "$mail_dir"
target/debug/warden-sim --origin 127.0.0.1:8700 --s1 127.0.0.1:8701 --jira 127.0.0.1:8702 >/dev/null &
sim=$!
python3 tests/smtp_server.py --port 8725 --dir "$mail_dir" >/dev/null &
smtp=$!
trap 'kill $sim $smtp 2>/dev/null || true' EXIT
for port in 8701 8702 8703 8704 8705 8706 8725; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

echo "== warden story run threat-hunt (indicator evil.example, seen on the simulated fleet)"
target/debug/warden story run examples/stories/threat-hunt.yaml \
  --policy examples/warden.toml --db .warden/demo.db \
  --input @examples/threat-hunt-input.json

echo
echo "== the email the leads received (read back from the SMTP server)"
python3 - "$mail_dir" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    m = json.loads(f.read_text())
    print(f"To: {', '.join(m['rcpt_tos'])}\nSubject: {m['subject']}\n\n{m['text'].strip()}\n")
PY

echo "== the same story for an indicator nobody saw (no ticket, no email)"
target/debug/warden story run examples/stories/threat-hunt.yaml -q \
  --policy examples/warden.toml --db .warden/demo.db \
  --input '{"indicator": {"kind": "domain", "value": "benign.example"}, "leads": ["soc-lead@corp.example"]}'

echo
echo "== warden serve: the same story started by a signed webhook"
export WARDEN_WEBHOOK_SECRET=demo-webhook-secret
target/debug/warden serve --policy examples/warden.toml --db .warden/demo.db --listen 127.0.0.1:8080 2>.warden/serve.log &
serve=$!
trap 'kill $sim $smtp $serve 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break; sleep 0.1; done
# warden's webhook signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<story>.<body>">
sign() {
  local ts story=${2:-threat-hunt}; ts=$(date +%s)
  printf 't=%s,v1=%s' "$ts" "$(printf '%s.%s.%s' "$ts" "$story" "$1" | python3 -c 'import hmac,hashlib,os,sys; print(hmac.new(os.environ["WARDEN_WEBHOOK_SECRET"].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())')"
}
# Polls run $1 until its state is one of the others; prints that state.
wait_for() {
  local run=$1 state; shift
  for _ in $(seq 1 300); do
    state=$(curl -s "http://127.0.0.1:8080/api/runs/$run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    for want in "$@" failed; do [ "$state" = "$want" ] && { echo "$state"; return; }; done
    sleep 0.2
  done
  echo "$state"
}
body='{"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"]}'
sig=$(sign "$body")
echo "curl -X POST http://127.0.0.1:8080/webhooks/threat-hunt -H 'X-Warden-Signature: $sig' -d '$body'"
accepted=$(curl -s -X POST http://127.0.0.1:8080/webhooks/threat-hunt \
  -H 'Content-Type: application/json' -H "X-Warden-Signature: $sig" -d "$body")
echo "$accepted"
run=$(printf '%s' "$accepted" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
echo "run $run: $(wait_for "$run" succeeded)"
curl -s "http://127.0.0.1:8080/api/runs/$run" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["output"], indent=2))'

echo
echo "== an approval: the same hunt, asking the lead whether to isolate the hosts"
body='{"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"], "ask_to_isolate": true}'
run=$(curl -s -X POST http://127.0.0.1:8080/webhooks/threat-hunt -H 'Content-Type: application/json' -H "X-Warden-Signature: $(sign "$body")" -d "$body" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
echo "run $run: $(wait_for "$run" waiting) (parked: no worker, no instance)"
curl -s http://127.0.0.1:8080/api/approvals | python3 -c 'import json,sys; [print("pending:", a["title"], "choices", a["choices"], "approvers", a["approvers"]) for a in json.load(sys.stdin)["approvals"] if a["run"] == sys.argv[1]]' "$run"
# The lead's email carries a link per choice; confirming "isolate" is a POST (a GET only shows the question).
link=$(python3 - "$mail_dir" <<'PY'
import json, pathlib, re, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    m = re.search(r"Isolate them from the network: (\S+)", json.loads(f.read_text())["text"])
    if m: print(m.group(1))
PY
)
link=$(printf '%s\n' "$link" | tail -1)
echo "the lead confirms: curl -X POST $link"
curl -s -o /dev/null -w "POST → %{http_code}\n" -X POST "$link" -d comment=contain
echo "run $run: $(wait_for "$run" succeeded)"
curl -s "http://127.0.0.1:8080/api/runs/$run" | python3 -c 'import json,sys; o=json.load(sys.stdin)["output"]; print(json.dumps({k: o.get(k) for k in ["ticket", "containment", "isolated"]}))'
echo
echo "== the connector pack: contain-host (VirusTotal → SentinelOne → ServiceNow → a question in Slack → CrowdStrike)"
body='{"indicator": {"kind": "domain", "value": "evil.example"}, "os_types": ["windows", "macos"], "approvers": ["slack:U0LEAD"], "crowdstrike_ids": ["4f9a6c1de2b34b0f9a1c2d3e4f5a6b01", "4f9a6c1de2b34b0f9a1c2d3e4f5a6b02"]}'
run=$(curl -s -X POST http://127.0.0.1:8080/webhooks/contain-host -H 'Content-Type: application/json' -H "X-Warden-Signature: $(sign "$body" contain-host)" -d "$body" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
echo "run $run: $(wait_for "$run" waiting); asked in Slack:"
asked=$(curl -s http://127.0.0.1:8703/_sim/messages | python3 -c 'import json,sys; m=json.load(sys.stdin)["messages"][-1]; b=[x for x in m["buttons"] if x["text"]["text"]=="Contain"][0]; print(m["ts"], b["action_id"]); print("  " + m["text"], "[" + "] [".join(x["text"]["text"] for x in m["buttons"]) + "]", file=sys.stderr)')
read -r ts action <<<"$asked"
echo "the lead (slack:U0LEAD) presses Contain; Slack posts the signed interaction to warden:"
curl -s -X POST http://127.0.0.1:8703/_sim/click -H 'Content-Type: application/json' \
  -d "{\"ts\": \"$ts\", \"action_id\": \"$action\", \"user_id\": \"U0LEAD\", \"user_name\": \"lead\", \"request_url\": \"http://127.0.0.1:8080/slack/interactions\"}" \
  | python3 -c 'import json,sys; a=json.load(sys.stdin); print("  " + str(a["status"]) + ":", a["answer"]["text"])'
echo "run $run: $(wait_for "$run" succeeded)"
curl -s "http://127.0.0.1:8080/api/runs/$run" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["output"], indent=2))'
curl -s http://127.0.0.1:8703/_sim/messages | python3 -c 'import json,sys; m=json.load(sys.stdin)["messages"][-1]; print("in the Slack thread:", m["text"])'

echo
echo "== the web console lists these runs: $(curl -s http://127.0.0.1:8080/console/runs | grep -c 'data-run=') at http://127.0.0.1:8080/console"
echo "   (browse them: target/debug/warden serve --policy examples/warden.toml --db .warden/demo.db)"
kill $serve 2>/dev/null || true; wait $serve 2>/dev/null || true

echo
echo "Recorded runs: target/debug/warden runs list --db .warden/demo.db"
target/debug/warden runs list --db .warden/demo.db --limit 3
