//! `jira-ticket`: create, comment on and read Jira issues, open Jira Service
//! Management requests, and `open` (create + comment + status in one call).
//!
//! REST v2 (plain-text bodies) by default; `api_version: 3` sends Atlassian
//! Document Format. The credential is a name; the host injects Basic auth.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use warden_sdk::client::{body_snippet, retry_after_ms};
use warden_sdk::{invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    operation: Operation,
    site_url: String,
    credential: String,
    #[serde(default = "default_version")]
    api_version: u8,
    // create / open
    #[serde(default)]
    project: Option<String>,
    #[serde(default = "default_issue_type")]
    issue_type: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    // comment / status
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    internal: bool,
    // request (JSM)
    #[serde(default)]
    service_desk_id: Option<String>,
    #[serde(default)]
    request_type_id: Option<String>,
    #[serde(default)]
    fields: Map<String, Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Operation {
    Create,
    Comment,
    Status,
    Request,
    Open,
}

fn default_version() -> u8 {
    2
}
fn default_issue_type() -> String {
    "Task".into()
}

fn need<'a>(v: &'a Option<String>, field: &str, op: &str) -> Result<&'a str, ActionError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(format!("{field} is required for operation `{op}`"))),
    }
}

/// Plain text as an Atlassian Document: one paragraph per line.
fn adf(text: &str) -> Value {
    let content: Vec<Value> = text
        .split('\n')
        .map(|line| {
            if line.is_empty() {
                json!({"type": "paragraph", "content": []})
            } else {
                json!({"type": "paragraph", "content": [{"type": "text", "text": line}]})
            }
        })
        .collect();
    json!({"type": "doc", "version": 1, "content": content})
}

/// Issue keys go into URL paths: `SEC-12` shape only.
fn issue_key(key: &str) -> Result<&str, ActionError> {
    let ok = key.split_once('-').is_some_and(|(p, n)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(key)
    } else {
        Err(invalid(format!("key `{}` is not a Jira issue key like SEC-12", key.escape_debug())))
    }
}

struct Jira {
    client: Client,
    credential: String,
    site: String,
    v: u8,
}

impl Jira {
    fn body_text(&self, text: &str) -> Value {
        if self.v == 3 {
            adf(text)
        } else {
            Value::String(text.to_string())
        }
    }

