//! Slack interactivity: a button pressed in Slack decides a warden approval.
//!
//! `slack-notify` posts buttons whose `value` is an approval link
//! (`{{ approval.<step>.links.<choice> }}`). When someone presses one, Slack
//! posts the interaction to `POST /slack/interactions` (the app's *Request
//! URL*). The request is Slack's only if its signature verifies — the same
//! check as a webhook trigger's `signature = "slack"` ([`super::signature`]):
//! `X-Slack-Signature: v0=hex(HMAC-SHA256(signing secret, "v0:" +
//! timestamp + ":" + body))`, compared in constant time, with `X-Slack-Request-Timestamp`
//! within five minutes of now (an old request replayed is refused; a decision
//! is made once anyway). The signing secret is `[server]
//! slack_signing_secret_env`; without it the route answers 404 and decides
//! nothing.
//!
//! Who decides: the Slack user, as `slack:<user id>`. A link addressed to a
//! person (`links_for[…]`) decides only when that person is `slack:<id>`; a
//! link to no one decides when the approval names no approvers, or names
//! `slack:<id>` among them.
//!
//! Slack shows nothing of the HTTP answer to a button press, so warden also
//! answers on the press's `response_url` — only one under `[server]
//! slack_hooks_url` (default `https://hooks.slack.com`): a decision replaces
//! the message with its text and what was decided (the buttons go, so nobody
//! presses again); a refusal is shown to the presser alone (ephemeral).

use super::approvals::from;
use super::signature::Rejected;
use super::AppState;
use crate::approval::{self, Decision, Refused};
use crate::policy::triggers::SignatureScheme;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// How far a request's timestamp may be from now (Slack's recommendation).
pub const MAX_SKEW_SECS: u64 = 300;

/// Slack's default origin of `response_url`s.
pub const HOOKS_URL: &str = "https://hooks.slack.com";
/// Longest wait for Slack to take an answer on a `response_url`.
const RESPOND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The Slack app as the server knows it: its signing secret (read once at
/// start) and where its `response_url`s may point.
pub struct Slack {
    secret: crate::policy::credentials::Secret,
    hooks: String,
    client: reqwest::Client,
}

impl Slack {
    pub fn new(secret: crate::policy::credentials::Secret, hooks_url: Option<&str>) -> anyhow::Result<Slack> {
        // No redirects, no proxy from the environment: the answer goes to Slack's origin or nowhere.
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().timeout(RESPOND_TIMEOUT).build()?;
        Ok(Slack { secret, hooks: hooks_url.unwrap_or(HOOKS_URL).trim_end_matches('/').to_string(), client })
    }

    /// Whether the request is Slack's and fresh at `now` (Unix seconds): the
    /// webhooks' own `slack` scheme, with Slack's five-minute window.
    /// The press's signature, checked; `Err` says why it is refused.
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<super::signature::Verified, String> {
        match super::signature::verify(SignatureScheme::Slack, self.secret.expose().as_bytes(), "slack", headers, body, now, MAX_SKEW_SECS) {
            Ok(v) => Ok(v),
            Err(Rejected::Unsigned(why) | Rejected::Invalid(why)) => Err(why),
            Err(Rejected::Replayed) => Err("a replay".into()),
        }
    }

    /// Posts `body` to the press's `response_url` in the background, if it is Slack's.
    fn respond(&self, response_url: &str, body: Value) {
        if !response_url.starts_with(&format!("{}/", self.hooks)) || response_url.len() > 2048 {
            tracing::warn!("not answering on a response_url outside [server] slack_hooks_url ({})", self.hooks);
            return;
        }
        let request = self.client.post(response_url).header("content-type", "application/json").body(body.to_string());
        tokio::spawn(async move {
            match request.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!("Slack answered {} to warden's answer on a response_url", r.status()),
                Err(e) => tracing::warn!("cannot answer on Slack's response_url: {e}"),
            }
        });
    }
}

fn answer(text: String) -> Response {
    // Slack shows nothing of a block_actions answer; it is for logs and tests.
    Json(json!({"response_type": "ephemeral", "replace_original": false, "text": text})).into_response()
}

