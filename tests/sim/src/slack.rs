//! Slack Web API, the subset the `slack-notify` plugin speaks, and Slack's
//! side of interactivity.
//!
//! * `POST /api/chat.postMessage` (`Authorization: Bearer xoxb-…`, JSON
//!   `{channel, text, blocks?, thread_ts?, reply_broadcast?}`) → always HTTP
//!   200 with `{ok: true, channel, ts, message}` or `{ok: false, error}`
//!   (`not_authed`, `invalid_auth`, `channel_not_found`, `no_text`,
//!   `invalid_blocks`, `msg_too_long`, `thread_not_found`), as Slack does;
//!   except rate limiting: HTTP 429, `Retry-After: N`, `{ok: false, error: "ratelimited"}`.
//! * [`Sim::click`]: a user presses a button of a posted message; the sim
//!   posts the interaction to the app's request URL as Slack does
//!   (`application/x-www-form-urlencoded` `payload=<json>`, signed with the
//!   app's signing secret: `X-Slack-Signature: v0=hex(HMAC-SHA256(secret,
//!   "v0:<timestamp>:<body>"))`, `X-Slack-Request-Timestamp`).
//!
//! `POST /actions/…` takes the app's answer on a press's `response_url`
//! (which points here): a `replace_original` rewrites the message.
//!
//! For the demo, two routes of the sim's own (not Slack's): `GET /_sim/messages`
//! lists what was posted, and `POST /_sim/click` `{ts, action_id, user_id,
//! user_name, request_url}` presses a button as [`Sim::click`] does.

use crate::{Recorder, Running};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Config {
    /// The bot token the API accepts.
    pub token: String,
    /// Channels that exist (IDs like `C0SOC` or names like `#soc`).
    pub channels: Vec<String>,
    /// Answer the next N calls with 429 and this `Retry-After` (seconds).
    pub ratelimit_next: u32,
    pub retry_after_s: u32,
    /// The app's signing secret, for interactions.
    pub signing_secret: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "xoxb-demo-token".into(),
            channels: vec!["C0SOC".into(), "#soc".into()],
            ratelimit_next: 0,
            retry_after_s: 1,
            signing_secret: "slack-demo-signing-secret".into(),
        }
    }
}

/// One message as the sim stored it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The channel's id (`#soc` is `C0SOC`).
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
    pub blocks: Value,
}

pub struct Sim {
    pub config: Mutex<Config>,
    pub messages: Mutex<Vec<Message>>,
    /// What apps answered on a press's `response_url` (served here, `/actions/…`).
    pub responses: Mutex<Vec<Value>>,
    /// This sim's own base URL, for the `response_url`s it hands out.
    pub base_url: Mutex<String>,
    pub recorder: Recorder,
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        Arc::new(Sim {
            config: Mutex::new(config),
            messages: Mutex::default(),
            responses: Mutex::default(),
            base_url: Mutex::default(),
            recorder: Recorder::default(),
        })
    }
    pub fn responses(&self) -> Vec<Value> {
        self.responses.lock().unwrap().clone()
    }
    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }
    pub fn ratelimit_next(&self, n: u32) {
        self.config.lock().unwrap().ratelimit_next = n;
    }

    /// The body and headers Slack would send when `user` presses the button
    /// with `action_id` on the message `ts`, signed at `timestamp` (Unix seconds).
    pub fn interaction(&self, ts: &str, action_id: &str, user: (&str, &str), timestamp: u64) -> Option<(String, Vec<(String, String)>)> {
        let messages = self.messages.lock().unwrap();
        let msg = messages.iter().find(|m| m.ts == ts)?;
        let button = buttons(&msg.blocks).into_iter().find(|b| b["action_id"] == action_id)?;
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user.0, "username": user.1, "name": user.1, "team_id": "T0CORP"},
            "api_app_id": "A0WARDEN",
            "team": {"id": "T0CORP", "domain": "corp"},
            "container": {"type": "message", "message_ts": msg.ts, "channel_id": msg.channel, "is_ephemeral": false},
            "trigger_id": "13345224609.738474920.8088930838d88f008e0",
            "channel": {"id": msg.channel, "name": "soc"},
            "message": {"ts": msg.ts, "text": msg.text, "blocks": msg.blocks},
            "response_url": format!("{}/actions/T0CORP/1/xyz", { let b = self.base_url.lock().unwrap().clone(); if b.is_empty() { "https://hooks.slack.com".to_string() } else { b } }),
            "actions": [{
                "type": "button",
                "action_id": button["action_id"],
                "block_id": "warden-actions",
                "text": button["text"],
                "value": button["value"],
                "style": button.get("style").cloned().unwrap_or(Value::Null),
                "action_ts": format!("{timestamp}.000100"),
            }],
        });
        let body: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("payload", &payload.to_string()).finish();
        let secret = self.config.lock().unwrap().signing_secret.clone();
        let headers = vec![
            ("content-type".to_string(), "application/x-www-form-urlencoded".to_string()),
            ("x-slack-request-timestamp".to_string(), timestamp.to_string()),
            ("x-slack-signature".to_string(), sign(&secret, timestamp, body.as_bytes())),
        ];
        Some((body, headers))
    }

    /// Presses a button: posts the signed interaction to `request_url` and
    /// returns the answer's status and body.
    pub async fn click(&self, request_url: &str, ts: &str, action_id: &str, user: (&str, &str)) -> anyhow::Result<(u16, String)> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let (body, headers) = self.interaction(ts, action_id, user, now).ok_or_else(|| anyhow::anyhow!("no message {ts} with a button {action_id}"))?;
        let mut req = reqwest::Client::new().post(request_url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }
}

