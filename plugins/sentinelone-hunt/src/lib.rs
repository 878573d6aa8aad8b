//! `sentinelone-hunt`: hunt an indicator of compromise across the fleet with
//! SentinelOne Deep Visibility (Management API v2.1).
//!
//! test the connection → build the S1QL query (values quoted, or refused) →
//! `init-query` → poll `query-status` on the host's clock (≥ 1 s apart, the
//! documented rate limit) → page through `events` by cursor → deduplicate →
//! summarise per host. The API token is a credential *name*: the host injects
//! `Authorization: ApiToken …` and the plugin never sees it.

mod query;
mod summary;

use serde::Deserialize;
use serde_json::{json, Value};
use warden_sdk::client::{body_snippet, paginate, percent_encode, retry_after_ms};
use warden_sdk::{invalid, log, now_ms, output, parse_input, sleep_ms, upstream, ActionError, Client, Guest, Invocation, Manifest};

const API: &str = "/web/api/v2.1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    console_url: String,
    credential: String,
    #[serde(default)]
    ioc: Option<query::Ioc>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default = "default_from")]
    from: String,
    #[serde(default = "default_to")]
    to: String,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default = "default_page_size")]
    page_size: u32,
    #[serde(default = "default_poll")]
    poll_interval_ms: u64,
    #[serde(default = "default_max_wait")]
    max_wait_ms: u64,
    #[serde(default)]
    site_ids: Vec<String>,
    #[serde(default)]
    account_ids: Vec<String>,
    #[serde(default = "default_sample")]
    sample_size: usize,
    /// Only these operating systems' endpoints (`windows`, `macos`, `linux`).
    #[serde(default)]
    os_types: Vec<String>,
}

fn default_from() -> String {
    "-24h".into()
}
fn default_to() -> String {
    "now".into()
}
fn default_limit() -> usize {
    10_000
}
fn default_page_size() -> u32 {
    1000
}
fn default_poll() -> u64 {
    1000
}
fn default_max_wait() -> u64 {
    300_000
}
fn default_sample() -> usize {
    20
}

impl Input {
    fn validate(&self) -> Result<(), ActionError> {
        warden_sdk::base_url("console_url", &self.console_url, "https://usea1.sentinelone.net")?;
        if self.credential.trim().is_empty() {
            return Err(invalid("credential must name the policy credential that holds the API token"));
        }
        if self.ioc.is_some() == self.query.is_some() {
            return Err(invalid("give exactly one of ioc {kind, value} or query (raw S1QL)"));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(invalid("page_size must be 1..1000 (the events endpoint's maximum)"));
        }
        if !(1..=100_000).contains(&self.limit) {
            return Err(invalid("limit must be 1..100000"));
        }
        if self.poll_interval_ms < 1000 {
            return Err(invalid("poll_interval_ms must be at least 1000: SentinelOne allows one query-status call per second per token"));
        }
        query::os_filter(&self.os_types)?;
        if self.max_wait_ms < self.poll_interval_ms {
            return Err(invalid("max_wait_ms must be at least poll_interval_ms"));
        }
        Ok(())
    }
}