fn refused(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// The token of an approval link (`…/approvals/<token>`), or the value itself.
fn token_of(value: &str) -> &str {
    value.rsplit_once("/approvals/").map(|(_, t)| t).unwrap_or(value).trim_end_matches('/')
}

/// `POST /slack/interactions`.
pub(super) async fn interactions(State(s): State<AppState>, ext: Extensions, headers: HeaderMap, body: Bytes) -> Response {
    let Some(slack) = &s.slack else {
        return refused(StatusCode::NOT_FOUND, "Slack interactivity is not configured here; set [server] slack_signing_secret_env in the policy");
    };
    let now = chrono::Utc::now().timestamp();
    let verified = match slack.verify(&headers, &body, now) {
        Ok(v) => v,
        Err(why) => {
            tracing::warn!(from = from(&ext, &headers).unwrap_or_default(), "refused a Slack interaction: {why}");
            return refused(StatusCode::UNAUTHORIZED, &why);
        }
    };
    // A press seen before (the same signed request sent again) is answered
    // and does nothing: no decision, no post to its response_url.
    if s.replays.first_time("slack:interactions", &verified, now).is_err() {
        tracing::warn!(from = from(&ext, &headers).unwrap_or_default(), "refused a replayed Slack interaction");
        return refused(StatusCode::CONFLICT, "this signed interaction was already received");
    }
    let payload = url::form_urlencoded::parse(&body).find(|(k, _)| k == "payload").map(|(_, v)| v.into_owned());
    let Some(payload) = payload.and_then(|p| super::received::json(p.as_bytes()).ok()) else {
        return refused(StatusCode::BAD_REQUEST, "the body has no `payload` JSON field");
    };
    if payload["type"] != "block_actions" {
        // Other interactions (shortcuts, modals) are not warden's; acknowledge them.
        return answer(String::new());
    }
    let response_url = payload["response_url"].as_str().unwrap_or("").to_string();
    // Only the presser sees why nothing happened.
    let tell = |text: String| {
        if !response_url.is_empty() {
            slack.respond(&response_url, json!({"response_type": "ephemeral", "replace_original": false, "text": text}));
        }
        answer(text)
    };
    let user_id = payload["user"]["id"].as_str().unwrap_or("");
    if user_id.is_empty() || user_id.len() > 32 || !user_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return refused(StatusCode::BAD_REQUEST, "the payload names no Slack user id");
    }
    let user_name = crate::invocation::guest_text(payload["user"]["username"].as_str().unwrap_or(""), 80);
    let who = format!("slack:{user_id}");
    let Some(value) = payload["actions"][0]["value"].as_str() else {
        return tell("This button carries no warden approval.".into());
    };
    let token = token_of(value);
    if !approval::looks_like_token(token) {
        return tell("This button carries no warden approval.".into());
    }
    if s.engine.store.approvals().is_none() {
        return answer("No approvals here.".into());
    }
    let (a, link) = match super::approvals::by_link(&s, approval::token_hash(token)).await {
        Ok(Some(found)) => found,
        Ok(None) => return tell("This approval is not known here.".into()),
        Err(e) => return refused(StatusCode::SERVICE_UNAVAILABLE, &format!("the run store is unavailable: {e}")),
    };
    if !link.recipient.is_empty() && link.recipient != who {
        return tell(format!("This button is {}'s to press, not {who}'s.", link.recipient));
    }
    let approver = if !link.recipient.is_empty() || !a.approvers.is_empty() { Some(who.clone()) } else { None };
    let team = crate::invocation::guest_text(payload["team"]["id"].as_str().unwrap_or(""), 32);
    let channel = crate::invocation::guest_text(payload["channel"]["id"].as_str().unwrap_or(""), 32);
    let place = format!("Slack team {team}, channel {channel}");
    let from = Some(match from(&ext, &headers) {
        Some(addr) => format!("{place} via {addr}"),
        None => place,
    });
    let decided_by = if user_name.is_empty() { who.clone() } else { format!("{who} ({user_name})") };
    let d = Decision { choice: None, decided_by, via: "slack".into(), from, comment: None, decided_ms: crate::audit::now_ms() };
    // A button press cannot confirm: a choice marked `confirm: true` is refused here, saying where it can be.
    match super::approvals::decide(&s, a, link.choice, approver, false, d).await {
        Ok(Ok(done)) => {
            s.approvals_poke.notify_one();
            tracing::info!(run = %done.run, step = %done.step, "approval decided from Slack by {who}");
            let text = format!("{} — {}. The run continues.", done.title, done.what_happened());
            if !response_url.is_empty() {
                slack.respond(&response_url, decided_message(&payload["message"], &text));
            }
            answer(text)
        }
        Ok(Err(Refused::Over(a))) => tell(format!("{} — already over: {}", a.title, a.what_happened())),
        Ok(Err(Refused::NotAnApprover(m))) => tell(m),
        Ok(Err(r)) => tell(r.to_string()),
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, &format!("the run store is unavailable: {e}")),
    }
}

