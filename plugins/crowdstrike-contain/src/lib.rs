//! `crowdstrike-contain`: network-contain hosts, or lift their containment,
//! with the CrowdStrike Falcon API
//! (`POST /devices/entities/devices-actions/v2?action_name=contain|lift_containment`).
//!
//! Containment is a consequence, so the plugin acts only on an explicit list
//! of device ids (32 hex digits; 1 to 100, the API's limit per call) and
//! reports which ids CrowdStrike accepted and which it refused.
//!
//! Falcon uses OAuth2 client credentials. The minted access token is as
//! secret as the client secret, so the *host* does the OAuth (policy
//! credential `kind = "oauth2"`): it requests the token, caches it, refreshes
//! it on a 401 and injects `Authorization: Bearer …`. This plugin only names
//! the credential; it never sees the client secret or the token.

use serde::Deserialize;
use serde_json::{json, Value};
use warden_sdk::client::{body_snippet, header, retry_after_ms};
use warden_sdk::{invalid, log, now_ms, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest, Response};

/// The API's limit of ids per device action.
pub const MAX_IDS: usize = 100;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default = "default_api")]
    pub api_url: String,
    pub credential: String,
    pub action: Action,
    pub ids: Vec<String>,
}

fn default_api() -> String {
    "https://api.crowdstrike.com".into()
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Contain,
    LiftContainment,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Contain => "contain",
            Action::LiftContainment => "lift_containment",
        }
    }
}

pub fn validate(i: &Input) -> Result<(), ActionError> {
    warden_sdk::base_url("api_url", &i.api_url, "https://api.crowdstrike.com (or api.us-2 / api.eu-1)")?;
    if i.credential.trim().is_empty() {
        return Err(invalid("credential must name the policy's oauth2 credential for the Falcon API"));
    }
    if i.ids.is_empty() {
        return Err(invalid("ids is empty: name the devices to act on; containment never runs without an explicit host id list"));
    }
    if i.ids.len() > MAX_IDS {
        return Err(invalid(format!("ids names {} devices; the Falcon API takes at most {MAX_IDS} per call", i.ids.len())));
    }
    for id in &i.ids {
        if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!("`{}` is not a Falcon device id (32 hex digits)", id.escape_debug())));
        }
    }
    Ok(())
}

/// Falcon's `errors[].message`s, joined.
fn messages(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["errors"].as_array().map(|e| e.iter().filter_map(|x| x["message"].as_str()).collect::<Vec<_>>().join("; ")).filter(|s| !s.is_empty()).unwrap_or_default()
}

/// When to try again after a 429: `Retry-After`, else Falcon's
/// `X-RateLimit-RetryAfter` (an epoch second).
pub fn falcon_retry_after(r: &Response, now_ms: u64) -> Option<u64> {
    retry_after_ms(r).or_else(|| {
        let at: u64 = header(r, "x-ratelimit-retryafter")?.trim().parse().ok()?;
        Some((at * 1000).saturating_sub(now_ms).max(1000))
    })
}

struct Contain;