/// Slack's request signature: `v0=` hex HMAC-SHA256 over `v0:<timestamp>:<body>`.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Every button element of a message's blocks.
pub fn buttons(blocks: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for block in blocks.as_array().into_iter().flatten() {
        for el in block["elements"].as_array().into_iter().flatten() {
            if el["type"] == "button" {
                out.push(el.clone());
            }
        }
        if block["accessory"]["type"] == "button" {
            out.push(block["accessory"].clone());
        }
    }
    out
}

pub fn router(sim: Arc<Sim>) -> Router {
    let rec = sim.recorder.clone();
    Router::new()
        .route("/api/chat.postMessage", post(post_message))
        .route("/_sim/messages", axum::routing::get(list_messages))
        .route("/actions/{*rest}", post(respond))
        .route("/_sim/click", post(click))
        .with_state(sim)
        .layer(axum::middleware::from_fn_with_state(rec, crate::record))
}

pub async fn spawn(config: Config) -> std::io::Result<(Running, Arc<Sim>)> {
    let sim = Sim::new(config);
    let running = crate::serve(router(sim.clone())).await?;
    *sim.base_url.lock().unwrap() = format!("http://{}", running.addr);
    Ok((running, sim))
}

/// An app's answer on a `response_url`: a replacement of the message
/// (`replace_original`), or an ephemeral note to the presser.
async fn respond(State(sim): State<Arc<Sim>>, Json(body): Json<Value>) -> Response {
    if body["replace_original"] == true {
        let mut messages = sim.messages.lock().unwrap();
        // The sim hands out one response_url shape; the last message with buttons is the pressed one.
        if let Some(m) = messages.iter_mut().rev().find(|m| !buttons(&m.blocks).is_empty()) {
            m.text = body["text"].as_str().unwrap_or("").to_string();
            m.blocks = body["blocks"].clone();
        }
    }
    sim.responses.lock().unwrap().push(body);
    "ok".into_response()
}

async fn list_messages(State(sim): State<Arc<Sim>>) -> Response {
    let list: Vec<Value> = sim
        .messages()
        .iter()
        .map(|m| json!({"channel": m.channel, "ts": m.ts, "thread_ts": m.thread_ts, "text": m.text, "buttons": buttons(&m.blocks)}))
        .collect();
    Json(json!({"messages": list})).into_response()
}

async fn click(State(sim): State<Arc<Sim>>, Json(b): Json<Value>) -> Response {
    let field = |k: &str| b[k].as_str().unwrap_or("").to_string();
    match sim.click(&field("request_url"), &field("ts"), &field("action_id"), (&field("user_id"), &field("user_name"))).await {
        Ok((status, text)) => Json(json!({"status": status, "answer": serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))})).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

fn not_ok(error: &str) -> Response {
    // Slack answers API errors with HTTP 200 and `ok: false`.
    Json(json!({"ok": false, "error": error})).into_response()
}