/// SentinelOne's error body: `{"errors":[{"code":4010010,"title":"Authentication Failed"}]}`.
fn s1_error_text(resp: &warden_sdk::Response) -> String {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let first = parsed.as_ref().and_then(|v| v["errors"].get(0).cloned());
    match first {
        Some(e) => {
            let title = e["title"].as_str().unwrap_or("error");
            let detail = e["detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default();
            let code = e["code"].as_i64().map(|c| format!(" (code {c})")).unwrap_or_default();
            format!("{title}{detail}{code}")
        }
        None => body_snippet(resp),
    }
}

struct Hunt;

impl Hunt {
    fn error(resp: &warden_sdk::Response, credential: &str, during: &str) -> ActionError {
        let text = s1_error_text(resp);
        match resp.status {
            401 | 403 => upstream(
                Some(resp.status),
                format!(
                    "SentinelOne rejected credential `{credential}` ({} {text}) during {during}; check the API token the host holds for it (expired, revoked or lacking Deep Visibility rights)",
                    resp.status
                ),
                None,
            ),
            400 => invalid(format!("SentinelOne refused the {during} request: {text}")),
            404 => upstream(Some(404), format!("SentinelOne: not found during {during}: {text}"), None),
            status => upstream(Some(status), format!("SentinelOne answered {status} during {during}: {text}"), retry_after_ms(resp)),
        }
    }
}

impl Guest for Hunt {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "sentinelone-hunt",
            env!("CARGO_PKG_VERSION"),
            "Hunt an indicator (domain, IP, URL, hash) or a raw S1QL query across the fleet with SentinelOne Deep Visibility; returns deduplicated events summarised per host.",
            json!({
                "type": "object",
                "required": ["console_url", "credential"],
                "additionalProperties": false,
                "properties": {
                    "console_url": {"type": "string", "description": "e.g. https://usea1.sentinelone.net"},
                    "credential": {"type": "string", "description": "policy credential holding the API token (kind=header, header=Authorization, prefix=\"ApiToken \")"},
                    "ioc": {"type": "object", "required": ["kind", "value"], "properties": {
                        "kind": {"enum": ["domain", "ip", "url", "sha256", "sha1", "md5"]},
                        "value": {"type": "string"}}},
                    "query": {"type": "string", "description": "raw S1QL instead of ioc"},
                    "os_types": {"type": "array", "items": {"enum": ["windows", "macos", "linux"]}, "description": "only endpoints running these (e.g. [\"windows\"] for the Windows fleet)"},
                    "from": {"type": "string", "default": "-24h", "description": "ISO-8601 or relative (-30m, -24h, -7d)"},
                    "to": {"type": "string", "default": "now"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 10000},
                    "page_size": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000},
                    "poll_interval_ms": {"type": "integer", "minimum": 1000, "default": 1000},
                    "max_wait_ms": {"type": "integer", "default": 300000},
                    "site_ids": {"type": "array", "items": {"type": "string"}},
                    "account_ids": {"type": "array", "items": {"type": "string"}},
                    "sample_size": {"type": "integer", "minimum": 0, "default": 20}
                }
            }),
            json!({
                "type": "object",
                "required": ["query", "query_id", "total_events", "unique_hosts", "events_sample", "truncated"],
                "properties": {
                    "query": {"type": "string"},
                    "query_id": {"type": "string"},
                    "total_events": {"type": "integer", "description": "unique events after deduplication"},
                    "duplicates_dropped": {"type": "integer"},
                    "unique_hosts": {"type": "array", "items": {"type": "object", "properties": {
                        "agent_name": {"type": "string"}, "agent_uuid": {"type": "string"}, "os": {"type": "string"},
                        "ip": {"type": "string"}, "site": {"type": "string"}, "first_seen": {"type": "string"},
                        "last_seen": {"type": "string"}, "processes": {"type": "array"}, "users": {"type": "array"},
                        "dns_requests": {"type": "array"}, "event_count": {"type": "integer"}}}},
                    "events_sample": {"type": "array"},
                    "truncated": {"type": "boolean", "description": "the limit was reached, so more events may exist"}
                }
            }),
            &["https://*.sentinelone.net"],
            &["sentinelone"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = parse_input(&input)?;
        input.validate()?;
        let now = now_ms();
        let from = query::resolve_time("from", &input.from, now)?;
        let to = query::resolve_time("to", &input.to, now)?;
        if from >= to {
            return Err(invalid(format!("from ({from}) must be before to ({to})")));
        }
        let s1ql = match (&input.ioc, &input.query) {
            (Some(ioc), _) => query::build(ioc)?,
            (None, Some(q)) if !q.trim().is_empty() => q.clone(),
            _ => return Err(invalid("query must not be empty")),
        };
        // "Our Windows fleet": the OS filter is part of the S1QL, around the indicator's query.
        let s1ql = match query::os_filter(&input.os_types)? {
            Some(os) => format!("({s1ql}) AND {os}"),
            None => s1ql,
        };
        let cred = input.credential.as_str();
        let mut client = Client::new("SentinelOne", &input.console_url, Some(cred.to_string()));
        client.max_retries = 5;

        // 1. A cheap authenticated call, so a bad token fails fast and clearly.
        let resp = client.get(&format!("{API}/system/info"))?;
        client.json(resp, |r| Hunt::error(r, cred, "the connection test"))?;

        // 2. Start the query.
        let mut body = json!({
            "query": s1ql, "fromDate": from, "toDate": to,
            "limit": input.limit, "queryType": ["events"], "isVerbose": false,
        });
        if !input.site_ids.is_empty() {
            body["siteIds"] = json!(input.site_ids);
        }
        if !input.account_ids.is_empty() {
            body["accountIds"] = json!(input.account_ids);
        }
        let resp = client.post(&format!("{API}/dv/init-query"), &body)?;
        let started = client.json(resp, |r| Hunt::error(r, cred, "init-query"))?;
        let query_id = started["data"]["queryId"].as_str().ok_or_else(|| upstream(None, "init-query answered without data.queryId", None))?.to_string();
        log::info(&format!("Deep Visibility query {query_id} started: {s1ql} ({from} .. {to})"));

        // 3. Poll until it finishes.
        wait_for_query(&client, cred, &query_id, &input)?;

        // 4. Page through the events.
        let mut pages = 0;
        let (events, more_pages) = paginate(input.limit, |cursor| {
            let mut path = format!("{API}/dv/events?queryId={query_id}&limit={}", input.page_size);
            if let Some(c) = cursor {
                path.push_str("&cursor=");
                path.push_str(&percent_encode(c));
            }
            let resp = client.get(&path)?;
            let page = client.json(resp, |r| Hunt::error(r, cred, "events paging"))?;
            pages += 1;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            let next = page["pagination"]["nextCursor"].as_str().map(String::from);
            Ok((data, next))
        })?;
        // init-query's limit caps the result on the console, so reaching it
        // means more events may exist even when no further page is offered.
        let truncated = more_pages || events.len() >= input.limit;
        log::info(&format!("read {} events in {pages} page(s){}", events.len(), if truncated { " (limit reached)" } else { "" }));

        // 5. Deduplicate and summarise.
        let summary = summary::summarize(&events, input.sample_size);
        output(&json!({
            "query": s1ql,
            "query_id": query_id,
            "total_events": summary.unique_events,
            "duplicates_dropped": summary.duplicates,
            "unique_hosts": summary.hosts,
            "events_sample": summary.sample,
            "truncated": truncated,
        }))
    }
}

