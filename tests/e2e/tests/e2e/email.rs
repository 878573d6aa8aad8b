//! Email end to end: the `email` plugin through the host's `smtp` capability to
//! a real SMTP server (aiosmtpd), and through `http` to the SendGrid and
//! Mailgun simulators.

use serde_json::{json, Value};
use warden::audit::Verdict;
use warden::InvokeError;
use warden_e2e::{everything, output, policy, run, runtime, SmtpServer};
use warden_sim::mail;

const SG_KEY: &str = "SG.test-key-77aa";
const MG_KEY: &str = "mg-test-key-31bb";

fn mail_policy(smtp_port: u16, api_port: u16) -> warden::Policy {
    // SAFETY: every test sets the same values.
    unsafe {
        std::env::set_var("WARDEN_TEST_SG_KEY", SG_KEY);
        std::env::set_var("WARDEN_TEST_MG_KEY", MG_KEY);
    }
    policy(&format!(
        r#"
[relays.local]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
default_from = "warden@corp.example"
timeout_ms = 5000

[plugins.email]
path = "{{email}}"

[grants.email]
allow = ["POST http://127.0.0.1:{api_port}/v3/**"]
credentials = ["sendgrid", "mailgun"]
smtp = {{ relay = "local", senders = ["warden@corp.example", "@soc.corp.example"], recipient_domains = ["corp.example"], max_recipients = 3, max_message_bytes = "16KiB", max_messages = 3 }}

[plugins.probe]
path = "{{probe}}"

[grants.probe]
smtp = {{ relay = "local", recipient_domains = ["corp.example"], max_recipients = 3 }}

[credentials.sendgrid]
kind = "bearer"
env = "WARDEN_TEST_SG_KEY"
hosts = ["http://127.0.0.1:{api_port}"]

[credentials.mailgun]
kind = "basic"
user = "api"
env = "WARDEN_TEST_MG_KEY"
hosts = ["http://127.0.0.1:{api_port}"]
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_reaches_a_real_smtp_server_with_both_parts_and_a_clickable_link() {
    let server = SmtpServer::start();
    let p = mail_policy(server.port, 1);
    let rt = runtime(None);
    let link = "https://corp.atlassian.net/browse/SEC-12";
    let report = run(
        &rt,
        &p,
        "email",
        json!({
            "to": ["lead-one@corp.example", "Lead Two <lead-two@corp.example>"],
            "cc": "soc@corp.example",
            "subject": "[warden] evil.example seen on 3 hosts: SEC-12",
            "text": format!("Ticket SEC-12 is open: {link}.\nHosts: WS-ALICE-01, WS-BOB-07"),
        }),
    )
    .await;
    let out = output(&report);
    assert_eq!(out["provider"], "smtp");
    assert_eq!(out["accepted"], json!(["lead-one@corp.example", "lead-two@corp.example", "soc@corp.example"]));

    let got = server.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m["rcpt_tos"], json!(["lead-one@corp.example", "lead-two@corp.example", "soc@corp.example"]));
    assert_eq!(m["mail_from"], "warden@corp.example");
    assert_eq!(m["subject"], "[warden] evil.example seen on 3 hosts: SEC-12");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert!(m["text"].as_str().unwrap().contains(link));
    let html = m["html"].as_str().unwrap();
    assert!(html.contains(&format!("<a href=\"{link}\">{link}</a>")), "{html}");
    assert_eq!(m["message_id"], out["message_id"]);

    let a = report.audit.iter().find(|a| a.capability == "smtp").unwrap();
    assert_eq!(a.decision, Verdict::Allowed);
    assert_eq!(a.recipient_domains.as_ref().unwrap()["corp.example"], 3);
    assert!(!everything(&report).contains("WS-ALICE-01, WS-BOB-07"), "the audit must not carry the body");
}

fn denied_rule(report: &warden::runtime::InvocationReport) -> String {
    report.audit.iter().find(|a| a.capability == "smtp").map(|a| a.rule.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_deliver_nothing() {
    let server = SmtpServer::start();
    let p = mail_policy(server.port, 1);
    let rt = runtime(None);
    let base = json!({"to": ["lead@corp.example"], "subject": "s", "text": "t"});
    let cases = [
        (json!({"to": ["someone@gmail.com"]}), "smtp.recipient_domains"),
        (json!({"to": ["lead@corp.example.evil.org"]}), "smtp.recipient_domains"),
        (json!({"from": "ceo@corp.example"}), "smtp.senders"),
        (json!({"to": ["a@corp.example", "b@corp.example"], "cc": ["c@corp.example", "d@corp.example"]}), "smtp.max_recipients"),
        (json!({"text": "x".repeat(40_000)}), "smtp.max_message_bytes"),
    ];
    for (patch, rule) in cases {
        let mut input = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            input[k] = v.clone();
        }
        let report = run(&rt, &p, "email", input).await;
        match &report.outcome {
            Err(InvokeError::Denied { message }) => assert!(!message.is_empty()),
            other => panic!("{rule}: {other:?}"),
        }
        assert_eq!(denied_rule(&report), rule);
    }
    // Header injection, handed straight to the host by a guest that does not check.
    for (field, value) in [("subject", json!("hi\r\nBcc: victim@evil.org")), ("to", json!(["lead@corp.example\r\nBcc: victim@evil.org"]))] {
        let mut input = json!({"op": "mail", "to": ["lead@corp.example"], "subject": "s", "text": "t"});
        input[field] = value;
        let report = run(&rt, &p, "probe", input).await;
        assert_eq!(output(&report)["error"]["kind"], "denied", "{field}");
        assert_eq!(denied_rule(&report), "header-injection");
    }
    // The plugin names a bad address before anything reaches the host.
    let bad = run(&rt, &p, "email", json!({"to": ["lead@corp.example", "not-an-address"], "subject": "s", "text": "t"})).await;
    assert!(matches!(&bad.outcome, Err(InvokeError::InvalidInput { message }) if message.contains("`not-an-address`")), "{:?}", bad.outcome);

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(server.messages().len(), 0, "a refused message reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_a_mail_grant_cannot_send() {
    let server = SmtpServer::start();
    let p = policy(&format!("[relays.local]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n[plugins.email]\npath = \"{{email}}\"\n", server.port));
    let report = run(&runtime(None), &p, "email", json!({"to": "a@corp.example", "from": "w@corp.example", "subject": "s", "text": "t"})).await;
    assert!(matches!(&report.outcome, Err(InvokeError::Denied { message }) if message.contains("may not send email")), "{:?}", report.outcome);
    assert_eq!(server.messages().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendgrid_and_mailgun_send_through_the_simulators() {
    let (api, sim) =
        mail::spawn(mail::Config { sendgrid_key: SG_KEY.into(), mailgun_key: MG_KEY.into(), mailgun_domain: "mg.corp.example".into() }).await.unwrap();
    let p = mail_policy(1, api.port());
    let rt = runtime(None);
    let api_url = format!("http://{}", api.addr);
    let sg = run(
        &rt,
        &p,
        "email",
        json!({
            "provider": "sendgrid", "credential": "sendgrid", "api_url": api_url,
            "from": "warden@corp.example", "to": ["lead@corp.example"], "bcc": "audit@corp.example",
            "subject": "SEC-1", "text": "see https://jira.example/browse/SEC-1"
        }),
    )
    .await;
    let out = output(&sg);
    assert_eq!(out["message_id"], "sg-000001");
    assert_eq!(out["accepted"], json!(["lead@corp.example", "audit@corp.example"]));
    let body: Value = sim.accepted.lock().unwrap()[0].clone();
    assert_eq!(body["personalizations"][0]["bcc"][0]["email"], "audit@corp.example");
    assert_eq!(body["content"][1]["type"], "text/html");
    assert!(body["content"][1]["value"].as_str().unwrap().contains("<a href=\"https://jira.example/browse/SEC-1\">"));
    assert_eq!(sim.recorder.all()[0].headers["authorization"], format!("Bearer {SG_KEY}"));
    assert!(!everything(&sg).contains(SG_KEY));

    let mg = run(
        &rt,
        &p,
        "email",
        json!({
            "provider": "mailgun", "credential": "mailgun", "api_url": api_url, "domain": "mg.corp.example",
            "from": "warden@corp.example", "to": "lead@corp.example", "subject": "SEC-1", "text": "t"
        }),
    )
    .await;
    let out = output(&mg);
    assert_eq!(out["message_id"], "<000002.mg@mg.corp.example>");
    assert_eq!(sim.accepted.lock().unwrap()[1]["subject"], "SEC-1");
    assert!(!everything(&mg).contains(MG_KEY));

    // Error mapping: a refused field, and an unknown domain.
    let missing_from = run(
        &rt,
        &p,
        "email",
        json!({
            "provider": "sendgrid", "credential": "sendgrid", "api_url": api_url, "to": "lead@corp.example", "subject": "s", "text": "t"
        }),
    )
    .await;
    assert!(matches!(&missing_from.outcome, Err(InvokeError::InvalidInput { message }) if message.contains("from is required")));
    let wrong_domain = run(
        &rt,
        &p,
        "email",
        json!({
            "provider": "mailgun", "credential": "mailgun", "api_url": api_url, "domain": "other.example",
            "from": "warden@corp.example", "to": "lead@corp.example", "subject": "s", "text": "t"
        }),
    )
    .await;
    assert!(
        matches!(&wrong_domain.outcome, Err(InvokeError::Upstream { status: Some(404), message, .. }) if message.contains("Domain not found")),
        "{:?}",
        wrong_domain.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_names_the_credential() {
    let (api, _sim) = mail::spawn(mail::Config { sendgrid_key: "SG.other".into(), ..Default::default() }).await.unwrap();
    let p = mail_policy(1, api.port());
    let report = run(
        &runtime(None),
        &p,
        "email",
        json!({
            "provider": "sendgrid", "credential": "sendgrid", "api_url": format!("http://{}", api.addr),
            "from": "warden@corp.example", "to": "lead@corp.example", "subject": "s", "text": "t"
        }),
    )
    .await;
    match &report.outcome {
        Err(InvokeError::Upstream { status: Some(401), message, .. }) => assert!(message.contains("credential `sendgrid`"), "{message}"),
        other => panic!("{other:?}"),
    }
}
