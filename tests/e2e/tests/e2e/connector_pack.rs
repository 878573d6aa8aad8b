//! The SOC's daily five beyond the seed, end to end: each plugin as a real
//! component under a policy granting exactly its routes, against a simulator
//! speaking the vendor's API (status codes, error bodies, rate limits), with
//! the credential injected by the host — for CrowdStrike, an OAuth2 token the
//! host obtains itself.

use serde_json::{json, Value};
use warden::runtime::InvocationReport;
use warden::InvokeError;
use warden_e2e::{everything, output, policy, run, runtime};
use warden_sim::{crowdstrike, servicenow, slack, virustotal};

const SLACK_TOKEN: &str = "xoxb-test-2c71f0d3a9";
const VT_KEY: &str = "vt-test-key-5e0b2d81c4";
const SNOW_PASSWORD: &str = "snow-test-password-71ac";
const CS_ID: &str = "cs-test-client-0f3e";
const CS_SECRET: &str = "cs-test-secret-9b27d6a4e1";

fn set_env() {
    // SAFETY: every test sets the same values.
    unsafe {
        std::env::set_var("WARDEN_PACK_SLACK", SLACK_TOKEN);
        std::env::set_var("WARDEN_PACK_VT", VT_KEY);
        std::env::set_var("WARDEN_PACK_SNOW", SNOW_PASSWORD);
        std::env::set_var("WARDEN_PACK_CS_ID", CS_ID);
        std::env::set_var("WARDEN_PACK_CS_SECRET", CS_SECRET);
        std::env::set_var("WARDEN_PACK_WRONG", "not-the-secret");
    }
}

/// Each plugin granted its simulator's exact routes and nothing else.
fn pack_policy(slack: u16, vt: u16, snow: u16, cs: u16, cs_secret_env: &str, cs_auth: &str) -> warden::Policy {
    policy(&pack_text(slack, vt, snow, cs, cs_secret_env, cs_auth))
}

fn pack_text(slack: u16, vt: u16, snow: u16, cs: u16, cs_secret_env: &str, cs_auth: &str) -> String {
    format!(
        r#"
[plugins.slack-notify]
path = "{{slack-notify}}"
[grants.slack-notify]
allow = ["POST http://127.0.0.1:{slack}/api/chat.postMessage"]
credentials = ["slack"]
limits = {{ wall_ms = 20000, http_requests = 4 }}
[credentials.slack]
kind = "bearer"
env = "WARDEN_PACK_SLACK"
hosts = ["http://127.0.0.1:{slack}"]

[plugins.virustotal-lookup]
path = "{{virustotal-lookup}}"
[grants.virustotal-lookup]
allow = ["GET http://127.0.0.1:{vt}/api/v3/domains/*", "GET http://127.0.0.1:{vt}/api/v3/ip_addresses/*", "GET http://127.0.0.1:{vt}/api/v3/files/*", "GET http://127.0.0.1:{vt}/api/v3/urls/*"]
credentials = ["vt"]
limits = {{ wall_ms = 10000, http_requests = 1 }}
[credentials.vt]
kind = "header"
header = "x-apikey"
env = "WARDEN_PACK_VT"
hosts = ["http://127.0.0.1:{vt}"]

[plugins.servicenow-incident]
path = "{{servicenow-incident}}"
[grants.servicenow-incident]
allow = ["POST http://127.0.0.1:{snow}/api/now/table/incident", "PATCH http://127.0.0.1:{snow}/api/now/table/incident/*", "GET http://127.0.0.1:{snow}/api/now/table/incident/*", "GET http://127.0.0.1:{snow}/api/now/table/incident"]
credentials = ["snow"]
limits = {{ wall_ms = 20000, http_requests = 12 }}
[credentials.snow]
kind = "basic"
user = "warden.integration"
env = "WARDEN_PACK_SNOW"
hosts = ["http://127.0.0.1:{snow}"]

[plugins.crowdstrike-contain]
path = "{{crowdstrike-contain}}"
[grants.crowdstrike-contain]
allow = ["POST http://127.0.0.1:{cs}/devices/entities/devices-actions/v2"]
credentials = ["falcon"]
limits = {{ wall_ms = 20000, http_requests = 2 }}
[credentials.falcon]
kind = "oauth2"
token_url = "http://127.0.0.1:{cs}/oauth2/token"
client_id_env = "WARDEN_PACK_CS_ID"
env = "{cs_secret_env}"
client_auth = "{cs_auth}"
scopes = ["hosts:write"]
hosts = ["http://127.0.0.1:{cs}"]
"#
    )
}

fn no_secret(report: &InvocationReport, extra: &[String]) {
    let all = everything(report);
    for s in [SLACK_TOKEN, VT_KEY, SNOW_PASSWORD, CS_SECRET].iter().map(|s| s.to_string()).chain(extra.iter().cloned()) {
        assert!(!all.contains(&s), "`{s}` leaked into the report: {all}");
    }
}

