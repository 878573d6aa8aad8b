//! `slack-notify`: post a message to a Slack channel with `chat.postMessage`.
//!
//! The message is Block Kit: the text as a section, optional fields (label →
//! value), an optional link button, and optional interactive buttons whose
//! `value` is handed back by Slack when someone presses one. A warden approval
//! link (`{{ approval.<step>.links.<choice> }}`) as a button's value lets the
//! press decide that approval: `warden serve` verifies Slack's signature on
//! the callback (`POST /slack/interactions`) and decides as the Slack user.
//! `thread_ts` replies in a thread.
//!
//! The bot token is a credential *name* (`kind = "bearer"`): the host injects
//! it. Slack answers API errors with HTTP 200 and `ok: false`; they are mapped
//! to `invalid-input` (the message or channel is wrong) or `upstream` (the
//! token, Slack itself). Rate limits (HTTP 429 + `Retry-After`) are retried
//! a few times, then surface as `upstream` with the retry-after.

use serde::Deserialize;
use serde_json::{json, Value};
use warden_sdk::client::{body_snippet, retry_after_ms};
use warden_sdk::{cut_chars, invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest};

/// Slack's limits (https://api.slack.com/reference/block-kit/blocks).
pub const MAX_TEXT: usize = 40_000;
pub const MAX_SECTION_TEXT: usize = 3_000;
pub const MAX_FIELDS: usize = 10;
pub const MAX_FIELD_TEXT: usize = 2_000;
pub const MAX_BUTTONS: usize = 5;
pub const MAX_BUTTON_TEXT: usize = 75;
pub const MAX_BUTTON_VALUE: usize = 2_000;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[serde(default = "default_api")]
    pub api_url: String,
    pub credential: String,
    pub channel: String,
    pub text: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub fields: Vec<Field>,
    #[serde(default)]
    pub link: Option<Link>,
    #[serde(default)]
    pub buttons: Vec<Button>,
    #[serde(default)]
    pub thread_ts: Option<String>,
    #[serde(default)]
    pub reply_broadcast: bool,
}