impl Guest for Contain {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "crowdstrike-contain",
            env!("CARGO_PKG_VERSION"),
            "Network-contain hosts, or lift their containment, by Falcon device id with the CrowdStrike API; the host does the OAuth2.",
            json!({
                "type": "object",
                "required": ["credential", "action", "ids"],
                "additionalProperties": false,
                "properties": {
                    "api_url": {"type": "string", "default": "https://api.crowdstrike.com"},
                    "credential": {"type": "string", "description": "policy credential of kind oauth2 (Hosts: write scope)"},
                    "action": {"enum": ["contain", "lift_containment"]},
                    "ids": {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}, "minItems": 1, "maxItems": MAX_IDS}
                }
            }),
            json!({
                "type": "object",
                "required": ["action", "accepted", "refused"],
                "properties": {
                    "action": {"type": "string"},
                    "accepted": {"type": "array", "items": {"type": "string"}},
                    "refused": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "code": {"type": "integer"}, "message": {"type": "string"}}}}
                }
            }),
            &["https://api.crowdstrike.com"],
            &["crowdstrike"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let i: Input = parse_input(&input)?;
        validate(&i)?;
        let mut client = Client::new("CrowdStrike", &i.api_url, Some(i.credential.clone()));
        // One retry after a rate limit; past it, the step's own retry decides (grants allow two requests).
        client.max_retries = 1;
        let action = i.action.name();
        let resp = client.send("POST", &format!("/devices/entities/devices-actions/v2?action_name={action}"), Some(&json!({"ids": i.ids})))?;
        if resp.status == 429 {
            return Err(upstream(Some(429), format!("CrowdStrike rate-limited {action}: {}", messages(&resp.body)), falcon_retry_after(&resp, now_ms())));
        }
        // 404 with a body: none of the ids is a device of this tenant.
        let status = resp.status;
        let body: Value = if status == 404 {
            serde_json::from_slice(&resp.body)
                .map_err(|_| upstream(Some(404), format!("CrowdStrike answered 404 to {action}: {}", body_snippet(&resp)), None))?
        } else {
            client.json(resp, |r| match r.status {
                400 => invalid(format!("CrowdStrike refused {action}: {}", messages(&r.body))),
                401 => upstream(Some(401), format!("CrowdStrike rejected credential `{}` even with a fresh token: {}", i.credential, messages(&r.body)), None),
                403 => upstream(Some(403), format!("credential `{}` lacks the Hosts: write scope for {action}: {}", i.credential, messages(&r.body)), None),
                s => upstream(Some(s), format!("CrowdStrike answered {s} to {action}: {}", messages(&r.body)), retry_after_ms(r)),
            })?
        };
        let accepted: Vec<String> = body["resources"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
        let refused: Vec<Value> =
            body["errors"].as_array().into_iter().flatten().map(|e| json!({"id": e["id"], "code": e["code"], "message": e["message"]})).collect();
        log::info(&format!("{action}: CrowdStrike accepted {} of {} device(s)", accepted.len(), i.ids.len()));
        if accepted.is_empty() {
            return Err(invalid(format!(
                "CrowdStrike acted on none of the {} device(s): {}",
                i.ids.len(),
                messages(&serde_json::to_vec(&body).unwrap_or_default())
            )));
        }
        output(&json!({"action": action, "accepted": accepted, "refused": refused}))
    }
}

warden_sdk::export_action!(Contain);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(ids: Value) -> Input {
        serde_json::from_value(json!({"credential": "crowdstrike", "action": "contain", "ids": ids})).unwrap()
    }

    #[test]
    fn containment_needs_an_explicit_list_of_device_ids() {
        for (ids, why) in [
            (json!([]), "never runs without an explicit host id list"),
            (json!(["*"]), "not a Falcon device id"),
            (json!(["4f9a6c1de2b34b0f9a1c2d3e4f5a6b01&action_name=hide_host"]), "not a Falcon device id"),
            (json!((0..101).map(|n| format!("{n:032x}")).collect::<Vec<_>>()), "at most 100"),
        ] {
            match validate(&input(ids.clone())) {
                Err(ActionError::InvalidInput(m)) => assert!(m.contains(why), "{ids}: {m}"),
                other => panic!("{ids}: {other:?}"),
            }
        }
        validate(&input(json!(["4f9a6c1de2b34b0f9a1c2d3e4f5a6b01"]))).unwrap();
    }

    #[test]
    fn only_the_two_containment_actions_exist() {
        let bad: Result<Input, _> = serde_json::from_value(json!({"credential": "c", "action": "hide_host", "ids": ["4f9a6c1de2b34b0f9a1c2d3e4f5a6b01"]}));
        assert!(bad.is_err());
        assert_eq!(Action::LiftContainment.name(), "lift_containment");
    }

    #[test]
    fn falcon_rate_limits_say_when_to_retry() {
        let r = |h: Vec<(&str, &str)>| Response { status: 429, headers: h.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(), body: vec![] };
        assert_eq!(falcon_retry_after(&r(vec![("Retry-After", "2")]), 0), Some(2000));
        assert_eq!(falcon_retry_after(&r(vec![("X-RateLimit-RetryAfter", "1000")]), 997_500), Some(2500));
        assert_eq!(falcon_retry_after(&r(vec![]), 0), None);
    }
}