const FAILED_STATES: &[&str] = &["FAILED", "FAILED_CLIENT", "ERROR", "QUERY_CANCELLED", "TIMED_OUT", "QUERY_EXPIRED", "QUERY_NOT_FOUND"];

fn wait_for_query(client: &Client, cred: &str, query_id: &str, input: &Input) -> Result<(), ActionError> {
    let started = now_ms();
    let mut last: Option<(String, u64)> = None;
    let mut throttled = 0;
    loop {
        let resp = client.send_once("GET", &format!("{API}/dv/query-status?queryId={query_id}"), None)?;
        if resp.status == 429 {
            throttled += 1;
            if throttled > 10 {
                return Err(upstream(Some(429), "SentinelOne kept rate-limiting query-status", retry_after_ms(&resp)));
            }
            let wait = retry_after_ms(&resp).unwrap_or(input.poll_interval_ms * 2);
            log::warn(&format!("query-status rate-limited (429); waiting {wait} ms"));
            sleep_ms(wait.max(input.poll_interval_ms));
            continue;
        }
        let status = client.json(resp, |r| Hunt::error(r, cred, "query-status"))?;
        let data = &status["data"];
        let state = data["responseState"].as_str().unwrap_or("UNKNOWN").to_string();
        let progress = data["progressStatus"].as_u64().unwrap_or(0);
        if last.as_ref() != Some(&(state.clone(), progress)) {
            log::info(&format!("query {query_id}: {state} {progress}%"));
            last = Some((state.clone(), progress));
        }
        match state.as_str() {
            "FINISHED" | "EMPTY_RESULTS" => return Ok(()),
            s if FAILED_STATES.contains(&s) => {
                let why = data["responseError"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(upstream(None, format!("Deep Visibility query {query_id} ended {s}{why}"), None));
            }
            _ => {}
        }
        let elapsed = now_ms().saturating_sub(started);
        if elapsed + input.poll_interval_ms > input.max_wait_ms {
            // Best effort: do not leave the query running on the console.
            let _ = client.send_once("POST", &format!("{API}/dv/cancel-query"), Some(&json!({"queryId": query_id})));
            return Err(ActionError::Failed(format!(
                "Deep Visibility query {query_id} still {state} at {progress}% after {elapsed} ms (max_wait_ms = {}); raise max_wait_ms or narrow the time window",
                input.max_wait_ms
            )));
        }
        sleep_ms(input.poll_interval_ms);
    }
}

warden_sdk::export_action!(Hunt);