/// The pressed message as it should now read: its blocks without the
/// buttons, and a line saying what was decided.
fn decided_message(message: &Value, said: &str) -> Value {
    let mut blocks: Vec<Value> = message["blocks"].as_array().cloned().unwrap_or_default().into_iter().filter(|b| b["type"] != "actions").collect();
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": said}]}));
    let text = message["text"].as_str().unwrap_or("");
    json!({"replace_original": true, "text": format!("{text}\n{said}"), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::credentials::Secret;

    fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:").as_bytes());
        mac.update(body);
        format!("v0={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn signed(timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-slack-request-timestamp", timestamp.parse().unwrap());
        h.insert("x-slack-signature", signature.parse().unwrap());
        h
    }

    #[test]
    fn only_a_fresh_request_signed_with_the_apps_secret_is_slacks() {
        let s = Slack::new(Secret::new("8f742231b10e8888abcd99yyyzzz85a5".into()), None).unwrap();
        let body = b"payload=%7B%7D";
        let now = 1_714_557_600;
        let t = now.to_string();
        assert!(s.verify(&signed(&t, &sign("8f742231b10e8888abcd99yyyzzz85a5", now, body)), body, now).is_ok());
        assert!(s.verify(&signed(&t, &sign("another-apps-secret", now, body)), body, now).unwrap_err().contains("does not match"));
        assert!(s.verify(&signed(&t, &sign("8f742231b10e8888abcd99yyyzzz85a5", now, body)), b"payload=%7B%22x%22%7D", now).is_err(), "a changed body");
        let old = now - MAX_SKEW_SECS as i64 - 1;
        assert!(s
            .verify(&signed(&old.to_string(), &sign("8f742231b10e8888abcd99yyyzzz85a5", old, body)), body, now)
            .unwrap_err()
            .contains("at most 300s is accepted"));
        // The timestamp is part of what is signed: moving it breaks the signature.
        assert!(s.verify(&signed(&t, &sign("8f742231b10e8888abcd99yyyzzz85a5", now - 10, body)), body, now).is_err());
        for bad in ["", "v1=00", "v0=zz", "v0="] {
            assert!(s.verify(&signed(&t, bad), body, now).is_err(), "{bad}");
        }
        assert!(s.verify(&signed("soon", &sign("8f742231b10e8888abcd99yyyzzz85a5", now, body)), body, now).is_err());
        assert!(s.verify(&HeaderMap::new(), body, now).is_err(), "unsigned");
    }

    #[test]
    fn a_decided_question_loses_its_buttons_and_says_what_was_decided() {
        let message = json!({"text": "Contain?", "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "Contain?"}},
            {"type": "actions", "elements": [{"type": "button", "value": "x"}]}
        ]});
        let m = decided_message(&message, "decided `contain` by slack:U1");
        assert_eq!(m["replace_original"], true);
        assert_eq!(m["blocks"].as_array().unwrap().iter().map(|b| b["type"].as_str().unwrap()).collect::<Vec<_>>(), vec!["section", "context"]);
        assert_eq!(m["text"], "Contain?\ndecided `contain` by slack:U1");
    }

    #[test]
    fn response_urls_must_be_under_the_configured_origin() {
        let p = |extra: &str| crate::policy::Policy::parse(&format!("[server]\n{extra}\n"), "p.toml", std::path::Path::new("."));
        assert!(p("slack_hooks_url = \"https://hooks.slack.com\"").is_ok());
        let e = p("slack_hooks_url = \"https://hooks.slack.com/actions\"").unwrap_err().to_string();
        assert!(e.starts_with("p.toml:1:") && e.contains("must be an origin"), "{e}");
    }

    #[test]
    fn a_button_value_may_be_the_link_or_its_token() {
        assert_eq!(token_of("https://warden.example/approvals/abc_DEF-123"), "abc_DEF-123");
        assert_eq!(token_of("abc"), "abc");
        assert_eq!(token_of("http://x/approvals/tok/"), "tok");
    }
}
