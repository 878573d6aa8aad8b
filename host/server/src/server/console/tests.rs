//! The console in-process, as a browser without JavaScript sees it: sign-in,
//! team scopes, escaping, CSRF. (The real-browser tests are in tests/e2e.)
use super::super::tests::{served, Served};
use serde_json::json;

const POLICY: &str = "[plugins.lookup]\npath = \"lookup.wasm\"\n[grants.lookup]\nallow = [\"GET https://api.example.com/v1/*\"]\n[server]\napi_token_env = \"WARDEN_SERVER_TEST_ADMIN\"\n[teams.red]\nstories = [\"stories/red.yaml\"]\napi_token_env = \"WARDEN_SERVER_TEST_RED\"\n[teams.blue]\nstories = [\"stories/blue.yaml\"]\napi_token_env = \"WARDEN_SERVER_TEST_BLUE\"\n";

/// Says something a plugin or webhook could have said: markup.
const RED: &str = r#"name: r
team: red
steps:
  - id: hostile
    transform: {set: {note: "<script>alert('x')</script><img src=x onerror=alert(1)>"}}
  - id: confirm
    if: "{{ input.ask | default(false) }}"
    approval:
      title: "Contain <b>{{ input.host | default('h') }}</b>?"
      choices: [contain, ignore]
      timeout: 1h
"#;
const BLUE: &str = "name: b\nteam: blue\nsteps:\n  - id: e\n    transform: {set: {ok: true}}\n";

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn setup() -> (Served, String, String) {
    let srv = served(POLICY, &[("red.yaml", RED), ("blue.yaml", BLUE)]).await;
    let red = srv.engine.run("r", json!({}), "webhook", &crate::story::engine::Quiet).await.unwrap().run_id;
    let blue = srv.engine.run("b", json!({}), "webhook", &crate::story::engine::Quiet).await.unwrap().run_id;
    (srv, red, blue)
}

/// Signs in as a browser would, from the console's own origin: the session cookie.
async fn sign_in(base: &str, token: &str) -> String {
    let host = base.trim_start_matches("http://");
    let r = client().post(format!("{base}/console/login")).header("origin", base).header("host", host).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(r.status(), 303, "sign-in with a known token redirects to the runs");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(token), "the cookie holds no token");
    cookie.split(';').next().unwrap().to_string()
}

