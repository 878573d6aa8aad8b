//! The mail policy's check: a message as the guest handed it over, judged
//! against the grant's `smtp = { … }` before anything is sent. Refused
//! messages never reach the relay.

use crate::capability::Denial;
use crate::invocation::guest_text;
use crate::limits::Bytes;
use crate::policy::mail::MailGrant;
use lettre::message::{header::ContentType, Mailbox, MultiPart};
use lettre::Message;
use std::collections::BTreeMap;

/// A message as the guest handed it over.
pub struct Draft {
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// Why a message was not sent.
#[derive(Debug)]
pub enum MailError {
    Denied(Denial),
    Invalid(String),
    Timeout,
    Connection(String),
    Rejected(String),
}

/// A message that passed the policy, with what the audit record needs.
pub struct Checked {
    pub message: Message,
    pub recipients: Vec<String>,
    pub domains: BTreeMap<String, u32>,
}

fn deny(rule: &str, reason: String) -> MailError {
    MailError::Denied(Denial { rule: rule.to_string(), reason })
}

fn domain_of(m: &Mailbox) -> String {
    m.email.domain().to_ascii_lowercase()
}

fn parse(field: &str, addr: &str) -> Result<Mailbox, MailError> {
    addr.trim().parse::<Mailbox>().map_err(|e| MailError::Invalid(format!("{field}: `{}` is not an email address ({e})", guest_text(addr, 256).escape_debug())))
}

fn domain_allowed(rules: &[String], domain: &str) -> bool {
    rules.iter().any(|r| match r.strip_prefix("*.") {
        Some(suffix) => domain.ends_with(&format!(".{suffix}")),
        None => r.eq_ignore_ascii_case(domain),
    })
}

fn sender_allowed(rules: &[String], m: &Mailbox) -> bool {
    let addr = m.email.to_string().to_ascii_lowercase();
    rules.iter().any(|r| match r.strip_prefix('@') {
        Some(domain) => domain.eq_ignore_ascii_case(&domain_of(m)),
        None => r.eq_ignore_ascii_case(&addr),
    })
}

/// Checks a draft against the grant's mail policy and builds the message.
pub fn check(plugin: &str, grant: Option<&MailGrant>, sent_so_far: u32, d: &Draft) -> Result<Checked, MailError> {
    let Some(g) = grant else {
        return Err(deny("smtp-grant", format!("{plugin} may not send email; add smtp = {{ relay = \"…\", … }} to [grants.{plugin}] if this is intended")));
    };
    // Header injection first: nothing else about such a message matters.
    let fields = d.to.iter().chain(&d.cc).chain(&d.bcc).chain(d.from.iter()).chain(d.reply_to.iter());
    if let Some(bad) = fields.chain(std::iter::once(&d.subject)).find(|f| f.contains(['\r', '\n'])) {
        return Err(deny("header-injection", format!("`{}` contains CR or LF, which could inject mail headers; refused", guest_text(bad, 256).escape_debug())));
    }
    if sent_so_far >= g.max_messages {
        return Err(deny("smtp.max_messages", format!("{plugin} has sent its {} messages for this invocation (smtp.max_messages)", g.max_messages)));
    }
    // Counts and sizes before any address is parsed or any message built.
    let count = d.to.len() + d.cc.len() + d.bcc.len();
    if count > g.max_recipients {
        return Err(deny(
            "smtp.max_recipients",
            format!("{count} recipients; {plugin} may address at most {} per message (smtp.max_recipients)", g.max_recipients),
        ));
    }
    let raw = d.subject.len() + d.text.len() + d.html.as_ref().map_or(0, String::len);
    if raw as u64 > g.max_message_bytes {
        return Err(deny(
            "smtp.max_message_bytes",
            format!("the message is {}; {plugin} may send at most {} (smtp.max_message_bytes)", Bytes(raw as u64), Bytes(g.max_message_bytes)),
        ));
    }
    let from = match &d.from {
        Some(f) => parse("from", f)?,
        None => match &g.relay.default_from {
            Some(f) => parse("relay default_from", f)?,
            None => return Err(MailError::Invalid(format!("from is required: relay {} has no default_from", g.relay.name))),
        },
    };
    if !sender_allowed(&g.senders, &from) {
        return Err(deny("smtp.senders", format!("sender {} is not among {plugin}'s allowed senders ({})", from.email, g.senders.join(", "))));
    }
    let mut builder = Message::builder().from(from).subject(d.subject.clone()).message_id(None);
    let mut recipients = Vec::new();
    let mut domains: BTreeMap<String, u32> = BTreeMap::new();
    for (field, list) in [("to", &d.to), ("cc", &d.cc), ("bcc", &d.bcc)] {
        for addr in list {
            let m = parse(field, addr)?;
            let domain = domain_of(&m);
            if !domain_allowed(&g.recipient_domains, &domain) {
                return Err(deny(
                    "smtp.recipient_domains",
                    format!("recipient {} is outside {plugin}'s allowed domains ({}); nothing was sent", m.email, g.recipient_domains.join(", ")),
                ));
            }
            *domains.entry(domain).or_default() += 1;
            recipients.push(m.email.to_string());
            builder = match field {
                "to" => builder.to(m),
                "cc" => builder.cc(m),
                _ => builder.bcc(m),
            };
        }
    }
    if recipients.is_empty() {
        return Err(MailError::Invalid("the message has no recipients".into()));
    }
    if recipients.len() > g.max_recipients {
        return Err(deny(
            "smtp.max_recipients",
            format!("{} recipients; {plugin} may address at most {} per message (smtp.max_recipients)", recipients.len(), g.max_recipients),
        ));
    }
    if let Some(r) = &d.reply_to {
        // Replies go where reply-to says: it is held to the recipient domains.
        let m = parse("reply_to", r)?;
        if !domain_allowed(&g.recipient_domains, &domain_of(&m)) {
            return Err(deny(
                "smtp.reply_to",
                format!("reply-to {} is outside {plugin}'s allowed domains ({}); replies would leave them", m.email, g.recipient_domains.join(", ")),
            ));
        }
        builder = builder.reply_to(m);
    }
    let message = match &d.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(d.text.clone(), html.clone())),
        None => builder.header(ContentType::TEXT_PLAIN).body(d.text.clone()),
    }
    .map_err(|e| MailError::Invalid(format!("cannot build the message: {e}")))?;
    let size = message.formatted().len() as u64;
    if size > g.max_message_bytes {
        return Err(deny(
            "smtp.max_message_bytes",
            format!("the message is {}; {plugin} may send at most {} (smtp.max_message_bytes)", Bytes(size), Bytes(g.max_message_bytes)),
        ));
    }
    Ok(Checked { message, recipients, domains })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::mail::{Relay, RelayTls};
    use std::sync::Arc;
    use std::time::Duration;

    fn grant() -> MailGrant {
        MailGrant {
            relay: Arc::new(Relay {
                name: "corp".into(),
                host: "127.0.0.1".into(),
                port: 25,
                tls: RelayTls::None,
                auth: None,
                default_from: Some("warden@corp.example".into()),
                timeout: Duration::from_secs(5),
            }),
            senders: vec!["warden@corp.example".into(), "@alerts.corp.example".into()],
            recipient_domains: vec!["corp.example".into(), "*.corp.example".into()],
            max_recipients: 3,
            max_message_bytes: 10_000,
            max_messages: 2,
        }
    }

    fn draft(to: &[&str]) -> Draft {
        Draft {
            from: None,
            to: to.iter().map(|s| s.to_string()).collect(),
            cc: vec![],
            bcc: vec![],
            reply_to: None,
            subject: "hello".into(),
            text: "body".into(),
            html: None,
        }
    }

    fn rule(r: Result<Checked, MailError>) -> String {
        match r {
            Err(MailError::Denied(d)) => d.rule,
            Err(e) => format!("{e:?}"),
            Ok(_) => "sent".into(),
        }
    }

    #[test]
    fn the_mail_policy_decides() {
        let g = grant();
        assert_eq!(rule(check("p", Some(&g), 0, &draft(&["lead@corp.example", "x@soc.corp.example"]))), "sent");
        assert_eq!(rule(check("p", Some(&g), 0, &draft(&["x@gmail.com"]))), "smtp.recipient_domains");
        assert_eq!(rule(check("p", Some(&g), 0, &draft(&["x@corp.example.evil.org"]))), "smtp.recipient_domains");
        assert_eq!(rule(check("p", Some(&g), 0, &draft(&["a@corp.example"; 4]))), "smtp.max_recipients");
        assert_eq!(rule(check("p", Some(&g), 2, &draft(&["a@corp.example"]))), "smtp.max_messages");
        assert_eq!(rule(check("p", None, 0, &draft(&["a@corp.example"]))), "smtp-grant");
        let mut d = draft(&["a@corp.example"]);
        d.from = Some("ceo@corp.example".into());
        assert_eq!(rule(check("p", Some(&g), 0, &d)), "smtp.senders");
        d.from = Some("bot@alerts.corp.example".into());
        assert_eq!(rule(check("p", Some(&g), 0, &d)), "sent");
        d.subject = "hi\r\nBcc: victim@evil.org".into();
        assert_eq!(rule(check("p", Some(&g), 0, &d)), "header-injection");
        let mut d = draft(&["a@corp.example"]);
        d.text = "x".repeat(20_000);
        assert_eq!(rule(check("p", Some(&g), 0, &d)), "smtp.max_message_bytes");
        let mut d = draft(&["a@corp.example"]);
        d.reply_to = Some("attacker@evil.example".into());
        assert_eq!(rule(check("p", Some(&g), 0, &d)), "smtp.reply_to");
        d.reply_to = Some("soc@corp.example".into());
        assert_eq!(rule(check("p", Some(&g), 0, &d)), "sent");
    }

    #[test]
    fn a_huge_recipient_list_is_refused_before_any_address_is_parsed() {
        let many: Vec<String> = (0..100_000).map(|i| format!("not an address {i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(rule(check("p", Some(&grant()), 0, &draft(&refs))), "smtp.max_recipients");
    }

    #[test]
    fn bad_addresses_are_named() {
        match check("p", Some(&grant()), 0, &draft(&["not an address"])) {
            Err(MailError::Invalid(m)) => assert!(m.contains("to: `not an address`"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }
}