fn with(base: Value, extra: Value) -> Value {
    let mut v = base;
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn invalid(report: &InvocationReport) -> String {
    match &report.outcome {
        Err(InvokeError::InvalidInput { message }) => message.clone(),
        other => panic!("expected invalid-input, got {other:?}"),
    }
}

// ---- Slack ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_posts_block_kit_replies_in_threads_and_honours_rate_limits() {
    set_env();
    let (srv, sim) = slack::spawn(slack::Config { token: SLACK_TOKEN.into(), ..Default::default() }).await.unwrap();
    let p = pack_policy(srv.port(), 1, 1, 1, "WARDEN_PACK_CS_SECRET", "post");
    let rt = runtime(None);
    let base = json!({"api_url": format!("http://{}", srv.addr), "credential": "slack", "channel": "#soc", "text": "*evil.example* seen on 3 hosts"});

    let posted = run(&rt, &p, "slack-notify", with(base.clone(), json!({
        "title": "Contain 3 hosts?",
        "fields": [{"title": "Verdict", "value": "malicious"}, {"title": "Hosts", "value": 3}],
        "link": {"text": "Open INC0010001", "url": "https://corp.service-now.com/nav_to.do?uri=incident.do"},
        "buttons": [{"text": "Contain", "value": "https://warden.corp.example/approvals/abc", "style": "danger"}, {"text": "Ignore", "value": "https://warden.corp.example/approvals/def"}]
    }))).await;
    let out = output(&posted);
    assert_eq!(out["channel"], "C0SOC");
    assert_eq!(out["buttons"], json!(["warden-0", "warden-1"]));
    let msg = &sim.messages()[0];
    assert_eq!(msg.text, "*evil.example* seen on 3 hosts", "the fallback text");
    assert_eq!(msg.blocks[0]["type"], "header");
    assert_eq!(msg.blocks[2]["fields"][1]["text"], "*Hosts*\n3");
    let buttons = slack::buttons(&msg.blocks);
    assert_eq!(
        buttons.iter().map(|b| b["value"].as_str().unwrap_or("(link)")).collect::<Vec<_>>(),
        vec!["(link)", "https://warden.corp.example/approvals/abc", "https://warden.corp.example/approvals/def"]
    );
    assert_eq!(sim.recorder.all()[0].headers["authorization"], format!("Bearer {SLACK_TOKEN}"), "the host injected the bot token");
    no_secret(&posted, &[]);

    // A reply in the message's thread.
    let ts = out["ts"].as_str().unwrap();
    let reply = output(&run(&rt, &p, "slack-notify", with(base.clone(), json!({"text": "Contained.", "thread_ts": ts}))).await);
    assert_eq!(reply["thread_ts"], ts);
    assert_eq!(sim.messages()[1].thread_ts.as_deref(), Some(ts));

    // Slack's `ok: false` errors: the message or channel is wrong → invalid input.
    let r = run(&rt, &p, "slack-notify", with(base.clone(), json!({"channel": "#nope"}))).await;
    assert!(invalid(&r).contains("channel_not_found"));
    let r = run(&rt, &p, "slack-notify", with(base.clone(), json!({"text": "x", "thread_ts": "1.000000"}))).await;
    assert!(invalid(&r).contains("thread_not_found"));

    // Rate limited once: retried after Retry-After, posted. Rate limited past the retries: upstream 429 with retry-after.
    sim.ratelimit_next(1);
    output(&run(&rt, &p, "slack-notify", base.clone()).await);
    sim.ratelimit_next(10);
    let r = run(&rt, &p, "slack-notify", base.clone()).await;
    match &r.outcome {
        Err(InvokeError::Upstream { status: Some(429), retry_after_ms: Some(1000), message }) => assert!(message.contains("rate-limited"), "{message}"),
        other => panic!("{other:?}"),
    }
    sim.ratelimit_next(0);

    // A wrong token is named by its credential.
    let wrong = policy(&pack_text(srv.port(), 1, 1, 1, "WARDEN_PACK_CS_SECRET", "post").replace("env = \"WARDEN_PACK_SLACK\"", "env = \"WARDEN_PACK_WRONG\""));
    let r = run(&rt, &wrong, "slack-notify", base.clone()).await;
    assert!(
        matches!(&r.outcome, Err(InvokeError::Upstream { message, .. }) if message.contains("credential `slack`") && message.contains("invalid_auth")),
        "{:?}",
        r.outcome
    );
}

