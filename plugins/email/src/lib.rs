//! `email`: send a message through the host's SMTP relay (the `smtp`
//! capability) or an HTTP mail API (SendGrid v3, Mailgun) through `http`.
//!
//! Every message is multipart: the plain text, and HTML (given, or made from
//! the text with its links clickable). Addresses are validated here so a bad
//! one is named before anything is sent; the host's mail policy decides who
//! may be written to.

use serde::Deserialize;
use serde_json::{json, Value};
use warden_sdk::bindings::warden::action::smtp;
use warden_sdk::client::{body_snippet, header, retry_after_ms};
use warden_sdk::{invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest, Response};

#[derive(Deserialize)]
#[serde(untagged)]
enum Addresses {
    One(String),
    Many(Vec<String>),
}

impl Addresses {
    fn list(self) -> Vec<String> {
        match self {
            Addresses::One(s) => s.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
            Addresses::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
enum Provider {
    Smtp,
    Sendgrid,
    Mailgun,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    to: Addresses,
    #[serde(default)]
    cc: Option<Addresses>,
    #[serde(default)]
    bcc: Option<Addresses>,
    subject: String,
    text: String,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default = "default_provider")]
    provider: Provider,
    #[serde(default)]
    credential: Option<String>,
    /// Base URL of the mail API (defaults to the vendor's; tests point it at the simulator).
    #[serde(default)]
    api_url: Option<String>,
    /// Mailgun sending domain.
    #[serde(default)]
    domain: Option<String>,
}

fn default_provider() -> Provider {
    Provider::Smtp
}

/// `user@domain` or `Name <user@domain>`; returns the bare address.
fn validate_address(field: &str, a: &str) -> Result<String, ActionError> {
    let bad = || invalid(format!("{field}: `{}` is not a valid email address", a.escape_debug()));
    if a.contains(['\r', '\n']) {
        return Err(invalid(format!("{field}: `{}` contains CR/LF; refused", a.escape_debug())));
    }
    let bare = match (a.rfind('<'), a.rfind('>')) {
        (Some(l), Some(r)) if l < r && r == a.trim_end().len() - 1 => &a[l + 1..r],
        (None, None) => a.trim(),
        _ => return Err(bad()),
    };
    let (local, domain) = bare.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty() && !local.contains(|c: char| c.is_whitespace() || c == '@' || c == '<' || c == '>' || c == ',');
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if local_ok && domain_ok {
        Ok(bare.to_string())
    } else {
        Err(bad())
    }
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Plain text to HTML: escaped, line breaks kept, http(s) links clickable.
fn text_to_html(text: &str) -> String {
    let mut out = String::from("<!doctype html><html><body><p>");
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push_str("<br>\n");
        }
        for (j, word) in line.split(' ').enumerate() {
            if j > 0 {
                out.push(' ');
            }
            let trimmed = word.trim_end_matches(['.', ',', ')', ';', ':']);
            if trimmed.starts_with("https://") || trimmed.starts_with("http://") {
                let href = escape_html(trimmed);
                out.push_str(&format!("<a href=\"{href}\">{href}</a>{}", escape_html(&word[trimmed.len()..])));
            } else {
                out.push_str(&escape_html(word));
            }
        }
    }
    out.push_str("</p></body></html>");
    out
}

struct Email;

struct Prepared {
    from: Option<String>,
    to: Vec<String>,
    cc: Vec<String>,
    bcc: Vec<String>,
    html: String,
}

