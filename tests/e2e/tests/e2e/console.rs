//! The web console in a real browser: Debian's chromium, headless, driven over
//! WebDriver by chromedriver. The threat-hunt story runs through its webhook
//! against the simulators while the runs page is open; a hostile plugin's log
//! line and a denied call are looked at; a team token is refused another
//! team's run. Screenshots of each page land in `target/console-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them with
//! apt-get); `WARDEN_SKIP_BROWSER=1` skips these tests, saying so.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warden_e2e::{SmtpServer, StoryDir};
use warden_sim::{jira, sentinelone};

const ADMIN: &str = "console-admin-token";
const RED: &str = "console-red-token";
const BLUE: &str = "console-blue-token";
const WEBHOOK_SECRET: &str = "console-webhook-secret";

fn chromedriver() -> Option<PathBuf> {
    if std::env::var_os("WARDEN_SKIP_BROWSER").is_some() {
        eprintln!("WARDEN_SKIP_BROWSER is set: the console's browser tests are SKIPPED");
        return None;
    }
    let driver = std::env::var_os("WARDEN_CHROMEDRIVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        driver.exists() && Path::new(&chromium()).exists(),
        "the console's browser tests need Debian's chromium and chromedriver: apt-get install chromium chromium-driver (.ci/run does), or set WARDEN_SKIP_BROWSER=1 to skip them"
    );
    Some(driver)
}

fn chromium() -> String {
    std::env::var("WARDEN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// chromedriver on a port of its own, killed when dropped.
struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(path: &Path) -> Driver {
    // A port picked free can be taken by a neighbouring test before chromedriver
    // binds it; then chromedriver exits and a bare connect would reach the other
    // listener. So: ready means *this* child answers WebDriver's /status, and a
    // child that exited is started again on another port.
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut driver = Driver { child, port };
        for _ in 0..200 {
            if driver.child.try_wait().ok().flatten().is_some() {
                break;
            }
            if webdriver_ready(port) {
                return driver;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // (Dropping `driver` kills and reaps this try's chromedriver.)
    }
    panic!("chromedriver did not start answering WebDriver on a port of its own (5 tries)");
}

/// Whether a WebDriver server answers `GET /status` on `port` saying it is ready.
fn webdriver_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains("\"ready\"")
}

async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", format!("--window-size={width},{height}")]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{}", driver.port)).await.expect("a chromium session")
}