// ---- VirusTotal ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virustotal_summarises_known_indicators_and_unknown_is_an_answer() {
    set_env();
    let (srv, sim) = virustotal::spawn(virustotal::Config { api_key: VT_KEY.into(), ..Default::default() }).await.unwrap();
    let p = pack_policy(1, srv.port(), 1, 1, "WARDEN_PACK_CS_SECRET", "post");
    let rt = runtime(None);
    let lookup = |kind: &str, value: &str| json!({"api_url": format!("http://{}", srv.addr), "credential": "vt", "indicator": {"kind": kind, "value": value}});

    let r = run(&rt, &p, "virustotal-lookup", lookup("domain", "evil.example")).await;
    let out = output(&r);
    assert_eq!(
        (out["found"].as_bool(), out["verdict"].as_str(), out["malicious"].as_u64(), out["reputation"].as_i64()),
        (Some(true), Some("malicious"), Some(12), Some(-41))
    );
    assert_eq!(out["categories"], json!(["malicious web sites", "phishing"]));
    assert_eq!(out["link"], "https://www.virustotal.com/gui/domain/evil.example");
    assert_eq!(sim.recorder.all()[0].headers["x-apikey"], VT_KEY, "the host injected the key");
    no_secret(&r, &[]);

    assert_eq!(output(&run(&rt, &p, "virustotal-lookup", lookup("domain", "corp.example")).await)["verdict"], "clean");
    assert_eq!(output(&run(&rt, &p, "virustotal-lookup", lookup("ip", "203.0.113.66")).await)["verdict"], "malicious");
    let file = output(&run(&rt, &p, "virustotal-lookup", lookup("md5", "44D88612FEA8A8F36DE82E1278ABB02F")).await);
    assert_eq!((file["verdict"].as_str(), file["threat_label"].as_str()), (Some("malicious"), Some("trojan.emotet/generic")));
    let url = output(&run(&rt, &p, "virustotal-lookup", lookup("url", "http://evil.example/dropper.php")).await);
    assert_eq!((url["found"].as_bool(), url["malicious"].as_u64()), (Some(true), Some(9)));
    assert!(sim.recorder.paths().contains(&"/api/v3/urls/aHR0cDovL2V2aWwuZXhhbXBsZS9kcm9wcGVyLnBocA".to_string()), "{:?}", sim.recorder.paths());

    // Never seen: an answer, not an error.
    let unknown = output(&run(&rt, &p, "virustotal-lookup", lookup("domain", "never-seen.example")).await);
    assert_eq!((unknown["found"].as_bool(), unknown["verdict"].as_str()), (Some(false), Some("unknown")));

    // A value that is not its kind never reaches VirusTotal.
    let before = sim.recorder.count();
    assert!(invalid(&run(&rt, &p, "virustotal-lookup", lookup("domain", "../users/me")).await).contains("not a domain"));
    assert_eq!(sim.recorder.count(), before);

    // Quota: not retried (it would burn the quota), returned with its retry-after.
    sim.quota_exceeded_next(1);
    let r = run(&rt, &p, "virustotal-lookup", lookup("domain", "evil.example")).await;
    assert_eq!(
        r.outcome,
        Err(InvokeError::Upstream {
            status: Some(429),
            message: "VirusTotal quota exceeded (QuotaExceededError); try again later".into(),
            retry_after_ms: Some(60_000)
        })
    );
}

// ---- ServiceNow ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicenow_opens_notes_and_reads_incidents() {
    set_env();
    let (srv, sim) = servicenow::spawn(servicenow::Config { password: SNOW_PASSWORD.into(), ..Default::default() }).await.unwrap();
    let p = pack_policy(1, 1, srv.port(), 1, "WARDEN_PACK_CS_SECRET", "post");
    let rt = runtime(None);
    let site = format!("http://{}", srv.addr);
    let base = json!({"instance_url": site, "credential": "snow"});

    let opened = run(
        &rt,
        &p,
        "servicenow-incident",
        with(
            base.clone(),
            json!({
                "operation": "open", "short_description": "IOC evil.example seen on 3 hosts", "description": "WS-ALICE-01, WS-BOB-07, SRV-DB-01",
                "priority": "High", "category": "security", "note": "Opened by warden"
            }),
        ),
    )
    .await;
    let out = output(&opened);
    assert_eq!(out["key"], "INC0010001");
    assert_eq!(out["status"], json!({"name": "New", "state": "1"}));
    let sys_id = out["sys_id"].as_str().unwrap().to_string();
    assert_eq!(out["url"], format!("{site}/nav_to.do?uri=incident.do%3Fsys_id%3D{sys_id}"));
    let inc = sim.incident("INC0010001").unwrap();
    assert_eq!((inc.fields["impact"].as_str(), inc.fields["urgency"].as_str(), inc.fields["priority"].as_str()), (Some("1"), Some("2"), Some("2")));
    assert_eq!(inc.work_notes, vec!["Opened by warden".to_string()]);
    assert!(sim.recorder.all()[0].headers["authorization"].starts_with("Basic "));
    no_secret(&opened, &[]);

    // A note by number (looked up), customer-visible this time; the state as an analyst set it.
    let noted = output(
        &run(
            &rt,
            &p,
            "servicenow-incident",
            with(base.clone(), json!({"operation": "note", "number": "INC0010001", "note": "Hosts contained", "internal": false})),
        )
        .await,
    );
    assert_eq!(noted["noted"], true);
    assert_eq!(sim.incident("INC0010001").unwrap().comments, vec!["Hosts contained".to_string()]);
    sim.set_state("INC0010001", "6");
    let status = output(&run(&rt, &p, "servicenow-incident", with(base.clone(), json!({"operation": "status", "sys_id": sys_id}))).await);
    assert_eq!(status["status"]["name"], "Resolved");

    // Unknown incidents, refused input, throttling retried, a throttle that lasts.
    assert!(invalid(
        &run(&rt, &p, "servicenow-incident", with(base.clone(), json!({"operation": "status", "sys_id": "00000000000000000000000000000000"}))).await
    )
    .contains("No Record found"));
    assert!(invalid(&run(&rt, &p, "servicenow-incident", with(base.clone(), json!({"operation": "note", "number": "INC0099999", "note": "x"}))).await)
        .contains("no incident INC0099999"));
    assert!(invalid(&run(&rt, &p, "servicenow-incident", with(base.clone(), json!({"operation": "create"}))).await).contains("short_description is required"));
    sim.throttle_next(1);
    assert_eq!(
        output(&run(&rt, &p, "servicenow-incident", with(base.clone(), json!({"operation": "create", "short_description": "x"}))).await)["key"],
        "INC0010002"
    );
    sim.throttle_next(10);
    let r = run(&rt, &p, "servicenow-incident", with(base.clone(), json!({"operation": "create", "short_description": "x"}))).await;
    match &r.outcome {
        Err(InvokeError::Upstream { status: Some(429), retry_after_ms: Some(1000), message }) => assert!(message.contains("Rate limit rule"), "{message}"),
        other => panic!("{other:?}"),
    }
    sim.throttle_next(0);

    // An OAuth bearer token from the instance works the same; a wrong password is named by its credential.
    sim.config.lock().unwrap().bearer = Some(SNOW_PASSWORD.into());
    let bearer = policy(
        &pack_text(1, 1, srv.port(), 1, "WARDEN_PACK_CS_SECRET", "post").replace("kind = \"basic\"\nuser = \"warden.integration\"", "kind = \"bearer\""),
    );
    let r = run(&rt, &bearer, "servicenow-incident", with(base.clone(), json!({"operation": "status", "number": "INC0010001"}))).await;
    assert_eq!(output(&r)["status"]["name"], "Resolved");
    assert_eq!(sim.recorder.all().last().unwrap().headers["authorization"], format!("Bearer {SNOW_PASSWORD}"));
    let wrong = policy(&pack_text(1, 1, srv.port(), 1, "WARDEN_PACK_CS_SECRET", "post").replace("env = \"WARDEN_PACK_SNOW\"", "env = \"WARDEN_PACK_WRONG\""));
    let r = run(&rt, &wrong, "servicenow-incident", with(base.clone(), json!({"operation": "status", "number": "INC0010001"}))).await;
    assert!(
        matches!(&r.outcome, Err(InvokeError::Upstream { status: Some(401), message, .. }) if message.contains("credential `snow`") && message.contains("User Not Authenticated")),
        "{:?}",
        r.outcome
    );
}