fn default_api() -> String {
    "https://slack.com".into()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub title: String,
    pub value: Value,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub text: String,
    pub url: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Button {
    pub text: String,
    pub value: String,
    #[serde(default)]
    pub style: Option<String>,
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Refuses what Slack would refuse, naming the field and the limit.
pub fn validate(input: &Input) -> Result<(), ActionError> {
    warden_sdk::base_url("api_url", &input.api_url, "https://slack.com")?;
    if input.credential.trim().is_empty() {
        return Err(invalid("credential must name the policy credential that holds the bot token"));
    }
    let ch = input.channel.trim();
    if ch.is_empty() || ch.len() > 80 || !ch.chars().all(|c| c.is_ascii_alphanumeric() || "#-_.".contains(c)) {
        return Err(invalid(format!("channel `{}` is not a channel id (C0123ABC) or #name", input.channel.escape_debug())));
    }
    if input.text.trim().is_empty() {
        return Err(invalid("text is empty; Slack needs it (it is also the notification's fallback)"));
    }
    if chars(&input.text) > MAX_TEXT {
        return Err(invalid(format!("text has {} characters; Slack takes at most {MAX_TEXT}", chars(&input.text))));
    }
    if input.title.as_deref().is_some_and(|t| chars(t) > 150) {
        return Err(invalid("title has more than 150 characters (Slack's header block limit)"));
    }
    if input.fields.len() > MAX_FIELDS {
        return Err(invalid(format!("fields has {} entries; a Slack section shows at most {MAX_FIELDS}", input.fields.len())));
    }
    if input.buttons.len() > MAX_BUTTONS {
        return Err(invalid(format!("buttons has {} entries; at most {MAX_BUTTONS}", input.buttons.len())));
    }
    for (i, b) in input.buttons.iter().enumerate() {
        if b.text.trim().is_empty() || chars(&b.text) > MAX_BUTTON_TEXT {
            return Err(invalid(format!("buttons[{i}].text must have 1 to {MAX_BUTTON_TEXT} characters")));
        }
        if b.value.is_empty() || chars(&b.value) > MAX_BUTTON_VALUE {
            return Err(invalid(format!("buttons[{i}].value must have 1 to {MAX_BUTTON_VALUE} characters")));
        }
        if let Some(s) = &b.style {
            if s != "primary" && s != "danger" {
                return Err(invalid(format!("buttons[{i}].style `{}` is not primary or danger", s.escape_debug())));
            }
        }
    }
    if let Some(l) = &input.link {
        if !(l.url.starts_with("https://") || l.url.starts_with("http://")) || l.url.len() > 3000 {
            return Err(invalid("link.url must be an http(s) URL of at most 3000 characters"));
        }
        if l.text.trim().is_empty() || chars(&l.text) > MAX_BUTTON_TEXT {
            return Err(invalid(format!("link.text must have 1 to {MAX_BUTTON_TEXT} characters")));
        }
    }
    if let Some(ts) = &input.thread_ts {
        if ts.is_empty() || ts.len() > 32 || !ts.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(invalid(format!("thread_ts `{}` is not a Slack message timestamp such as 1714557600.000100", ts.escape_debug())));
        }
    }
    Ok(())
}

fn field_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// The `chat.postMessage` body.
pub fn message(input: &Input) -> Value {
    let mut blocks = Vec::new();
    if let Some(t) = &input.title {
        blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": t, "emoji": true}}));
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut_chars(&input.text, MAX_SECTION_TEXT)}}));
    if !input.fields.is_empty() {
        let fields: Vec<Value> = input
            .fields
            .iter()
            .map(|f| json!({"type": "mrkdwn", "text": cut_chars(&format!("*{}*\n{}", f.title, field_text(&f.value)), MAX_FIELD_TEXT)}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    let mut elements = Vec::new();
    if let Some(l) = &input.link {
        elements.push(json!({"type": "button", "action_id": "warden-link", "text": {"type": "plain_text", "text": l.text}, "url": l.url}));
    }
    for (i, b) in input.buttons.iter().enumerate() {
        let mut el = json!({"type": "button", "action_id": format!("warden-{i}"), "text": {"type": "plain_text", "text": b.text}, "value": b.value});
        if let Some(s) = &b.style {
            el["style"] = json!(s);
        }
        elements.push(el);
    }
    if !elements.is_empty() {
        blocks.push(json!({"type": "actions", "block_id": "warden-actions", "elements": elements}));
    }
    let mut body = json!({"channel": input.channel.trim(), "text": input.text, "blocks": blocks, "unfurl_links": false});
    if let Some(ts) = &input.thread_ts {
        body["thread_ts"] = json!(ts);
        if input.reply_broadcast {
            body["reply_broadcast"] = json!(true);
        }
    }
    body
}

/// An `ok: false` answer as the error a story can act on.
pub fn slack_error(credential: &str, answer: &Value) -> ActionError {
    let code = answer["error"].as_str().unwrap_or("unknown_error");
    let detail = answer["response_metadata"]["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .filter(|s| !s.is_empty())
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    match code {
        "not_authed"
        | "invalid_auth"
        | "account_inactive"
        | "token_revoked"
        | "token_expired"
        | "no_permission"
        | "missing_scope"
        | "not_allowed_token_type"
        | "ekm_access_denied" => upstream(None, format!("Slack rejected credential `{credential}`: {code}; it needs a bot token with chat:write"), None),
        "channel_not_found"
        | "not_in_channel"
        | "is_archived"
        | "no_text"
        | "invalid_blocks"
        | "msg_too_long"
        | "thread_not_found"
        | "invalid_ts"
        | "restricted_action"
        | "too_many_attachments"
        | "invalid_arguments" => invalid(format!("Slack refused the message: {code}{detail}")),
        "ratelimited" | "rate_limited" => upstream(Some(429), "Slack rate-limited chat.postMessage", Some(1000)),
        _ => upstream(None, format!("Slack answered {code}{detail}"), None),
    }
}

struct SlackNotify;

impl Guest for SlackNotify {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "slack-notify",
            env!("CARGO_PKG_VERSION"),
            "Post a Block Kit message (text, fields, a link button, approval buttons) to a Slack channel or thread with chat.postMessage.",
            json!({
                "type": "object",
                "required": ["credential", "channel", "text"],
                "additionalProperties": false,
                "properties": {
                    "api_url": {"type": "string", "default": "https://slack.com"},
                    "credential": {"type": "string", "description": "policy credential holding the bot token (kind bearer)"},
                    "channel": {"type": "string", "description": "channel id (C0123ABC) or #name"},
                    "text": {"type": "string", "maxLength": MAX_TEXT},
                    "title": {"type": "string", "maxLength": 150},
                    "fields": {"type": "array", "maxItems": MAX_FIELDS, "items": {"type": "object", "required": ["title", "value"], "properties": {"title": {"type": "string"}, "value": {}}}},
                    "link": {"type": "object", "required": ["text", "url"], "properties": {"text": {"type": "string"}, "url": {"type": "string"}}},
                    "buttons": {"type": "array", "maxItems": MAX_BUTTONS, "items": {"type": "object", "required": ["text", "value"], "properties": {
                        "text": {"type": "string", "maxLength": MAX_BUTTON_TEXT},
                        "value": {"type": "string", "maxLength": MAX_BUTTON_VALUE, "description": "handed back when pressed; a warden approval link decides that approval"},
                        "style": {"enum": ["primary", "danger"]}
                    }}},
                    "thread_ts": {"type": "string", "description": "reply in this message's thread"},
                    "reply_broadcast": {"type": "boolean"}
                }
            }),
            json!({
                "type": "object",
                "required": ["channel", "ts"],
                "properties": {"channel": {"type": "string"}, "ts": {"type": "string"}, "thread_ts": {"type": ["string", "null"]}, "buttons": {"type": "array", "items": {"type": "string"}}}
            }),
            &["https://slack.com"],
            &["slack"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = parse_input(&input)?;
        validate(&input)?;
        let client = Client::new("Slack", &input.api_url, Some(input.credential.clone()));
        let resp = client.send("POST", "/api/chat.postMessage", Some(&message(&input)))?;
        if resp.status == 429 {
            let wait = retry_after_ms(&resp);
            return Err(upstream(Some(429), "Slack rate-limited chat.postMessage and the retries ran out", wait));
        }
        let answer = client.json(resp, |r| match r.status {
            401 | 403 => upstream(Some(r.status), format!("Slack rejected credential `{}` ({})", input.credential, r.status), None),
            s => upstream(Some(s), format!("Slack answered {s}: {}", body_snippet(r)), retry_after_ms(r)),
        })?;
        if answer["ok"] != json!(true) {
            return Err(slack_error(&input.credential, &answer));
        }
        let ts = answer["ts"].as_str().unwrap_or_default().to_string();
        let channel = answer["channel"].as_str().unwrap_or(&input.channel).to_string();
        log::info(&format!("posted to {channel} at {ts}{}", input.thread_ts.as_ref().map(|t| format!(" in thread {t}")).unwrap_or_default()));
        let buttons: Vec<String> = (0..input.buttons.len()).map(|i| format!("warden-{i}")).collect();
        output(&json!({"channel": channel, "ts": ts, "thread_ts": input.thread_ts, "buttons": buttons}))
    }
}

warden_sdk::export_action!(SlackNotify);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Input {
        let mut base = json!({"credential": "slack", "channel": "#soc", "text": "IOC seen"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn fields_link_and_buttons_become_block_kit() {
        let i = input(json!({
            "title": "Hunt finished",
            "fields": [{"title": "Hosts", "value": 3}, {"title": "Ticket", "value": "SEC-1"}],
            "link": {"text": "Open ticket", "url": "https://jira.example/browse/SEC-1"},
            "buttons": [{"text": "Isolate", "value": "https://warden.example/approvals/abc", "style": "danger"}]
        }));
        validate(&i).unwrap();
        let m = message(&i);
        assert_eq!(m["blocks"][0]["type"], "header");
        assert_eq!(m["blocks"][2]["fields"][0]["text"], "*Hosts*\n3");
        let actions = &m["blocks"][3]["elements"];
        assert_eq!(actions[0]["url"], "https://jira.example/browse/SEC-1");
        assert_eq!(actions[1]["value"], "https://warden.example/approvals/abc");
        assert_eq!(actions[1]["style"], "danger");
        assert!(m.get("thread_ts").is_none());
    }

    #[test]
    fn long_text_is_cut_in_the_section_and_kept_whole_as_fallback() {
        let long = "x".repeat(5000);
        let i = input(json!({"text": long}));
        let m = message(&i);
        assert_eq!(m["blocks"][0]["text"]["text"].as_str().unwrap().chars().count(), MAX_SECTION_TEXT);
        assert_eq!(m["text"].as_str().unwrap().len(), 5000);
    }

    #[test]
    fn what_slack_would_refuse_is_refused_first() {
        for (patch, why) in [
            (json!({"channel": "#soc; rm"}), "not a channel id"),
            (json!({"text": " "}), "text is empty"),
            (json!({"fields": (0..11).map(|i| json!({"title": i.to_string(), "value": i})).collect::<Vec<_>>()}), "at most 10"),
            (json!({"buttons": [{"text": "x", "value": "v", "style": "green"}]}), "not primary or danger"),
            (json!({"thread_ts": "abc"}), "not a Slack message timestamp"),
            (json!({"link": {"text": "x", "url": "javascript:alert(1)"}}), "http(s) URL"),
        ] {
            match validate(&input(patch.clone())) {
                Err(ActionError::InvalidInput(m)) => assert!(m.contains(why), "{patch}: {m}"),
                other => panic!("{patch}: {other:?}"),
            }
        }
    }

    #[test]
    fn slack_errors_map_to_input_or_upstream() {
        assert!(
            matches!(slack_error("slack", &json!({"ok": false, "error": "channel_not_found"})), ActionError::InvalidInput(m) if m.contains("channel_not_found"))
        );
        assert!(
            matches!(slack_error("slack", &json!({"ok": false, "error": "invalid_auth"})), ActionError::Upstream(u) if u.message.contains("credential `slack`"))
        );
        assert!(matches!(slack_error("slack", &json!({"ok": false, "error": "fatal_error"})), ActionError::Upstream(_)));
    }
}