async fn page(base: &str, path: &str, cookie: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let r = client().get(format!("{base}{path}")).header("cookie", cookie).send().await.unwrap();
    let (code, headers) = (r.status().as_u16(), r.headers().clone());
    (code, r.text().await.unwrap(), headers)
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn the_console_needs_a_sign_in_and_a_team_sees_only_its_runs() {
    let (srv, red, blue) = setup().await;
    let r = client().get(format!("{}/console/runs", srv.base)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/console/login"));
    let r = client().post(format!("{}/console/login", srv.base)).form(&[("token", "guess")]).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let cookie = sign_in(&srv.base, "red-token").await;
    let (code, html, _) = page(&srv.base, "/console/runs", &cookie).await;
    assert_eq!(code, 200);
    assert!(html.contains(&red) && !html.contains(&blue), "a team sees its own runs only");
    assert_eq!(page(&srv.base, &format!("/console/runs/{red}"), &cookie).await.0, 200);
    assert_eq!(page(&srv.base, &format!("/console/runs/{blue}"), &cookie).await.0, 404, "another team's run does not exist for it");
    let (_, stories, _) = page(&srv.base, "/console/stories", &cookie).await;
    assert!(stories.contains("story-r") && !stories.contains("story-b"), "nor do its stories");
    let (_, policy, _) = page(&srv.base, "/console/policy", &cookie).await;
    assert!(policy.contains("for team red") && !policy.contains("for team blue"), "nor its grants: {policy}");
    assert!(policy.contains("http: allow `GET https:&#x2f;&#x2f;api.example.com"), "{policy}");
    // A live view of another team's run ends at once.
    let (code, body, _) = page(&srv.base, &format!("/console/live?run={blue}"), &cookie).await;
    assert!(code == 200 && !body.contains("event: run"), "{body}");

    // The cookie proves its scope: edited to claim every team, it proves nothing.
    use base64::Engine as _;
    let value = cookie.split_once('=').unwrap().1;
    let parts: Vec<&str> = value.split('.').collect();
    let all = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("all");
    let forged = format!("warden_console=v1.{all}.{}.{}", parts[2], parts[3]);
    let (code, _, headers) = page(&srv.base, "/console/runs", &forged).await;
    assert_eq!((code, headers["location"].to_str().unwrap()), (303, "/console/login"));
    let admin = sign_in(&srv.base, "admin-token").await;
    let (_, html, _) = page(&srv.base, "/console/runs", &admin).await;
    assert!(html.contains(&red) && html.contains(&blue), "the server's token sees every team");
    // A bearer header works too (scripts), with the same scopes.
    let r = client().get(format!("{}/console/runs/{blue}", srv.base)).bearer_auth("red-token").send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn step_output_is_shown_as_text_under_a_policy_that_forbids_inline_script() {
    let (srv, red, _) = setup().await;
    let cookie = sign_in(&srv.base, "red-token").await;
    let (code, html, headers) = page(&srv.base, &format!("/console/runs/{red}"), &cookie).await;
    assert_eq!(code, 200);
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "markup from a step reached the page as markup");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), "{html}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("style-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(!html.contains("<script>") && !html.contains(" style="), "no inline script or style of our own either");
}

#[tokio::test]
async fn a_console_decision_needs_the_sessions_csrf_token_and_a_same_origin_request() {
    let (srv, _, _) = setup().await;
    let parked = srv.engine.run("r", json!({"ask": true, "host": "<i>ws-1</i>"}), "webhook", &crate::story::engine::Quiet).await.unwrap();
    assert_eq!(parked.state, crate::story::RunState::Waiting);
    let run = parked.run_id;
    let cookie = sign_in(&srv.base, "red-token").await;
    let (_, html, _) = page(&srv.base, &format!("/console/runs/{run}"), &cookie).await;
    assert!(html.contains("Waiting for a decision") && html.contains("Contain &lt;b&gt;&lt;i&gt;ws-1"), "{html}");
    let csrf = csrf_of(&html);
    let host = srv.base.trim_start_matches("http://").to_string();
    let url = format!("{}/console/approvals/{run}/confirm", srv.base);
    let post = |form: Vec<(&'static str, String)>, origin: &str| {
        client().post(&url).header("cookie", &cookie).header("origin", origin).header("host", &host).form(&form).send()
    };
    // No token, another session's token, or another site: refused, nothing decided.
    assert_eq!(post(vec![("choice", "contain".into())], &srv.base).await.unwrap().status(), 403);
    let other = csrf_of(&page(&srv.base, "/console/approvals", &sign_in(&srv.base, "admin-token").await).await.1);
    assert_eq!(post(vec![("choice", "contain".into()), ("csrf", other)], &srv.base).await.unwrap().status(), 403);
    assert_eq!(post(vec![("choice", "contain".into()), ("csrf", csrf.clone())], "https://evil.example").await.unwrap().status(), 403);
    let store = srv.engine.store.approvals().unwrap();
    assert_eq!(store.approval(&run, "confirm").unwrap().unwrap().state, "pending");
    // From the page, with its token: decided, as the team, via the console.
    let r = post(vec![("choice", "contain".into()), ("csrf", csrf), ("back", "//evil.example/x".into())], &srv.base).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/console/approvals"), "no redirect off the console");
    let a = store.approval(&run, "confirm").unwrap().unwrap();
    let d = a.decision.unwrap();
    assert_eq!((d.choice.as_deref(), d.decided_by.as_str(), d.via.as_str()), (Some("contain"), "team:red (console)", "console"));
}

/// A `back` that cannot be a `Location` (a newline, a control character)
/// falls back to the approvals page: the decision is taken and answered, never a 500.
#[tokio::test]
async fn a_back_link_that_cannot_be_a_header_still_answers_the_decision() {
    let (srv, _, _) = setup().await;
    let cookie = sign_in(&srv.base, "red-token").await;
    let host = srv.base.trim_start_matches("http://").to_string();
    for back in ["/console/runs\nSet-Cookie: x=1", "/console/runs\r\nx", "/console/runs\u{7f}", "/console/runs\u{e9}"] {
        let run = srv.engine.run("r", json!({"ask": true}), "webhook", &crate::story::engine::Quiet).await.unwrap().run_id;
        let csrf = csrf_of(&page(&srv.base, &format!("/console/runs/{run}"), &cookie).await.1);
        let r = client()
            .post(format!("{}/console/approvals/{run}/confirm", srv.base))
            .header("cookie", &cookie)
            .header("origin", &srv.base)
            .header("host", &host)
            .form(&[("choice", "contain"), ("csrf", &csrf), ("back", back)])
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/console/approvals"), "{back:?}");
        assert_eq!(srv.engine.store.approvals().unwrap().approval(&run, "confirm").unwrap().unwrap().state, "decided");
    }
}

#[tokio::test]
async fn guessing_tokens_is_slowed_down_and_odd_filters_are_said_not_ignored() {
    let (srv, _, _) = setup().await;
    for _ in 0..10 {
        let r = client().post(format!("{}/console/login", srv.base)).form(&[("token", "guess")]).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = client().post(format!("{}/console/login", srv.base)).form(&[("token", "red-token")]).send().await.unwrap();
    assert_eq!(r.status(), 429, "after ten wrong tokens, even the right one waits");
    assert!(r.text().await.unwrap().contains("try again in 5 minutes"));

    let bearer = |path: String| client().get(format!("{}{path}", srv.base)).bearer_auth("red-token").send();
    let r = bearer("/console/runs?since=yesterday".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("since `yesterday` is not one of 1h, 24h, 7d, 30d"));
    assert_eq!(bearer("/console/runs?state=done".into()).await.unwrap().status(), 400);
    assert_eq!(bearer("/console/runs?since=24h&state=succeeded".into()).await.unwrap().status(), 200);

    // Live views: a few per viewer, however many tabs they open.
    let mut open = Vec::new();
    for _ in 0..8 {
        let r = bearer("/console/live".into()).await.unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    assert_eq!(bearer("/console/live".into()).await.unwrap().status(), 429);
    let other = client().get(format!("{}/console/live", srv.base)).bearer_auth("admin-token").send().await.unwrap();
    assert_eq!(other.status(), 200, "another viewer is not held back");
}

/// A flood of failed sign-ins from new addresses (a botnet, or one host
/// walking its IPv6 /64) forgets the addresses that matter least first: a
/// locked-out address stays locked out, and a /64 counts as one address.
#[test]
fn a_flood_of_new_addresses_never_lifts_a_lockout() {
    use super::{Console, MAX_FAILED_SIGN_INS, MAX_REMEMBERED_ADDRESSES};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let c = Console::default();
    let attacker: IpAddr = "203.0.113.9".parse().unwrap();
    for _ in 0..MAX_FAILED_SIGN_INS {
        c.failed_sign_in(attacker, 1000);
    }
    assert!(!c.may_sign_in(attacker, 1000));
    for i in 0..(MAX_REMEMBERED_ADDRESSES as u32 + 100) {
        c.failed_sign_in(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 1001);
    }
    assert!(!c.may_sign_in(attacker, 1002), "10,100 other addresses lifted the attacker's lockout");
    // An IPv6 host's addresses within its /64 are one source; the mapped form of an IPv4 address is that address.
    let host = |low: u64| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0000_0001u128 << 64) | low as u128));
    for low in 0..MAX_FAILED_SIGN_INS as u64 {
        c.failed_sign_in(host(low * 7919 + 1), 1003);
    }
    assert!(!c.may_sign_in(host(123_456_789), 1003), "another address of the same /64 may not go on guessing");
    let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
    assert!(!c.may_sign_in(mapped, 1003), "the mapped spelling is the same address");
}