// ---- CrowdStrike, with the host doing the OAuth ----

fn falcon(srv: &warden_sim::Running, action: &str, ids: Value) -> Value {
    json!({"api_url": format!("http://{}", srv.addr), "credential": "falcon", "action": action, "ids": ids})
}

fn oauth_exchanges(report: &InvocationReport) -> Vec<Value> {
    let v = serde_json::to_value(report).unwrap();
    v["audit"].as_array().unwrap().iter().flat_map(|a| a["oauth"].as_array().cloned().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_mints_caches_and_refreshes_the_falcon_token_and_the_plugin_never_sees_it() {
    set_env();
    let (srv, sim) = crowdstrike::spawn(crowdstrike::Config { client_id: CS_ID.into(), client_secret: CS_SECRET.into(), ..Default::default() }).await.unwrap();
    let p = pack_policy(1, 1, 1, srv.port(), "WARDEN_PACK_CS_SECRET", "post");
    let rt = runtime(None);
    let unknown = "0000000000000000000000000000dead";

    // First use: one token exchange, audited on the request; Alice contained, the unknown id refused by Falcon.
    let first = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::ALICE, unknown]))).await;
    let out = output(&first);
    assert_eq!(out["accepted"], json!([crowdstrike::ALICE]));
    assert_eq!(out["refused"][0]["id"], unknown);
    assert_eq!(sim.contained(), vec![crowdstrike::ALICE.to_string()]);
    let ex = oauth_exchanges(&first);
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!((ex[0]["why"].as_str(), ex[0]["status"].as_u64(), ex[0]["expires_in_s"].as_u64()), (Some("first use"), Some(201), Some(1799)));
    assert_eq!(ex[0]["url"], format!("http://{}/oauth2/token", srv.addr));
    let seen = sim.recorder.all();
    assert_eq!(seen[0].path, "/oauth2/token");
    assert_eq!(seen[1].headers["authorization"], format!("Bearer {}", sim.valid_tokens()[0]), "the host injected the token it minted");
    let tokens = sim.valid_tokens();
    no_secret(&first, &tokens);

    // Cached: the next call makes no exchange.
    let second = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::BOB]))).await;
    output(&second);
    assert!(oauth_exchanges(&second).is_empty());
    assert_eq!(sim.tokens_issued(), 1);

    // Revoked or expired: the API's 401 makes the host fetch a new token once and send again.
    sim.expire_tokens();
    let third = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "lift_containment", json!([crowdstrike::ALICE]))).await;
    assert_eq!(output(&third)["accepted"], json!([crowdstrike::ALICE]));
    let ex = oauth_exchanges(&third);
    assert_eq!(ex.iter().map(|e| e["why"].as_str().unwrap()).collect::<Vec<_>>(), vec!["the API answered 401 to the cached token"]);
    assert_eq!(sim.tokens_issued(), 2);
    assert_eq!(sim.contained(), vec![crowdstrike::BOB.to_string()]);
    let mut all_tokens = tokens.clone();
    all_tokens.extend(sim.valid_tokens());
    no_secret(&third, &all_tokens);

    // No list, no containment; nothing reached Falcon.
    let before = sim.recorder.count();
    assert!(invalid(&run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([]))).await).contains("explicit host id list"));
    assert_eq!(sim.recorder.count(), before);

    // Rate limited once: retried after Retry-After. Again: upstream with when to come back.
    sim.throttle_next(1);
    output(&run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::BOB]))).await);
    sim.throttle_next(2);
    let r = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::BOB]))).await;
    assert!(matches!(&r.outcome, Err(InvokeError::Upstream { status: Some(429), retry_after_ms: Some(1000), .. })), "{:?}", r.outcome);
}

