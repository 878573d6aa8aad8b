//! `sentinelone-isolate`: network-isolate agents (`disconnect`) or end the
//! isolation (`connect`) with the SentinelOne Management API v2.1.
//!
//! Containment is a consequence, so the plugin acts only on an explicit list
//! of agent UUIDs (never an empty filter, which would mean *every* agent),
//! and answers how many agents SentinelOne says it affected. The API token is
//! a credential *name*: the host injects it.

use serde::Deserialize;
use serde_json::{json, Value};
use warden_sdk::client::{body_snippet, retry_after_ms};
use warden_sdk::{invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest};

/// Most agents one call may act on (a larger list is a mistake, not a hunt).
const MAX_AGENTS: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    console_url: String,
    credential: String,
    action: Action,
    uuids: Vec<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Action {
    Disconnect,
    Connect,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Disconnect => "disconnect",
            Action::Connect => "connect",
        }
    }
}

fn validate(input: &Input) -> Result<(), ActionError> {
    warden_sdk::base_url("console_url", &input.console_url, "https://usea1.sentinelone.net")?;
    if input.credential.trim().is_empty() {
        return Err(invalid("credential must name the policy credential that holds the API token"));
    }
    if input.uuids.is_empty() {
        return Err(invalid("uuids is empty: name the agents to act on (an empty filter would act on every agent, so it is refused)"));
    }
    if input.uuids.len() > MAX_AGENTS {
        return Err(invalid(format!("uuids names {} agents; at most {MAX_AGENTS} per call", input.uuids.len())));
    }
    for u in &input.uuids {
        if u.is_empty() || u.len() > 64 || !u.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(invalid(format!("`{}` is not an agent UUID", u.escape_debug())));
        }
    }
    Ok(())
}

struct Isolate;

impl Guest for Isolate {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "sentinelone-isolate",
            env!("CARGO_PKG_VERSION"),
            "Network-isolate agents (disconnect) or end their isolation (connect) by agent UUID, with the SentinelOne Management API v2.1.",
            json!({
                "type": "object",
                "required": ["console_url", "credential", "action", "uuids"],
                "additionalProperties": false,
                "properties": {
                    "console_url": {"type": "string"},
                    "credential": {"type": "string", "description": "policy credential (Authorization: ApiToken …)"},
                    "action": {"enum": ["disconnect", "connect"]},
                    "uuids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_AGENTS}
                }
            }),
            json!({"type": "object", "description": "{action, affected, uuids}"}),
            &["https://*.sentinelone.net"],
            &["sentinelone"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = parse_input(&input)?;
        validate(&input)?;
        let client = Client::new("SentinelOne", &input.console_url, Some(input.credential.clone()));
        let action = input.action.name();
        let body = json!({"filter": {"uuids": input.uuids}, "data": {}});
        let resp = client.send("POST", &format!("/web/api/v2.1/agents/actions/{action}"), Some(&body))?;
        let answer: Value = client.json(resp, |r| match r.status {
            400 => invalid(format!("SentinelOne refused the {action} request: {}", body_snippet(r))),
            401 | 403 => upstream(
                Some(r.status),
                format!("SentinelOne rejected credential `{}` ({}); it needs the agents' network-quarantine permission", input.credential, r.status),
                None,
            ),
            s => upstream(Some(s), format!("SentinelOne answered {s} to {action}: {}", body_snippet(r)), retry_after_ms(r)),
        })?;
        let affected = answer["data"]["affected"].as_u64().unwrap_or(0);
        log::info(&format!("{action}: SentinelOne affected {affected} of {} agent(s)", input.uuids.len()));
        output(&json!({"action": action, "affected": affected, "uuids": input.uuids}))
    }
}

warden_sdk::export_action!(Isolate);