/// One principal cannot take every live view: each session holds at most
/// eight, and a team (or the admin) at most a quarter of all, however many
/// sessions it signs in.
#[test]
fn one_team_cannot_hold_every_live_view() {
    use super::{Console, MAX_STREAMS_PER_PRINCIPAL, MAX_STREAMS_PER_VIEWER};
    let c = Console::default();
    let mut held = Vec::new();
    for session in 0..100 {
        while let Some(s) = c.open_stream("team:red", format!("session-{session}")) {
            held.push(s);
            assert!(held.len() <= 100, "no bound at all");
        }
    }
    assert_eq!(held.len(), MAX_STREAMS_PER_PRINCIPAL);
    let one: Vec<_> = (0..20).map_while(|_| c.open_stream("team:blue", "blue-1".into())).collect();
    assert_eq!(one.len(), MAX_STREAMS_PER_VIEWER, "another team still gets its views, a session at most 8");
    held.truncate(1);
    assert!(c.open_stream("team:red", "session-0".into()).is_some(), "closed views are given back");
}

/// Every `warden_console` cookie a request carries is judged: one set beside
/// the person's own (by another path, a sibling subdomain) neither hides a
/// valid session nor is used in its place.
#[tokio::test]
async fn every_session_cookie_is_judged_not_only_the_first() {
    let (srv, red, _) = setup().await;
    let red_cookie = sign_in(&srv.base, "red-token").await;
    let blue_cookie = sign_in(&srv.base, "blue-token").await;
    // A stale or forged cookie first, the person's own after it: signed in as themselves.
    let (code, html, _) = page(&srv.base, "/console/runs", &format!("warden_console=v1.forged.0.x; {red_cookie}")).await;
    assert_eq!(code, 200);
    assert!(html.contains(&red), "the valid session second in line was not read");
    // Two valid sessions of different teams: which one was meant cannot be told; neither is used.
    for cookies in [format!("{blue_cookie}; {red_cookie}"), format!("{red_cookie}; {blue_cookie}")] {
        let (code, _, headers) = page(&srv.base, "/console/runs", &cookies).await;
        assert_eq!((code, headers.get("location").and_then(|l| l.to_str().ok())), (303, Some("/console/login")), "{cookies}");
    }
    // The same session twice is that session.
    assert_eq!(page(&srv.base, "/console/runs", &format!("{red_cookie}; {red_cookie}")).await.0, 200);
}