/// A token is replaced shortly before it expires (a minute before, at most
/// half its life), without waiting for the API to refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_its_expiry_is_replaced_before_use() {
    set_env();
    let (srv, sim) = crowdstrike::spawn(crowdstrike::Config { client_id: CS_ID.into(), client_secret: CS_SECRET.into(), expires_in: 1, ..Default::default() })
        .await
        .unwrap();
    let p = pack_policy(1, 1, 1, srv.port(), "WARDEN_PACK_CS_SECRET", "post");
    let rt = runtime(None);
    output(&run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::ALICE]))).await);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::BOB]))).await;
    output(&r);
    assert_eq!(oauth_exchanges(&r).iter().map(|e| e["why"].as_str().unwrap()).collect::<Vec<_>>(), vec!["the cached token is about to expire"]);
    assert_eq!(sim.tokens_issued(), 2);
    assert!(!sim.recorder.all().iter().any(|s| s.path.starts_with("/devices") && !s.headers.contains_key("authorization")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_falcon_refuses_denies_the_call_and_only_the_operator_hears_why() {
    set_env();
    let (srv, sim) = crowdstrike::spawn(crowdstrike::Config { client_id: CS_ID.into(), client_secret: CS_SECRET.into(), ..Default::default() }).await.unwrap();
    let p = pack_policy(1, 1, 1, srv.port(), "WARDEN_PACK_WRONG", "post");
    // One runtime, as a server has: the token endpoint's back-off is the HTTP capability's state.
    let rt = runtime(None);
    let r = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::ALICE]))).await;
    match &r.outcome {
        // What the guest heard comes first; the host adds the audit's reason for the operator.
        Err(InvokeError::Denied { message }) => {
            assert!(message.starts_with("credential `falcon` could not obtain an access token; the operator's audit record says why;"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let audit = serde_json::to_value(&r).unwrap()["audit"].clone();
    let call = &audit[0];
    assert_eq!((call["decision"].as_str(), call["rule"].as_str()), (Some("denied"), Some("credential-token")));
    assert!(call["reason"].as_str().unwrap().contains("the token endpoint answered 401"), "{call}");
    assert_eq!(call["oauth"][0]["status"], 401);
    assert!(sim.contained().is_empty());
    assert_eq!(sim.recorder.paths(), vec!["/oauth2/token".to_string()], "nothing was sent to the API without a token");
    no_secret(&r, &["not-the-secret".to_string()]);
    // Asked again at once, five times: the endpoint that refused is not asked
    // again until its back-off is over; each call is still denied, saying so.
    for _ in 0..5 {
        let again = run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::ALICE]))).await;
        let audit = serde_json::to_value(&again).unwrap()["audit"].clone();
        assert!(audit[0]["reason"].as_str().unwrap().contains("the token endpoint is asked again in"), "{audit}");
    }
    assert_eq!(sim.recorder.paths(), vec!["/oauth2/token".to_string()], "a refusing token endpoint was asked on every request");
    // After the back-off, it is asked again (once).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    run(&rt, &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::ALICE]))).await;
    assert_eq!(sim.recorder.paths().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_can_authenticate_with_http_basic_at_the_token_endpoint() {
    set_env();
    let (srv, sim) = crowdstrike::spawn(crowdstrike::Config { client_id: CS_ID.into(), client_secret: CS_SECRET.into(), ..Default::default() }).await.unwrap();
    let p = pack_policy(1, 1, 1, srv.port(), "WARDEN_PACK_CS_SECRET", "basic");
    let r = run(&runtime(None), &p, "crowdstrike-contain", falcon(&srv, "contain", json!([crowdstrike::ALICE]))).await;
    assert_eq!(output(&r)["accepted"], json!([crowdstrike::ALICE]));
    assert!(sim.recorder.all()[0].headers["authorization"].starts_with("Basic "));
}

/// The token endpoint is the host's business: a plugin granted the API cannot
/// reach it, and an `oauth2` credential's odd fields are refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_credentials_are_checked_at_load() {
    for (patch, why) in [
        ("token_url = \"http://auth.example.com/oauth2/token\"", "in clear"),
        ("token_url = \"https://user:pw@auth.example.com/t\"", "must not carry a user"),
        ("client_auth = \"jwt\"", "client_auth = \"jwt\" is unknown"),
        ("scopes = [\"a b\"]", "holds a space"),
    ] {
        let text = format!("[credentials.c]\nkind = \"oauth2\"\ntoken_url = \"https://auth.example.com/t\"\nclient_id = \"x\"\nenv = \"S\"\nhosts = [\"https://api.example.com\"]\n{patch}\n");
        // A later key of the same name is a TOML error; rewrite instead of appending.
        let text = if patch.starts_with("token_url") { text.replacen("token_url = \"https://auth.example.com/t\"\n", "", 1) } else { text };
        let e = warden::Policy::parse(&text, "p.toml", std::path::Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("p.toml:") && e.contains(why), "{patch}: {e}");
    }
    let e = warden::Policy::parse(
        "[credentials.c]\nkind = \"bearer\"\nenv = \"S\"\ntoken_url = \"https://a.example/t\"\nhosts = [\"https://api.example.com\"]\n",
        "p.toml",
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`token_url` belongs to kind \"oauth2\""), "{e}");
    // `policy explain` says where the token comes from, and that the plugin never sees it.
    let p = pack_policy(1, 1, 1, 4242, "WARDEN_PACK_CS_SECRET", "post");
    let lines = warden::explain::grant_lines(&p, "crowdstrike-contain", "");
    assert!(
        lines.iter().any(|l| l.contains("credential falcon")
            && l.contains("as an OAuth2 token warden obtains from http://127.0.0.1:4242/oauth2/token (the plugin never sees it)")),
        "{lines:?}"
    );
    let e = warden::Policy::parse(
        "[credentials.c]\nkind = \"oauth2\"\nenv = \"S\"\ntoken_url = \"https://a.example/t\"\nhosts = [\"https://api.example.com\"]\n",
        "p.toml",
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("client_id"), "{e}");
}