fn shots() -> PathBuf {
    let dir = warden_e2e::workspace_root().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `check` says yes, or fails with what it last saw.
async fn until<F, Fut>(what: &str, mut check: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let main = LAST_PAGE.lock().unwrap().clone();
            panic!("timed out waiting for {what}; the page said:\n{main}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static LAST_PAGE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

async fn text_of(c: &Client, css: &str) -> Option<String> {
    if let Ok(main) = c.find(Locator::Css("main")).await {
        *LAST_PAGE.lock().unwrap() = main.text().await.unwrap_or_default();
    }
    let found = match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    LAST_PAGE.lock().unwrap().push_str(&format!("\n[{css}: {found:?}]"));
    found.ok()
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/console/runs")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/console/login"), "an unsigned visit is sent to sign in");
    c.find(Locator::Css("#token")).await.unwrap().send_keys(token).await.unwrap();
    c.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();
    until("the runs page after signing in", || async { text_of(c, "h1").await.filter(|t| t == "Runs") }).await;
}

async fn webhook(base: &str, story: &str, body: &Value) -> String {
    let body = body.to_string();
    let r = reqwest::Client::new()
        .post(format!("{base}/webhooks/{story}"))
        .header("content-type", "application/json")
        .header(warden::server::SIGNATURE_HEADER, warden::server::sign(WEBHOOK_SECRET.as_bytes(), story, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()["run_id"].as_str().unwrap().to_string()
}

/// A plugin that writes markup into its log and tries a host it may not reach.
const HOSTILE: &str = r#"name: hostile
description: Says markup in its log and calls a host its grant does not name.
steps:
  - id: shout
    action: probe
    with: {op: log, count: 1, message: "<script>alert('owned')</script><img src=x onerror=alert(2)>"}
  - id: reach
    action: probe
    with: {op: fetch, url: "http://169.254.169.254/latest/meta-data/"}
"#;

struct Example {
    _s1: warden_sim::Running,
    _jira: warden_sim::Running,
    _smtp: SmtpServer,
    _dir: StoryDir,
    base: String,
    engine: Arc<warden::story::engine::StoryRunner>,
}

/// The example stories and policy against the simulators, with an API token and the hostile story.
async fn example() -> Example {
    // SAFETY: every test here sets the same values.
    unsafe {
        std::env::set_var("S1_API_TOKEN", "s1-demo-token");
        std::env::set_var("JIRA_API_TOKEN", "jira-demo-token");
        std::env::set_var("WARDEN_CONSOLE_TEST_ADMIN", ADMIN);
        std::env::set_var("WARDEN_WEBHOOK_SECRET", WEBHOOK_SECRET);
    }
    let (s1, _) = sentinelone::spawn(sentinelone::Config { polls_before_finish: 1, ..Default::default() }).await.unwrap();
    let (j, _) = jira::spawn(jira::Config::default()).await.unwrap();
    let smtp = SmtpServer::start();
    let (dir, text) = warden_e2e::example_files(s1.port(), j.port(), smtp.port, &[("hostile.yaml", HOSTILE)]);
    let mut text = text.replace("[server]\n", "[server]\napi_token_env = \"WARDEN_CONSOLE_TEST_ADMIN\"\n");
    text.push_str(&format!(
        "\n[plugins.probe]\npath = \"{}\"\n[grants.probe]\nallow = [\"GET http://127.0.0.1:1/*\"]\n[triggers.hostile]\nsecret_env = \"WARDEN_WEBHOOK_SECRET\"\n",
        warden_e2e::guest("probe").display()
    ));
    let policy = warden_e2e::parse_example_policy(&text);
    let (base, engine) = warden_e2e::serve(warden_e2e::engine(policy, &dir.0)).await;
    Example { _s1: s1, _jira: j, _smtp: smtp, _dir: dir, base, engine }
}

/// chromedriver, the example served, and a browser signed in with the admin token
/// (`None`: the browser tests are skipped).
async fn example_signed_in() -> Option<(Driver, Example, Client)> {
    let driver = start_driver(&chromedriver()?);
    let ex = example().await;
    let c = browser(&driver, 1280, 800).await;
    sign_in(&c, &ex.base, ADMIN).await;
    Some((driver, ex, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_run_appears_live_and_its_hunt_shows_every_call() {
    let Some((_driver, ex, c)) = example_signed_in().await else { return };
    // Marks this page: a reload or navigation would lose the mark.
    c.execute("window.wardenMark = 'still here'; return 1;", vec![]).await.unwrap();

    let run = webhook(&ex.base, "threat-hunt", &json!({"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"]})).await;
    let row = format!("tr[data-run='{run}'] .state");
    let state =
        until("the run to appear and succeed on the open runs page", || async { text_of(&c, &row).await.filter(|s| s == "succeeded" || s == "failed") }).await;
    assert_eq!(state, "succeeded");
    assert_eq!(c.execute("return window.wardenMark || null;", vec![]).await.unwrap(), json!("still here"), "the page updated itself without a reload");
    // Times are shown in the viewer's zone, with the UTC instant kept as a title.
    let time = c.find(Locator::Css(&format!("tr[data-run='{run}'] time"))).await.unwrap();
    let (shown, iso) = (time.text().await.unwrap(), time.attr("datetime").await.unwrap().unwrap());
    assert!(iso.ends_with('Z') && shown != iso, "{shown} / {iso}");
    screenshot(&c, "runs").await;

    // The run: its timeline links the hunt's sub-story run; there, the hunt step's audit.
    c.find(Locator::Css(&format!("tr[data-run='{run}'] a"))).await.unwrap().click().await.unwrap();
    until("the run page", || async { text_of(&c, "#run-state").await.filter(|s| s == "succeeded") }).await;
    screenshot(&c, "run").await;
    // Sub-story runs are nested under the steps that called them, each step linked to its own run.
    let mut nested = Vec::new();
    for a in c.find_all(Locator::Css("li.tl-row.d1 a.tl-label")).await.unwrap() {
        nested.push(a.attr("href").await.unwrap().unwrap_or_default());
    }
    assert!(nested.iter().any(|h| h.starts_with("/console/runs/r") && h.ends_with("#step-hunt")), "{nested:?}");
    assert!(nested.len() >= 2, "the hunt's and the ticket's sub-story steps: {nested:?}");
    let child = c.find(Locator::LinkText("sentinelone-hunt")).await;
    let child = match child {
        Ok(link) => link,
        Err(_) => c.find(Locator::Css("ul.children a")).await.unwrap(),
    };
    child.click().await.unwrap();
    until("the hunt's sub-story run", || async { text_of(&c, "h1").await.filter(|t| t.starts_with("sentinelone-hunt")) }).await;
    let step = c.find(Locator::Css("#step-hunt")).await.unwrap();
    assert_eq!(step.attr("open").await.unwrap(), None, "steps start closed");
    c.find(Locator::Css("#step-hunt > summary")).await.unwrap().click().await.unwrap();
    assert!(step.attr("open").await.unwrap().is_some(), "a click opens the step");
    let rows = c.find_all(Locator::Css("#step-hunt table.audit tbody tr.allowed")).await.unwrap();
    let mut urls = Vec::new();
    for r in &rows {
        urls.push(r.text().await.unwrap());
    }
    assert!(urls.len() >= 3, "init, status and events calls at least: {urls:?}");
    assert!(urls.iter().any(|u| u.contains("POST") && u.contains("/web/api/v2.1/dv/init-query") && u.contains("200")), "{urls:?}");
    assert!(urls.iter().any(|u| u.contains("GET") && u.contains("/web/api/v2.1/dv/events")), "{urls:?}");
    assert!(urls.iter().all(|u| !u.contains("s1-demo-token")), "no credential value on the page");
    c.execute("document.querySelector('#step-hunt table.audit').scrollIntoView({block: 'center'}); return 1;", vec![]).await.unwrap();
    screenshot(&c, "audit").await;

    // Stories and policy pages, for the record.
    c.goto(&format!("{}/console/stories", ex.base)).await.unwrap();
    let graph = c.find_all(Locator::Css("#story-threat-hunt svg.graph g.node")).await.unwrap();
    assert_eq!(graph.len(), ex.engine.library.get("threat-hunt").unwrap().steps().expect("a story of steps").steps.len(), "one node per step");
    let hook = text_of(&c, "#story-threat-hunt dd code").await.unwrap();
    assert_eq!(hook, format!("POST {}/webhooks/threat-hunt", ex.base));
    c.execute("document.querySelector('#story-threat-hunt').scrollIntoView({block: 'start'}); return 1;", vec![]).await.unwrap();
    screenshot(&c, "stories").await;
    c.goto(&format!("{}/console/policy", ex.base)).await.unwrap();
    let policy = text_of(&c, "main").await.unwrap();
    assert!(policy.contains("credential sentinelone") && !policy.contains("s1-demo-token"), "names only");
    screenshot(&c, "policy").await;
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_stays_text_denials_show_their_rule_and_a_decision_resumes_the_run() {
    let Some((_driver, ex, c)) = example_signed_in().await else { return };

    let run = webhook(&ex.base, "hostile", &json!({})).await;
    c.goto(&format!("{}/console/runs/{run}", ex.base)).await.unwrap();
    until("the hostile run to end", || async { text_of(&c, "#run-state").await.filter(|s| s == "succeeded" || s == "failed") }).await;
    c.find(Locator::Css("#step-shout > summary")).await.unwrap().click().await.unwrap();
    let line = text_of(&c, "#step-shout ol.logs .msg").await.unwrap();
    assert_eq!(line, "<script>alert('owned')</script><img src=x onerror=alert(2)>", "the log line is shown as the text it is");
    assert!(c.get_alert_text().await.is_err(), "no script of the plugin's ran");
    assert_eq!(c.find_all(Locator::Css("main script, main img")).await.unwrap().len(), 0);
    // The denied call: its row is marked, with the deciding rule and the reason.
    c.find(Locator::Css("#step-reach > summary")).await.unwrap().click().await.unwrap();
    let denied = c.find(Locator::Css("#step-reach tr.denied")).await.expect("the denied call is marked");
    let rule = denied.find(Locator::Css("td.rule")).await.unwrap().text().await.unwrap();
    assert!(!rule.is_empty() && denied.text().await.unwrap().contains("169.254.169.254"), "{rule}");
    let color = c.execute("return getComputedStyle(document.querySelector('#step-reach tr.denied')).backgroundColor;", vec![]).await.unwrap();
    assert_ne!(color, json!("rgba(0, 0, 0, 0)"), "a denial is highlighted");
    assert!(text_of(&c, "#step-reach > summary").await.unwrap().contains("denied"), "and flagged on the closed step");
    c.execute("document.querySelector('#step-reach tr.denied').scrollIntoView({block: 'center'}); return 1;", vec![]).await.unwrap();
    screenshot(&c, "denied").await;

    // An approval: the run waits, the Approvals tab shows it, one click decides, the run resumes.
    let asked = webhook(
        &ex.base,
        "threat-hunt",
        &json!({"indicator": {"kind": "domain", "value": "evil.example"}, "leads": ["soc-lead@corp.example"], "ask_to_isolate": true}),
    )
    .await;
    c.goto(&format!("{}/console/runs/{asked}", ex.base)).await.unwrap();
    until("the run to wait for a decision", || async { text_of(&c, "#run-state").await.filter(|s| s == "waiting") }).await;
    assert!(text_of(&c, "section.waiting").await.unwrap().contains("Isolate 3 host(s) that saw evil.example?"));
    // The lead's emailed links decide as the lead: the team sees their shape, never their tokens.
    c.find(Locator::Css("#step-ask-0 > summary")).await.unwrap().click().await.unwrap();
    let asked_input = text_of(&c, "#step-ask-0 pre.json").await.unwrap();
    assert!(asked_input.contains("/approvals/wardenlink"), "the link with its token sealed: {asked_input}");
    c.goto(&format!("{}/console/approvals", ex.base)).await.unwrap();
    assert!(text_of(&c, "main").await.unwrap().contains("Isolate 3 host(s) that saw evil.example?"));
    screenshot(&c, "approvals").await;
    // Decided from the run's own (live) page, with a comment.
    c.goto(&format!("{}/console/runs/{asked}", ex.base)).await.unwrap();
    c.find(Locator::Css("form.decide input[name=comment]")).await.unwrap().send_keys("false positive: <b>test</b> hosts").await.unwrap();
    c.find(Locator::Css("form.decide button[value=ignore]")).await.unwrap().click().await.unwrap();
    // The click returns once the form is submitted, not once its POST has been answered: a
    // navigation started now could abort that POST (it did once in CI). The decision's own
    // record is what says the POST arrived; the redirect then lands on this same page.
    let approvals = ex.engine.store.approvals().unwrap();
    until("the decision to be recorded", || async { approvals.approval(&asked, "contain").unwrap().unwrap().decision.map(|_| String::new()) }).await;
    c.goto(&format!("{}/console/runs/{asked}", ex.base)).await.unwrap();
    until("the decided run to finish", || async { text_of(&c, "#run-state").await.filter(|s| s == "succeeded") }).await;
    let a = approvals.approval(&asked, "contain").unwrap().unwrap();
    let d = a.decision.unwrap();
    assert_eq!((d.choice.as_deref(), d.via.as_str(), d.comment.as_deref()), (Some("ignore"), "console", Some("false positive: <b>test</b> hosts")));
    // The decision is in the run's audit, as text.
    c.find(Locator::Css("#step-contain > summary")).await.unwrap().click().await.unwrap();
    let said = text_of(&c, "#step-contain tr.approval").await.unwrap();
    assert!(said.contains("admin (console) chose `ignore` via console") && said.contains("<b>test</b>"), "{said}");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_sees_its_own_runs_and_the_console_fits_a_phone() {
    let Some(driver_path) = chromedriver() else { return };
    let driver = start_driver(&driver_path);
    // SAFETY: every test here sets the same values.
    unsafe {
        std::env::set_var("WARDEN_CONSOLE_TEST_ADMIN", ADMIN);
        std::env::set_var("WARDEN_CONSOLE_TEST_RED", RED);
        std::env::set_var("WARDEN_CONSOLE_TEST_BLUE", BLUE);
    }
    let dir = StoryDir::new(&[
        ("red.yaml", "name: red-triage\nteam: red\nsteps:\n  - id: note\n    transform: {set: {team: red}}\n"),
        ("blue.yaml", "name: blue-triage\nteam: blue\nsteps:\n  - id: note\n    transform: {set: {team: blue}}\n"),
    ]);
    let policy = "[server]\napi_token_env = \"WARDEN_CONSOLE_TEST_ADMIN\"\n[teams.red]\nstories = [\"red.yaml\"]\napi_token_env = \"WARDEN_CONSOLE_TEST_RED\"\n[teams.blue]\nstories = [\"blue.yaml\"]\napi_token_env = \"WARDEN_CONSOLE_TEST_BLUE\"\n";
    let policy = warden::Policy::parse(policy, "warden.toml", &dir.0).unwrap();
    let engine = warden_e2e::engine(policy, &dir.0);
    let quiet = &warden::story::engine::Quiet;
    let red = engine.run("red-triage", json!({}), "cli", quiet).await.unwrap().run_id;
    let blue = engine.run("blue-triage", json!({}), "cli", quiet).await.unwrap().run_id;
    let (base, _engine) = warden_e2e::serve(engine).await;

    let c = browser(&driver, 390, 844).await;
    sign_in(&c, &base, RED).await;
    let listed = text_of(&c, "table.runs").await.unwrap();
    assert!(listed.contains(&red) && !listed.contains(&blue), "{listed}");
    c.goto(&format!("{base}/console/runs/{blue}")).await.unwrap();
    assert_eq!(text_of(&c, "h1").await.unwrap(), "Not found", "another team's run does not exist for a team token");
    c.goto(&format!("{base}/console/runs/{red}")).await.unwrap();
    assert_eq!(text_of(&c, "#run-state").await.unwrap(), "succeeded");
    // A phone's width: nothing wider than the screen but the tables' own scrollers.
    let overflow = c.execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![]).await.unwrap();
    assert!(overflow.as_i64().unwrap() <= 0, "the page is wider than a phone by {overflow} px");
    screenshot(&c, "phone-run").await;
    // The keyboard: the first Tab reaches the skip link, and the nav is made of links.
    c.execute("document.activeElement && document.activeElement.blur(); return 1;", vec![]).await.unwrap();
    c.active_element().await.unwrap().send_keys("\u{E004}").await.unwrap();
    let first = c.execute("return document.activeElement.className;", vec![]).await.unwrap();
    assert_eq!(first, json!("skip"), "the first Tab lands on 'Skip to content'");
    c.close().await.unwrap();
}
