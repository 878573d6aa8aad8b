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