// ---- The example story: VirusTotal → SentinelOne → ServiceNow → Slack approval → containment ----

struct Pack {
    s1_sim: std::sync::Arc<warden_sim::sentinelone::Sim>,
    slack_sim: std::sync::Arc<slack::Sim>,
    snow_sim: std::sync::Arc<servicenow::Sim>,
    cs_sim: std::sync::Arc<crowdstrike::Sim>,
    _servers: Vec<warden_sim::Running>,
    _dir: warden_e2e::StoryDir,
    policy: warden::Policy,
}

/// Every simulator on its own port, the example stories and policy pointed at them.
async fn example_pack(smtp: u16, extra: &[(&str, &str)]) -> Pack {
    // SAFETY: the example policy reads these; every test sets the same values.
    unsafe {
        for (k, v) in [
            ("S1_API_TOKEN", "s1-demo-token"),
            ("JIRA_API_TOKEN", "jira-demo-token"),
            ("SLACK_BOT_TOKEN", "xoxb-demo-token"),
            ("VT_API_KEY", "vt-demo-key"),
            ("SERVICENOW_PASSWORD", "snow-demo-password"),
            ("CS_CLIENT_ID", "cs-demo-client"),
            ("CS_CLIENT_SECRET", "cs-demo-secret"),
        ] {
            std::env::set_var(k, v);
        }
    }
    let (s1, s1_sim) = warden_sim::sentinelone::spawn(warden_sim::sentinelone::Config { polls_before_finish: 1, ..Default::default() }).await.unwrap();
    let (j, _jira) = warden_sim::jira::spawn(Default::default()).await.unwrap();
    let (sl, slack_sim) = slack::spawn(Default::default()).await.unwrap();
    let (vt, _vt) = virustotal::spawn(Default::default()).await.unwrap();
    let (sn, snow_sim) = servicenow::spawn(Default::default()).await.unwrap();
    let (cs, cs_sim) = crowdstrike::spawn(Default::default()).await.unwrap();
    let ports =
        warden_e2e::SimPorts { s1: s1.port(), jira: j.port(), smtp, slack: sl.port(), virustotal: vt.port(), servicenow: sn.port(), crowdstrike: cs.port() };
    let (dir, text) = warden_e2e::example_files_at(ports, extra);
    let policy = warden_e2e::parse_example_policy(&text);
    Pack { s1_sim, slack_sim, snow_sim, cs_sim, _servers: vec![s1, j, sl, vt, sn, cs], _dir: dir, policy }
}