fn api_error(provider: &str, credential: &str, resp: &Response) -> ActionError {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let detail = if let Some(errs) = v["errors"].as_array() {
        errs.iter()
            .map(|e| match e["field"].as_str() {
                Some(f) => format!("{f}: {}", e["message"].as_str().unwrap_or("invalid")),
                None => e["message"].as_str().unwrap_or("error").to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else if let Some(m) = v["message"].as_str() {
        m.to_string()
    } else {
        body_snippet(resp)
    };
    match resp.status {
        400 => invalid(format!("{provider} refused the message: {detail}")),
        401 | 403 => upstream(
            Some(resp.status),
            format!("{provider} rejected credential `{credential}` ({}): check the API key the host holds for it", resp.status),
            None,
        ),
        s => upstream(Some(s), format!("{provider} answered {s}: {detail}"), retry_after_ms(resp)),
    }
}

impl Guest for Email {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "email",
            env!("CARGO_PKG_VERSION"),
            "Send an email (plain text + HTML) through the host's SMTP relay, SendGrid or Mailgun.",
            json!({
                "type": "object",
                "required": ["to", "subject", "text"],
                "additionalProperties": false,
                "properties": {
                    "to": {"type": ["string", "array"], "description": "address, comma-separated addresses, or a list"},
                    "cc": {"type": ["string", "array"]}, "bcc": {"type": ["string", "array"]},
                    "subject": {"type": "string"}, "text": {"type": "string"},
                    "html": {"type": "string", "description": "defaults to the text with links made clickable"},
                    "from": {"type": "string", "description": "defaults to the relay's sender (smtp)"},
                    "reply_to": {"type": "string"},
                    "provider": {"enum": ["smtp", "sendgrid", "mailgun"], "default": "smtp"},
                    "credential": {"type": "string", "description": "API key credential for sendgrid (bearer) or mailgun (basic, user api)"},
                    "api_url": {"type": "string"}, "domain": {"type": "string", "description": "Mailgun sending domain"}
                }
            }),
            json!({
                "type": "object",
                "required": ["provider", "message_id", "accepted"],
                "properties": {"provider": {"type": "string"}, "message_id": {"type": "string"}, "accepted": {"type": "array", "items": {"type": "string"}}}
            }),
            &["https://api.sendgrid.com", "https://api.mailgun.net"],
            &[],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let mut input: Input = parse_input(&input)?;
        if input.subject.contains(['\r', '\n']) {
            return Err(invalid("subject must be one line (CR/LF refused)"));
        }
        let check_all = |field: &str, list: Vec<String>| -> Result<Vec<String>, ActionError> {
            list.iter().map(|a| validate_address(field, a).map(|_| a.trim().to_string())).collect()
        };
        let p = Prepared {
            from: input.from.as_deref().map(|f| validate_address("from", f).map(|_| f.to_string())).transpose()?,
            to: check_all("to", std::mem::replace(&mut input.to, Addresses::Many(vec![])).list())?,
            cc: check_all("cc", input.cc.take().map(Addresses::list).unwrap_or_default())?,
            bcc: check_all("bcc", input.bcc.take().map(Addresses::list).unwrap_or_default())?,
            html: input.html.clone().unwrap_or_else(|| text_to_html(&input.text)),
        };
        if p.to.is_empty() {
            return Err(invalid("to: at least one recipient is required"));
        }
        if let Some(r) = &input.reply_to {
            validate_address("reply_to", r)?;
        }
        let out = match input.provider {
            Provider::Smtp => send_smtp(&input, p)?,
            Provider::Sendgrid => send_sendgrid(&input, p)?,
            Provider::Mailgun => send_mailgun(&input, p)?,
        };
        output(&out)
    }
}

fn send_smtp(input: &Input, p: Prepared) -> Result<Value, ActionError> {
    let receipt = smtp::send(&smtp::Message {
        from: p.from,
        to: p.to,
        cc: p.cc,
        bcc: p.bcc,
        reply_to: input.reply_to.clone(),
        subject: input.subject.clone(),
        text: input.text.clone(),
        html: Some(p.html),
    })
    .map_err(|e| match e {
        smtp::SmtpError::Denied(why) => ActionError::Denied(why),
        smtp::SmtpError::InvalidMessage(why) => invalid(why),
        smtp::SmtpError::Timeout => upstream(None, "the SMTP relay did not answer in time", None),
        smtp::SmtpError::Connection(why) => upstream(None, format!("cannot reach the SMTP relay: {why}"), None),
        smtp::SmtpError::Rejected(why) => upstream(None, format!("the SMTP relay refused the message: {why}"), None),
    })?;
    log::info(&format!("sent {} via smtp to {} recipient(s)", receipt.message_id, receipt.accepted.len()));
    Ok(json!({"provider": "smtp", "message_id": receipt.message_id, "accepted": receipt.accepted}))
}

fn need_credential(input: &Input) -> Result<String, ActionError> {
    input.credential.clone().ok_or_else(|| invalid(format!("credential is required for provider {:?}", input.provider)))
}

fn send_sendgrid(input: &Input, p: Prepared) -> Result<Value, ActionError> {
    let credential = need_credential(input)?;
    let from = p.from.clone().ok_or_else(|| invalid("from is required for sendgrid"))?;
    let total = p.to.len() + p.cc.len() + p.bcc.len();
    if total > 1000 {
        return Err(invalid(format!("{total} recipients; SendGrid accepts at most 1000 per message")));
    }
    let emails = |list: &[String]| list.iter().map(|a| json!({"email": a})).collect::<Vec<_>>();
    let mut personalization = json!({"to": emails(&p.to)});
    if !p.cc.is_empty() {
        personalization["cc"] = json!(emails(&p.cc));
    }
    if !p.bcc.is_empty() {
        personalization["bcc"] = json!(emails(&p.bcc));
    }
    let mut body = json!({
        "personalizations": [personalization],
        "from": {"email": from},
        "subject": input.subject,
        "content": [{"type": "text/plain", "value": input.text}, {"type": "text/html", "value": p.html}],
    });
    if let Some(r) = &input.reply_to {
        body["reply_to"] = json!({"email": r});
    }
    let client = Client::new("SendGrid", input.api_url.as_deref().unwrap_or("https://api.sendgrid.com"), Some(credential.clone()));
    let resp = client.post("/v3/mail/send", &body)?;
    if resp.status != 202 && resp.status != 200 {
        return Err(api_error("SendGrid", &credential, &resp));
    }
    let id = header(&resp, "x-message-id").unwrap_or_default().to_string();
    let accepted: Vec<String> = p.to.into_iter().chain(p.cc).chain(p.bcc).collect();
    Ok(json!({"provider": "sendgrid", "message_id": id, "accepted": accepted}))
}

fn send_mailgun(input: &Input, p: Prepared) -> Result<Value, ActionError> {
    let credential = need_credential(input)?;
    let domain = input.domain.clone().ok_or_else(|| invalid("domain (the Mailgun sending domain) is required for mailgun"))?;
    if !domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(invalid(format!("domain `{}` is not a domain name", domain.escape_debug())));
    }
    let from = p.from.clone().ok_or_else(|| invalid("from is required for mailgun"))?;
    let (to, cc, bcc) = (p.to.join(","), p.cc.join(","), p.bcc.join(","));
    let mut fields =
        vec![("from", from.as_str()), ("to", to.as_str()), ("subject", input.subject.as_str()), ("text", input.text.as_str()), ("html", p.html.as_str())];
    if !cc.is_empty() {
        fields.push(("cc", cc.as_str()));
    }
    if !bcc.is_empty() {
        fields.push(("bcc", bcc.as_str()));
    }
    let client = Client::new("Mailgun", input.api_url.as_deref().unwrap_or("https://api.mailgun.net"), Some(credential.clone()));
    let resp = client.post_form(&format!("/v3/{domain}/messages"), &fields)?;
    let v = client.json(resp, |r| api_error("Mailgun", &credential, r))?;
    let accepted: Vec<String> = p.to.into_iter().chain(p.cc).chain(p.bcc).collect();
    Ok(json!({"provider": "mailgun", "message_id": v["id"], "accepted": accepted}))
}

warden_sdk::export_action!(Email);