    /// Maps a non-2xx answer: 400 → invalid-input naming the fields, 401/403 →
    /// the credential, 404 → the key, 429/503 → upstream with retry-after.
    fn error(&self, resp: &Response, during: &str) -> ActionError {
        let parsed: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let mut parts: Vec<String> =
            parsed["errorMessages"].as_array().map(|a| a.iter().filter_map(|m| m.as_str().map(String::from)).collect()).unwrap_or_default();
        if let Some(fields) = parsed["errors"].as_object() {
            for (field, msg) in fields {
                parts.push(format!("{field}: {}", msg.as_str().unwrap_or("invalid")));
            }
        }
        let detail = if parts.is_empty() { body_snippet(resp) } else { parts.join("; ") };
        match resp.status {
            400 => invalid(format!("Jira rejected {during}: {detail}")),
            401 | 403 => upstream(
                Some(resp.status),
                format!("Jira rejected credential `{}` ({}) during {during}; check the account email and API token the host holds for it, and the account's project permissions", self.credential, resp.status),
                None,
            ),
            404 => invalid(format!("Jira: not found during {during}: {detail}")),
            s => upstream(Some(s), format!("Jira answered {s} during {during}: {detail}"), retry_after_ms(resp)),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>, during: &str) -> Result<Value, ActionError> {
        let resp = self.client.send(method, path, body)?;
        self.client.json(resp, |r| self.error(r, during))
    }

    fn api(&self) -> String {
        format!("/rest/api/{}", self.v)
    }

    fn create(&self, input: &Input, op: &str) -> Result<Value, ActionError> {
        let project = need(&input.project, "project", op)?;
        let summary = need(&input.summary, "summary", op)?;
        if summary.contains('\n') {
            return Err(invalid("summary must be one line"));
        }
        let mut fields = json!({
            "project": {"key": project},
            "summary": summary,
            "issuetype": {"name": input.issue_type},
        });
        if let Some(d) = &input.description {
            fields["description"] = self.body_text(d);
        }
        if let Some(p) = &input.priority {
            fields["priority"] = json!({"name": p});
        }
        if !input.labels.is_empty() {
            if let Some(bad) = input.labels.iter().find(|l| l.contains(char::is_whitespace)) {
                return Err(invalid(format!("labels: `{bad}` contains whitespace, which Jira labels cannot")));
            }
            fields["labels"] = json!(input.labels);
        }
        let created = self.call("POST", &format!("{}/issue", self.api()), Some(&json!({"fields": fields})), "the new issue")?;
        let key = created["key"].as_str().ok_or_else(|| upstream(None, "Jira created an issue but returned no key", None))?;
        log::info(&format!("created {key}"));
        Ok(json!({
            "id": created["id"],
            "key": key,
            "url": format!("{}/browse/{key}", self.site),
            "self": created["self"],
        }))
    }

    fn comment(&self, key: &str, body: &str, internal: bool) -> Result<Value, ActionError> {
        let key = issue_key(key)?;
        let mut payload = json!({"body": self.body_text(body)});
        if internal {
            payload["properties"] = json!([{"key": "sd.public.comment", "value": {"internal": true}}]);
        }
        let c = self.call("POST", &format!("{}/issue/{key}/comment", self.api()), Some(&payload), &format!("the comment on {key}"))?;
        Ok(json!({"id": c["id"], "key": key}))
    }

    fn status(&self, key: &str) -> Result<Value, ActionError> {
        let key = issue_key(key)?;
        let issue = self.call("GET", &format!("{}/issue/{key}?fields=status", self.api()), None, &format!("the status of {key}"))?;
        let status = &issue["fields"]["status"];
        Ok(json!({
            "key": key,
            "name": status["name"],
            "category": status["statusCategory"]["key"],
            "category_name": status["statusCategory"]["name"],
        }))
    }

    fn request(&self, input: &Input) -> Result<Value, ActionError> {
        let desk = need(&input.service_desk_id, "service_desk_id", "request")?;
        let rtype = need(&input.request_type_id, "request_type_id", "request")?;
        let mut values = input.fields.clone();
        if let Some(s) = &input.summary {
            values.entry("summary").or_insert(json!(s));
        }
        if let Some(d) = &input.description {
            values.entry("description").or_insert(json!(d));
        }
        if !values.contains_key("summary") {
            return Err(invalid("summary (or fields.summary) is required for operation `request`"));
        }
        let r = self.call(
            "POST",
            "/rest/servicedeskapi/request",
            Some(&json!({"serviceDeskId": desk, "requestTypeId": rtype, "requestFieldValues": values})),
            "the service desk request",
        )?;
        let key = r["issueKey"].as_str().unwrap_or_default().to_string();
        Ok(json!({
            "id": r["issueId"],
            "key": key,
            "url": format!("{}/browse/{key}", self.site),
            "portal_url": r["_links"]["web"],
            "status": r["currentStatus"]["status"],
        }))
    }
}

struct JiraTicket;

impl Guest for JiraTicket {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "jira-ticket",
            env!("CARGO_PKG_VERSION"),
            "Create, comment on and read Jira issues; open Jira Service Management requests; `open` creates, comments and returns key, link and status in one call.",
            json!({
                "type": "object",
                "required": ["operation", "site_url", "credential"],
                "additionalProperties": false,
                "properties": {
                    "operation": {"enum": ["create", "comment", "status", "request", "open"]},
                    "site_url": {"type": "string", "description": "e.g. https://corp.atlassian.net"},
                    "credential": {"type": "string", "description": "policy credential (kind=basic, user=account email, value=API token)"},
                    "api_version": {"enum": [2, 3], "default": 2, "description": "3 sends Atlassian Document Format"},
                    "project": {"type": "string"}, "issue_type": {"type": "string", "default": "Task"},
                    "summary": {"type": "string"}, "description": {"type": "string"},
                    "priority": {"type": "string"}, "labels": {"type": "array", "items": {"type": "string"}},
                    "key": {"type": "string"}, "comment": {"type": "string"}, "internal": {"type": "boolean"},
                    "service_desk_id": {"type": "string"}, "request_type_id": {"type": "string"},
                    "fields": {"type": "object"}
                }
            }),
            json!({
                "type": "object",
                "description": "create: {id,key,url}; comment: {id,key}; status: {key,name,category}; request: {id,key,url,portal_url,status}; open: {id,key,url,comment_id,status}"
            }),
            &["https://*.atlassian.net"],
            &["jira"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = parse_input(&input)?;
        warden_sdk::base_url("site_url", &input.site_url, "https://corp.atlassian.net")?;
        if input.api_version != 2 && input.api_version != 3 {
            return Err(invalid("api_version must be 2 or 3"));
        }
        let jira = Jira {
            client: Client::new("Jira", &input.site_url, Some(input.credential.clone())),
            credential: input.credential.clone(),
            site: input.site_url.trim_end_matches('/').to_string(),
            v: input.api_version,
        };
        let out = match input.operation {
            Operation::Create => jira.create(&input, "create")?,
            Operation::Comment => jira.comment(need(&input.key, "key", "comment")?, need(&input.comment, "comment", "comment")?, input.internal)?,
            Operation::Status => jira.status(need(&input.key, "key", "status")?)?,
            Operation::Request => jira.request(&input)?,
            Operation::Open => {
                let comment = need(&input.comment, "comment", "open")?.to_string();
                let mut created = jira.create(&input, "open")?;
                let key = created["key"].as_str().unwrap_or_default().to_string();
                let c = jira.comment(&key, &comment, input.internal)?;
                let status = jira.status(&key)?;
                created["comment_id"] = c["id"].clone();
                created["status"] = json!({"name": status["name"], "category": status["category"]});
                created
            }
        };
        output(&out)
    }
}

warden_sdk::export_action!(JiraTicket);