async fn settled(e: &warden::story::engine::StoryRunner, run: &str) -> warden::store::RunDetail {
    for _ in 0..300 {
        let d = e.store.get_run(run).unwrap().expect("the run");
        if matches!(d.run.state.as_str(), "succeeded" | "failed") {
            return d;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {run} did not finish");
}

/// The whole containment flow, decided by a button pressed in Slack: the
/// press reaches `warden serve` signed as Slack signs it, decides as the Slack
/// user, and the run goes on to contain through CrowdStrike (the host doing
/// the OAuth) and note the outcome on the incident and in the thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contain_host_asks_in_slack_and_a_signed_button_press_contains_through_crowdstrike() {
    let pack = example_pack(1, &[]).await;
    let (base, e) = warden_e2e::serve(warden_e2e::engine(pack.policy.clone(), &pack._dir.0)).await;
    let input = json!({
        "indicator": {"kind": "domain", "value": "evil.example"},
        "os_types": ["windows", "macos"],
        "approvers": ["slack:U0LEAD"],
        "crowdstrike_ids": [crowdstrike::ALICE, crowdstrike::BOB],
    });
    let asked = e.run("contain-host", input, "test", &warden::story::engine::Quiet).await.unwrap();
    assert_eq!((asked.state, asked.failed_step.as_deref()), (warden::story::RunState::Waiting, Some("contain")), "{:?}", asked.error);

    // The hunt covered only the Windows and macOS fleet: the Linux server is not among the hosts.
    assert!(pack.s1_sim.queries()[0].ends_with(r#") AND endpointOs IN ("windows", "osx")"#), "{:?}", pack.s1_sim.queries());
    let inc = pack.snow_sim.incident("INC0010001").expect("the incident");
    assert_eq!(inc.fields["short_description"], "IOC evil.example (malicious) seen on 2 host(s)");
    assert!(inc.fields["description"].as_str().unwrap().contains("WS-ALICE-01, WS-BOB-07"), "{:?}", inc.fields);

    // The question in Slack carries the approval's links as button values.
    let ask = pack.slack_sim.messages()[0].clone();
    let buttons = slack::buttons(&ask.blocks);
    let contain = buttons.iter().find(|b| b["text"]["text"] == "Contain").unwrap();
    assert!(contain["value"].as_str().unwrap().starts_with(&format!("{base}/approvals/")), "{contain}");
    assert!(pack.cs_sim.contained().is_empty(), "nothing is contained before the decision");
    // …while the run's record keeps no token of them.
    let record = serde_json::to_string(&e.store.get_run(&asked.run_id).unwrap().unwrap()).unwrap();
    assert!(!record.contains(contain["value"].as_str().unwrap()), "the approval link's token is withheld from the run record");

    let url = format!("{base}/slack/interactions");
    // Forged: signed with another secret. Stale: a real signature, six minutes old.
    let (body, mut headers) = pack.slack_sim.interaction(&ask.ts, contain["action_id"].as_str().unwrap(), ("U0LEAD", "lead"), now()).unwrap();
    headers.retain(|(k, _)| k != "x-slack-signature");
    headers.push(("x-slack-signature".into(), slack::sign("another-apps-secret", now(), body.as_bytes())));
    assert_eq!(post(&url, &body, &headers).await.0, 401);
    let (body, headers) = pack.slack_sim.interaction(&ask.ts, contain["action_id"].as_str().unwrap(), ("U0LEAD", "lead"), now() - 360).unwrap();
    assert_eq!(post(&url, &body, &headers).await.0, 401);
    // A Slack user who is not an approver decides nothing.
    let (status, said) = pack.slack_sim.click(&url, &ask.ts, contain["action_id"].as_str().unwrap(), ("U0INTERN", "intern")).await.unwrap();
    assert_eq!(status, 200);
    assert!(said.contains("slack:U0INTERN may not decide"), "{said}");
    assert_eq!(e.store.get_run(&asked.run_id).unwrap().unwrap().run.state, "waiting");
    // Slack shows nothing of that HTTP answer: the intern is told on the press's response_url, alone.
    let told = wait_for_responses(&pack.slack_sim, 1).await;
    assert_eq!((told[0]["response_type"].as_str(), told[0]["replace_original"].as_bool()), (Some("ephemeral"), Some(false)));
    assert!(told[0]["text"].as_str().unwrap().contains("slack:U0INTERN may not decide"), "{told:?}");

    // The lead presses Contain: decided, the run resumes and contains exactly the hosts named.
    let pressed = pack.slack_sim.interaction(&ask.ts, contain["action_id"].as_str().unwrap(), ("U0LEAD", "lead"), now()).unwrap();
    let (status, said) = post(&url, &pressed.0, &pressed.1).await;
    assert_eq!(status, 200, "{said}");
    assert!(said.contains("decided `contain` by slack:U0LEAD (lead)"), "{said}");
    // The question is replaced by what was decided: its buttons are gone.
    let told = wait_for_responses(&pack.slack_sim, 2).await;
    assert_eq!(told[1]["replace_original"], true);
    let asked_now = pack.slack_sim.messages()[0].clone();
    assert!(slack::buttons(&asked_now.blocks).is_empty(), "{:?}", asked_now.blocks);
    assert!(asked_now.text.contains("decided `contain` by slack:U0LEAD (lead)"), "{}", asked_now.text);
    let done = settled(&e, &asked.run_id).await;
    assert_eq!(done.run.state, "succeeded", "{:?}", done.run.error);
    let out = done.output.clone().unwrap();
    assert_eq!(out["decision"], "contain");
    assert_eq!(out["decided_by"], "slack:U0LEAD (lead)");
    assert_eq!(out["contained_by_crowdstrike"], json!([crowdstrike::ALICE, crowdstrike::BOB]));
    assert_eq!(pack.cs_sim.contained(), vec![crowdstrike::ALICE.to_string(), crowdstrike::BOB.to_string()]);
    assert!(pack.s1_sim.agents.lock().unwrap().actions.is_empty(), "CrowdStrike ids given: SentinelOne isolates nothing");
    let noted = pack.snow_sim.incident("INC0010001").unwrap().work_notes;
    assert_eq!(noted.last().unwrap(), "Containment: contain, decided by slack:U0LEAD (lead) (2 host(s) contained by CrowdStrike)");
    let reply = pack.slack_sim.messages().last().unwrap().clone();
    assert_eq!((reply.thread_ts.as_deref(), reply.text.as_str()), (Some(ask.ts.as_str()), noted.last().unwrap().as_str()));

    // The decision is audited as Slack's, with where it came from; the OAuth exchange is
    // audited on the containment call; neither the client secret nor any Falcon token is kept.
    let record = serde_json::to_string(&e.store.get_run(&asked.run_id).unwrap().unwrap()).unwrap();
    assert!(record.contains(r#""via":"slack""#) && record.contains(r#""from":"Slack team T0CORP, channel C0SOC via 127.0.0.1"#), "{record}");
    assert!(record.contains(r#""why":"first use""#), "the token exchange is audited: {record}");
    for secret in pack.cs_sim.valid_tokens().into_iter().chain(["cs-demo-secret".to_string(), "xoxb-demo-token".into(), "vt-demo-key".into()]) {
        assert!(!record.contains(&secret), "`{secret}` reached the run store");
    }
    // The old request replayed, twenty times: refused as a replay, nothing happens
    // again, and nothing more is posted to its response_url.
    let answered = pack.slack_sim.responses().len();
    for _ in 0..20 {
        let (status, said) = post(&url, &pressed.0, &pressed.1).await;
        assert_eq!(status, 409, "{said}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(pack.slack_sim.responses().len(), answered, "a replayed press made response_url posts");
    assert_eq!(pack.cs_sim.state.lock().unwrap().actions.len(), 1);
}

async fn wait_for_responses(sim: &slack::Sim, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let got = sim.responses();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("warden did not answer on the response_url: {:?}", sim.responses());
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

async fn post(url: &str, body: &str, headers: &[(String, String)]) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).body(body.to_string());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// ServiceNow in place of Jira: the threat-hunt story with `story: jira-open`
/// swapped for `story: servicenow-open` and nothing else changed opens an
/// incident and emails its number and link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threat_hunt_opens_a_servicenow_incident_when_only_its_ticket_story_is_swapped() {
    let smtp = warden_e2e::SmtpServer::start();
    let root = warden_e2e::workspace_root();
    let hunt = std::fs::read_to_string(root.join("examples/stories/threat-hunt.yaml")).unwrap();
    assert_eq!(hunt.matches("story: jira-open").count(), 1);
    let swapped = hunt.replace("name: threat-hunt", "name: threat-hunt-snow").replace("story: jira-open", "story: servicenow-open");
    let pack = example_pack(smtp.port, &[("threat-hunt-snow.yaml", &swapped)]).await;
    let e = warden_e2e::engine(pack.policy.clone(), &pack._dir.0);
    let done = e
        .run(
            "threat-hunt-snow",
            json!({"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"]}),
            "test",
            &warden::story::engine::Quiet,
        )
        .await
        .unwrap();
    assert_eq!(done.state, warden::story::RunState::Succeeded, "{:?}", done.error);
    let out = done.output.unwrap();
    assert_eq!(out["ticket"], "INC0010001");
    assert_eq!(out["ticket_status"], "New");
    let url = out["ticket_url"].as_str().unwrap().to_string();
    assert!(url.contains("/nav_to.do?uri=incident.do%3Fsys_id%3D"), "{url}");
    let inc = pack.snow_sim.incident("INC0010001").unwrap();
    assert_eq!(inc.fields["short_description"], "IOC evil.example seen on 3 host(s)");
    assert!(inc.work_notes[0].contains("unique events"), "the jira-open comment became the work note: {:?}", inc.work_notes);
    let mail = smtp.messages().into_iter().next().expect("the leads' email");
    assert!(mail["subject"].as_str().unwrap().ends_with(": INC0010001"), "{mail}");
    assert!(mail["text"].as_str().unwrap().contains(&format!("Ticket INC0010001 (New): {url}")), "{mail}");
}

/// An API that echoes the request (or a guest that finds one on the
/// credential's origin) hands the guest the minted token only as `[REDACTED]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_echoes_the_minted_token_shows_the_guest_only_redacted() {
    set_env();
    let (cs, sim) = crowdstrike::spawn(crowdstrike::Config { client_id: CS_ID.into(), client_secret: CS_SECRET.into(), ..Default::default() }).await.unwrap();
    let (origin, _) = warden_sim::origin::spawn().await.unwrap();
    let p = policy(&format!(
        r#"
[plugins.http-fetch]
path = "{{http-fetch}}"
[grants.http-fetch]
allow = ["GET http://127.0.0.1:{o}/echo"]
credentials = ["falcon"]
[credentials.falcon]
kind = "oauth2"
token_url = "http://127.0.0.1:{c}/oauth2/token"
client_id_env = "WARDEN_PACK_CS_ID"
env = "WARDEN_PACK_CS_SECRET"
hosts = ["http://127.0.0.1:{o}"]
"#,
        o = origin.port(),
        c = cs.port()
    ));
    let r = run(&runtime(None), &p, "http-fetch", json!({"url": origin.url("/echo"), "credential": "falcon"})).await;
    let out = output(&r);
    let token = sim.valid_tokens().pop().expect("a token was minted");
    assert!(out.to_string().contains("Bearer [REDACTED]"), "{out}");
    no_secret(&r, &[token]);
}