async fn post_message(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let cfg = {
        let mut cfg = sim.config.lock().unwrap();
        if cfg.ratelimit_next > 0 {
            cfg.ratelimit_next -= 1;
            let after = cfg.retry_after_s.to_string();
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", after)], Json(json!({"ok": false, "error": "ratelimited"}))).into_response();
        }
        cfg.clone()
    };
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => return not_ok("not_authed"),
        Some(v) if v != format!("Bearer {}", cfg.token) => return not_ok("invalid_auth"),
        Some(_) => {}
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/json") {
        return not_ok("invalid_arguments");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return not_ok("invalid_json") };
    let Some(channel) = body["channel"].as_str().filter(|c| !c.is_empty()) else { return not_ok("channel_not_found") };
    if !cfg.channels.iter().any(|c| c == channel) {
        return not_ok("channel_not_found");
    }
    let text = body["text"].as_str().unwrap_or("").to_string();
    let blocks = body.get("blocks").cloned().unwrap_or(Value::Null);
    if text.is_empty() && !blocks.is_array() {
        return not_ok("no_text");
    }
    if text.chars().count() > 40_000 {
        return not_ok("msg_too_long");
    }
    if !blocks.is_null() {
        if let Err(why) = check_blocks(&blocks) {
            return Json(json!({"ok": false, "error": "invalid_blocks", "errors": [why], "response_metadata": {"messages": [format!("[ERROR] {why}")]}}))
                .into_response();
        }
    }
    let thread_ts = body["thread_ts"].as_str().map(str::to_string);
    // Slack answers (and later names in interactions) the channel's id, whichever way it was named.
    let channel_id = if channel.starts_with('#') { "C0SOC".to_string() } else { channel.to_string() };
    let mut messages = sim.messages.lock().unwrap();
    if let Some(t) = &thread_ts {
        if !messages.iter().any(|m| &m.ts == t && m.channel == channel_id) {
            return not_ok("thread_not_found");
        }
    }
    let ts = format!("1714557600.{:06}", 100 + messages.len());
    messages.push(Message { channel: channel_id.clone(), ts: ts.clone(), thread_ts: thread_ts.clone(), text: text.clone(), blocks: blocks.clone() });
    let mut message = json!({"type": "message", "user": "U0WARDEN", "bot_id": "B0WARDEN", "text": text, "ts": ts});
    if !blocks.is_null() {
        message["blocks"] = blocks;
    }
    if let Some(t) = thread_ts {
        message["thread_ts"] = json!(t);
    }
    Json(json!({"ok": true, "channel": channel_id, "ts": ts, "message": message})).into_response()
}

/// The Block Kit rules the plugin must respect (a subset of Slack's).
fn check_blocks(blocks: &Value) -> Result<(), String> {
    let list = blocks.as_array().ok_or("blocks must be an array")?;
    if list.len() > 50 {
        return Err("no more than 50 items allowed [json-pointer:/blocks]".into());
    }
    for (i, b) in list.iter().enumerate() {
        match b["type"].as_str() {
            Some("section") => {
                if let Some(t) = b["text"]["text"].as_str() {
                    if t.chars().count() > 3000 {
                        return Err(format!("must be less than 3001 characters [json-pointer:/blocks/{i}/text/text]"));
                    }
                }
                if let Some(fields) = b["fields"].as_array() {
                    if fields.len() > 10 {
                        return Err(format!("no more than 10 items allowed [json-pointer:/blocks/{i}/fields]"));
                    }
                }
            }
            Some("actions") => {
                let els = b["elements"].as_array().ok_or(format!("missing elements [json-pointer:/blocks/{i}]"))?;
                if els.len() > 25 {
                    return Err(format!("no more than 25 items allowed [json-pointer:/blocks/{i}/elements]"));
                }
                for (j, e) in els.iter().enumerate() {
                    if e["type"] == "button" {
                        if e["text"]["type"] != "plain_text" {
                            return Err(format!("must be plain_text [json-pointer:/blocks/{i}/elements/{j}/text]"));
                        }
                        if e["value"].as_str().is_some_and(|v| v.len() > 2000) {
                            return Err(format!("must be less than 2001 characters [json-pointer:/blocks/{i}/elements/{j}/value]"));
                        }
                    }
                }
            }
            Some("context") | Some("divider") | Some("header") => {}
            other => return Err(format!("unsupported type `{}` [json-pointer:/blocks/{i}/type]", other.unwrap_or(""))),
        }
    }
    Ok(())
}