/// Every route a principal reaches, for every role in each team, against a
/// table written out by hand (not computed by the rule it checks): what the
/// API answers and what the console shows agree, and both are the table's.
#[tokio::test]
async fn every_route_answers_each_role_of_each_team_as_the_role_table_says_and_the_console_hides_what_the_api_refuses() {
    use crate::policy::access::TeamRole;
    use crate::store::ServiceToken;
    let (srv, red, _blue) = setup().await;
    let waiting = srv.engine.run("r", json!({"ask": true}), "webhook", &crate::story::engine::Quiet).await.unwrap().run_id;
    let store = srv.engine.store.tokens().expect("service tokens");
    let mut principals: Vec<(String, &str, &str)> =
        vec![("admin-token".into(), "every", "admin"), ("red-token".into(), "red", "admin"), ("blue-token".into(), "blue", "admin")];
    for team in ["red", "blue"] {
        for role in TeamRole::ALL {
            let (secret, digest) = crate::store::new_service_token().unwrap();
            let t = ServiceToken {
                name: format!("{team}-{role}"),
                team: Some(team.into()),
                role: role.name().into(),
                created_ms: 1,
                created_by: "test".into(),
                revoked_ms: None,
                last_used_ms: None,
            };
            assert!(store.create_token(&t, &digest).unwrap());
            principals.push((secret, team, role.name()));
        }
    }
    // The role table, written out: (decides, reads the policy).
    let table = |role: &str| match role {
        "viewer" => (false, false),
        "approver" => (true, false),
        "operator" => (false, false),
        "admin" => (true, true),
        other => panic!("no row for {other}"),
    };
    let get = |path: String, token: &str| {
        let (path, token) = (format!("{}{path}", srv.base), token.to_string());
        async move {
            let r = client().get(path).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (token, team, role) in &principals {
        let sees_red = matches!(*team, "red" | "every");
        let (decides, reads_policy) = table(role);
        let who = format!("{role} of {team}");
        // Reading: a team's own runs and approvals, never another's.
        let (code, body) = get("/api/runs".into(), token).await;
        assert_eq!((code, body.contains(&red)), (200, sees_red), "{who}: GET /api/runs");
        assert_eq!(get(format!("/api/runs/{red}"), token).await.0, if sees_red { 200 } else { 404 }, "{who}: GET /api/runs/ID");
        let (code, body) = get("/api/approvals".into(), token).await;
        assert_eq!((code, body.contains(&waiting)), (200, sees_red), "{who}: GET /api/approvals");
        assert_eq!(get(format!("/console/runs/{red}"), token).await.0, if sees_red { 200 } else { 404 }, "{who}: console run page");
        // Deciding: an unknown choice, so the approval stays pending for the next row;
        // refused by role (403) or unseen (404) before the choice is even read.
        let r = client()
            .post(format!("{}/api/approvals/{waiting}/confirm", srv.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(json!({"choice": "no-such-choice"}).to_string())
            .send()
            .await
            .unwrap();
        let expected = match (sees_red, decides) {
            (false, _) => 404,
            (true, false) => 403,
            (true, true) => 400,
        };
        assert_eq!(r.status().as_u16(), expected, "{who}: POST /api/approvals/RUN/STEP");
        let (code, html) = get("/console/approvals".into(), token).await;
        let form = format!("action=\"/console/approvals/{waiting}/confirm\"");
        assert_eq!((code, html.contains(&form)), (200, sees_red && decides), "{who}: the console shows the decide buttons exactly where the API decides");
        if sees_red && !decides {
            assert!(html.contains("may not decide approvals; approver or admin may"), "{who}: the console says why not: {html}");
        }
        // The policy view: an admin's, linked only for one.
        let (code, html) = get("/console/policy".into(), token).await;
        assert_eq!(code, if reads_policy { 200 } else { 403 }, "{who}: console policy page");
        let (_, runs) = get("/console/runs".into(), token).await;
        assert_eq!(runs.contains("href=\"/console/policy\""), reads_policy, "{who}: the policy link");
        let _ = html;
    }
    // A revoked token, and one no one made, are no one.
    assert!(store.revoke_token("red-approver", crate::audit::now_ms()).unwrap());
    let revoked = &principals.iter().find(|(_, t, r)| *t == "red" && *r == "approver").unwrap().0;
    assert_eq!(get("/api/runs".into(), revoked).await.0, 401, "a revoked token is refused");
    assert_eq!(get("/console/runs".into(), revoked).await.0, 401, "on the console too");
    assert_eq!(get("/api/runs".into(), "wdn_0000").await.0, 401);
    // Every use was noted.
    let used = store.list_tokens().unwrap();
    assert!(used.iter().all(|t| t.last_used_ms.is_some()), "{used:?}");
    // Nothing above decided it: it is still pending.
    assert_eq!(srv.engine.store.approvals().unwrap().approval(&waiting, "confirm").unwrap().unwrap().state, "pending");
}

/// What people did is kept apart from runs and read by admins only: sign-ins
/// (and failed ones), decisions taken and refused, service tokens' use.
#[tokio::test]
async fn the_audit_log_of_people_keeps_sign_ins_decisions_and_token_use_for_admins_only() {
    use crate::store::ServiceToken;
    let (srv, _red, _blue) = setup().await;
    let waiting = srv.engine.run("r", json!({"ask": true}), "webhook", &crate::story::engine::Quiet).await.unwrap().run_id;
    let store = srv.engine.store.tokens().unwrap();
    let make = |name: &str, role: &str| {
        let (secret, digest) = crate::store::new_service_token().unwrap();
        let t = ServiceToken {
            name: name.into(),
            team: Some("red".into()),
            role: role.into(),
            created_ms: 1,
            created_by: "test".into(),
            revoked_ms: None,
            last_used_ms: None,
        };
        assert!(store.create_token(&t, &digest).unwrap());
        secret
    };
    let (viewer, approver) = (make("red-viewer", "viewer"), make("red-approver", "approver"));
    let _ = sign_in(&srv.base, "red-token").await;
    let r = client().post(format!("{}/console/login", srv.base)).form(&[("token", "wrong")]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let decide = |token: String, choice: &'static str| {
        let url = format!("{}/api/approvals/{waiting}/confirm", srv.base);
        async move {
            client()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(json!({"choice": choice}).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(decide(approver.clone(), "maybe").await, 400, "not a choice: refused, and kept as refused");
    assert_eq!(decide(approver.clone(), "contain").await, 200);

    let read = |token: &str, query: &str| {
        let url = format!("{}/api/audit-log{query}", srv.base);
        let token = token.to_string();
        async move {
            let r = client().get(url).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap())
        }
    };
    let (code, log) = read("admin-token", "").await;
    assert_eq!(code, 200, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let has = |action: &str, actor: &str, outcome: &str| entries.iter().any(|e| e["action"] == action && e["actor"] == actor && e["outcome"] == outcome);
    assert!(has("console.sign_in", "team:red", "ok"), "{log}");
    assert!(has("console.sign_in_failed", "unknown", "refused"), "{log}");
    assert!(has("approval.decide", "token:red-approver", "refused") && has("approval.decide", "token:red-approver", "ok"), "{log}");
    assert!(has("token.use", "token:red-approver", "ok"), "{log}");
    let decided = entries.iter().find(|e| e["action"] == "approval.decide" && e["outcome"] == "ok").unwrap();
    assert_eq!((decided["team"].as_str(), decided["target"].as_str()), (Some("red"), Some(format!("{waiting}/confirm").as_str())));
    assert!(decided["detail"].as_str().unwrap().contains("choice contain via api"), "{decided}");
    assert!(!log.to_string().contains(&approver) && !log.to_string().contains("red-token"), "no secret is kept");
    // Narrowed, and read on from an id.
    let (_, only) = read("admin-token", "?action=approval.decide").await;
    assert_eq!(only["entries"].as_array().unwrap().len(), 2, "{only}");
    let last = entries.last().unwrap()["id"].as_u64().unwrap();
    assert!(read("admin-token", &format!("?after={last}&action=approval.decide")).await.1["entries"].as_array().unwrap().is_empty());
    // A team's admin reads its team's entries; another team's admin none of red's; a viewer nothing.
    let (_, red) = read("red-token", "").await;
    assert!(red["entries"].as_array().unwrap().iter().all(|e| e["team"] == "red"), "{red}");
    let (_, blue) = read("blue-token", "?team=red").await;
    assert!(blue["entries"].as_array().unwrap().iter().all(|e| e["team"] == "blue"), "a team admin cannot widen its view: {blue}");
    assert_eq!(read(&viewer, "").await.0, 403);
    assert_eq!(read("admin-token", "?after=soon").await.0, 400);
    // The console page: an admin's, linked for one only.
    let page_of = |token: &str| {
        let url = format!("{}/console/audit-log", srv.base);
        let token = token.to_string();
        async move {
            let r = client().get(url).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, html) = page_of("admin-token").await;
    assert!(code == 200 && html.contains("approval.decide") && html.contains("href=\"/console/audit-log\""), "{html}");
    assert_eq!(page_of(&viewer).await.0, 403);
    let runs = client().get(format!("{}/console/runs", srv.base)).bearer_auth(&viewer).send().await.unwrap().text().await.unwrap();
    assert!(runs.contains("Runs") && !runs.contains("href=\"/console/audit-log\""), "a viewer's pages do not link it: {runs}");
}

/// A choice the story marks `confirm: true` counts only once confirmed: the
/// console asks again on a page of its own, the API wants `"confirm": true`;
/// an unmarked choice of the same approval is taken at once.
#[tokio::test]
async fn a_dangerous_choice_is_asked_again_before_it_counts() {
    const CONTAIN: &str = "name: c\nteam: red\nsteps:\n  - id: ask\n    approval:\n      title: Isolate the host?\n      choices: [{name: isolate, style: danger, confirm: true}, ignore]\n      timeout: 1h\n";
    let srv = served(POLICY, &[("red.yaml", CONTAIN), ("blue.yaml", BLUE)]).await;
    let run = |srv: &Served| {
        let engine = srv.engine.clone();
        async move { engine.run("c", json!({}), "webhook", &crate::story::engine::Quiet).await.unwrap().run_id }
    };
    let store = srv.engine.store.approvals().unwrap();
    // The API: refused without the confirmation, taken with it.
    let first = run(&srv).await;
    let decide = |body: serde_json::Value| {
        let url = format!("{}/api/approvals/{first}/ask", srv.base);
        async move {
            let r = client().post(url).bearer_auth("red-token").header("content-type", "application/json").body(body.to_string()).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, said) = decide(json!({"choice": "isolate"})).await;
    assert!(code == 400 && said.contains("`isolate` is marked to be confirmed"), "{code} {said}");
    assert_eq!(store.approval(&first, "ask").unwrap().unwrap().state, "pending");
    assert_eq!(decide(json!({"choice": "isolate", "confirm": true})).await.0, 200);
    assert_eq!(store.approval(&first, "ask").unwrap().unwrap().decision.unwrap().choice.as_deref(), Some("isolate"));

    // The console: the button is marked; pressing it asks again; confirming decides.
    let second = run(&srv).await;
    let cookie = sign_in(&srv.base, "red-token").await;
    let (_, html, _) = page(&srv.base, "/console/approvals", &cookie).await;
    assert!(html.contains("value=\"isolate\" class=\"danger\">isolate …</button>") && html.contains("value=\"ignore\">ignore</button>"), "{html}");
    let csrf = csrf_of(&html);
    let host = srv.base.trim_start_matches("http://").to_string();
    let url = format!("{}/console/approvals/{second}/ask", srv.base);
    let post =
        |form: Vec<(&'static str, String)>| client().post(&url).header("cookie", &cookie).header("origin", &srv.base).header("host", &host).form(&form).send();
    let r = post(vec![("choice", "isolate".into()), ("csrf", csrf.clone()), ("comment", "seen beaconing".into())]).await.unwrap();
    assert_eq!(r.status(), 200);
    let ask = r.text().await.unwrap();
    assert!(ask.contains("Confirm: isolate") && ask.contains("name=\"confirmed\" value=\"yes\"") && ask.contains("value=\"seen beaconing\""), "{ask}");
    assert_eq!(store.approval(&second, "ask").unwrap().unwrap().state, "pending", "asking again decided nothing");
    let r = post(vec![("choice", "isolate".into()), ("csrf", csrf_of(&ask)), ("comment", "seen beaconing".into()), ("confirmed", "yes".into())]).await.unwrap();
    assert_eq!(r.status(), 303);
    let d = store.approval(&second, "ask").unwrap().unwrap().decision.unwrap();
    assert_eq!((d.choice.as_deref(), d.comment.as_deref()), (Some("isolate"), Some("seen beaconing")));

    // An unmarked choice is taken at once.
    let third = run(&srv).await;
    let url3 = format!("{}/console/approvals/{third}/ask", srv.base);
    let r = client()
        .post(&url3)
        .header("cookie", &cookie)
        .header("origin", &srv.base)
        .header("host", &host)
        .form(&[("choice", "ignore"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(store.approval(&third, "ask").unwrap().unwrap().decision.unwrap().choice.as_deref(), Some("ignore"));
}
