//! `servicenow-incident`: open, note and read ServiceNow incidents with the
//! Table API.
//!
//! * `create`: `POST /api/now/table/incident` → number, sys_id, link, state
//! * `note`: `PATCH /api/now/table/incident/{sys_id}` with `work_notes`
//!   (internal, the default) or `comments` (seen by the caller)
//! * `status`: `GET /api/now/table/incident/{sys_id}`
//! * `open`: create, add the note, read the state back — one step, and the
//!   same output shape as `jira-ticket`'s `open` (`key`, `url`,
//!   `status.name`), so a story can swap one ticketing system for the other.
//!
//! An incident is named by `sys_id` or by `number` (looked up with
//! `sysparm_query=number=…`). Priority is ServiceNow's impact × urgency; a
//! Jira-style `priority` word maps onto both. The credential (basic or OAuth
//! bearer) is a *name*: the host injects it.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use warden_sdk::client::{body_snippet, percent_encode, retry_after_ms};
use warden_sdk::{invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest, Response};

pub const MAX_TEXT: usize = 32_000;
/// The incident table's `short_description` length.
pub const SHORT_DESCRIPTION: usize = 160;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Create,
    Note,
    Status,
    Open,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub operation: Operation,
    pub instance_url: String,
    pub credential: String,
    #[serde(default)]
    pub sys_id: Option<String>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub short_description: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `Highest`/`Critical`, `High`, `Medium`, `Low`, `Lowest` (Jira's words).
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub impact: Option<u8>,
    #[serde(default)]
    pub urgency: Option<u8>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub assignment_group: Option<String>,
    #[serde(default)]
    pub caller_id: Option<String>,
    /// The note (`note`, and `open`'s after creation).
    #[serde(default)]
    pub note: Option<String>,
    /// Work note (internal, default) or customer-visible comment.
    #[serde(default = "yes")]
    pub internal: bool,
}

fn yes() -> bool {
    true
}

/// (impact, urgency) for a priority word.
pub fn impact_urgency(priority: &str) -> Option<(u8, u8)> {
    Some(match priority.to_ascii_lowercase().as_str() {
        "highest" | "critical" | "1" => (1, 1),
        "high" | "2" => (1, 2),
        "medium" | "moderate" | "3" => (2, 2),
        "low" | "4" => (2, 3),
        "lowest" | "planning" | "5" => (3, 3),
        _ => return None,
    })
}

fn is_sys_id(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_number(s: &str) -> bool {
    let letters = s.chars().take_while(|c| c.is_ascii_uppercase()).count();
    (2..=8).contains(&letters) && (5..=12).contains(&(s.len() - letters)) && s[letters..].chars().all(|c| c.is_ascii_digit())
}

fn text_field(name: &str, v: &Option<String>, required: bool) -> Result<(), ActionError> {
    match v {
        None if required => Err(invalid(format!("{name} is required"))),
        Some(t) if required && t.trim().is_empty() => Err(invalid(format!("{name} is empty"))),
        Some(t) if t.chars().count() > MAX_TEXT => Err(invalid(format!("{name} has more than {MAX_TEXT} characters"))),
        _ => Ok(()),
    }
}

pub fn validate(i: &Input) -> Result<(), ActionError> {
    warden_sdk::base_url("instance_url", &i.instance_url, "https://corp.service-now.com")?;
    if i.credential.trim().is_empty() {
        return Err(invalid("credential must name the policy credential for the instance"));
    }
    if let Some(s) = &i.sys_id {
        if !is_sys_id(s) {
            return Err(invalid(format!("sys_id `{}` is not 32 hex digits", s.escape_debug())));
        }
    }
    if let Some(n) = &i.number {
        if !is_number(n) {
            return Err(invalid(format!("number `{}` is not an incident number such as INC0010001", n.escape_debug())));
        }
    }
    let creates = matches!(i.operation, Operation::Create | Operation::Open);
    if creates {
        if i.sys_id.is_some() || i.number.is_some() {
            return Err(invalid("sys_id and number name an existing incident; `create` and `open` make a new one"));
        }
        text_field("short_description", &i.short_description, true)?;
        text_field("description", &i.description, false)?;
        if let Some(p) = &i.priority {
            if impact_urgency(p).is_none() {
                return Err(invalid(format!("priority `{}` is not one of Highest, High, Medium, Low, Lowest", p.escape_debug())));
            }
        }
        for (name, v) in [("impact", i.impact), ("urgency", i.urgency)] {
            if v.is_some_and(|n| !(1..=3).contains(&n)) {
                return Err(invalid(format!("{name} must be 1 (high), 2 or 3 (low)")));
            }
        }
    } else if i.sys_id.is_none() && i.number.is_none() {
        return Err(invalid("name the incident with sys_id or number"));
    }
    match i.operation {
        Operation::Note => text_field("note", &i.note, true)?,
        _ => text_field("note", &i.note, false)?,
    }
    Ok(())
}

/// The `POST` body of a new incident.
pub fn new_incident(i: &Input) -> Value {
    let mut b = Map::new();
    // The field holds 160 characters; a longer summary (Jira takes 255) is cut, whole in the description.
    let short = i.short_description.clone().unwrap_or_default();
    let cut = warden_sdk::cut_chars(&short, SHORT_DESCRIPTION);
    b.insert("short_description".into(), json!(cut));
    let description = match (&i.description, cut != short) {
        (Some(d), true) => Some(format!("{short}\n\n{d}")),
        (None, true) => Some(short.clone()),
        (d, false) => d.clone(),
    };
    if let Some(d) = description {
        b.insert("description".into(), json!(d));
    }
    let (mut impact, mut urgency) = i.priority.as_deref().and_then(impact_urgency).unwrap_or((3, 3));
    if let Some(n) = i.impact {
        impact = n;
    }
    if let Some(n) = i.urgency {
        urgency = n;
    }
    b.insert("impact".into(), json!(impact.to_string()));
    b.insert("urgency".into(), json!(urgency.to_string()));
    for (k, v) in [("category", &i.category), ("assignment_group", &i.assignment_group), ("caller_id", &i.caller_id)] {
        if let Some(v) = v {
            b.insert(k.into(), json!(v));
        }
    }
    b.insert("contact_type".into(), json!("integration"));
    Value::Object(b)
}

/// A state code's name (the incident table's default choices).
pub fn state_name(code: &str) -> &str {
    match code {
        "1" => "New",
        "2" => "In Progress",
        "3" => "On Hold",
        "6" => "Resolved",
        "7" => "Closed",
        "8" => "Canceled",
        other => other,
    }
}

const FIELDS: &str = "sys_id,number,state,priority,impact,urgency,short_description";

struct Snow {
    client: Client,
    base: String,
    credential: String,
}

impl Snow {
    fn error(&self, what: &str, r: &Response) -> ActionError {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let message =
            [v["error"]["message"].as_str(), v["error"]["detail"].as_str()].into_iter().flatten().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(": ");
        let message = if message.is_empty() { body_snippet(r) } else { message };
        match r.status {
            400 | 415 => invalid(format!("ServiceNow refused {what}: {message}")),
            401 => upstream(Some(401), format!("ServiceNow rejected credential `{}`: {message}", self.credential), None),
            403 => upstream(
                Some(403),
                format!("ServiceNow denied {what} to credential `{}` (an ACL or a missing role such as itil): {message}", self.credential),
                None,
            ),
            404 => invalid(format!("ServiceNow has no such incident ({what}): {message}")),
            s => upstream(Some(s), format!("ServiceNow answered {s} to {what}: {message}"), retry_after_ms(r)),
        }
    }

    fn result(&self, what: &str, resp: Response) -> Result<Value, ActionError> {
        let v = self.client.json(resp, |r| self.error(what, r))?;
        Ok(v["result"].clone())
    }

    fn sys_id(&self, i: &Input) -> Result<String, ActionError> {
        if let Some(s) = &i.sys_id {
            return Ok(s.to_ascii_lowercase());
        }
        let number = i.number.as_deref().unwrap_or_default();
        let q = percent_encode(&format!("number={number}"));
        let found = self.result(
            "the number lookup",
            self.client.get(&format!("/api/now/table/incident?sysparm_query={q}&sysparm_limit=1&sysparm_fields=sys_id,number"))?,
        )?;
        found[0]["sys_id"].as_str().filter(|s| is_sys_id(s)).map(str::to_string).ok_or_else(|| invalid(format!("ServiceNow has no incident {number}")))
    }

    fn summary(&self, rec: &Value) -> Value {
        let sys_id = rec["sys_id"].as_str().unwrap_or_default();
        let state = rec["state"].as_str().unwrap_or_default();
        json!({
            "key": rec["number"],
            "number": rec["number"],
            "sys_id": sys_id,
            "url": format!("{}/nav_to.do?uri=incident.do%3Fsys_id%3D{sys_id}", self.base),
            "status": {"name": state_name(state), "state": state},
            "priority": rec["priority"],
        })
    }

    fn note(&self, sys_id: &str, note: &str, internal: bool) -> Result<Value, ActionError> {
        let field = if internal { "work_notes" } else { "comments" };
        let resp = self.client.send("PATCH", &format!("/api/now/table/incident/{sys_id}?sysparm_fields={FIELDS}"), Some(&json!({ field: note })))?;
        self.result("the note", resp)
    }
}

struct Incident;

impl Guest for Incident {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "servicenow-incident",
            env!("CARGO_PKG_VERSION"),
            "Open (create + note + status), create, note and read ServiceNow incidents with the Table API; `open` answers like jira-ticket's (key, url, status.name).",
            json!({
                "type": "object",
                "required": ["operation", "instance_url", "credential"],
                "additionalProperties": false,
                "properties": {
                    "operation": {"enum": ["open", "create", "note", "status"]},
                    "instance_url": {"type": "string", "description": "https://<instance>.service-now.com"},
                    "credential": {"type": "string", "description": "policy credential (basic or bearer)"},
                    "sys_id": {"type": "string"}, "number": {"type": "string"},
                    "short_description": {"type": "string", "description": "cut to 160 characters (the field's length), whole in the description"},
                    "description": {"type": "string"},
                    "priority": {"enum": ["Highest", "Critical", "High", "Medium", "Low", "Lowest"]},
                    "impact": {"type": "integer", "minimum": 1, "maximum": 3},
                    "urgency": {"type": "integer", "minimum": 1, "maximum": 3},
                    "category": {"type": "string"}, "assignment_group": {"type": "string"}, "caller_id": {"type": "string"},
                    "note": {"type": "string"},
                    "internal": {"type": "boolean", "default": true}
                }
            }),
            json!({
                "type": "object",
                "properties": {"key": {"type": "string"}, "sys_id": {"type": "string"}, "url": {"type": "string"}, "status": {"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string"}}}}
            }),
            &["https://*.service-now.com"],
            &["servicenow"],
        )
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let i: Input = parse_input(&input)?;
        validate(&i)?;
        let base = i.instance_url.trim_end_matches('/').to_string();
        let snow = Snow { client: Client::new("ServiceNow", &base, Some(i.credential.clone())), base, credential: i.credential.clone() };
        match i.operation {
            Operation::Create | Operation::Open => {
                let created = snow.result(
                    "the new incident",
                    snow.client.send("POST", &format!("/api/now/table/incident?sysparm_fields={FIELDS}"), Some(&new_incident(&i)))?,
                )?;
                let sys_id = created["sys_id"]
                    .as_str()
                    .filter(|s| is_sys_id(s))
                    .ok_or_else(|| upstream(None, "ServiceNow created an incident but answered no sys_id", None))?
                    .to_string();
                log::info(&format!("created {} ({sys_id})", created["number"].as_str().unwrap_or("?")));
                let mut out = snow.summary(&created);
                if i.operation == Operation::Open {
                    if let Some(n) = i.note.as_deref().filter(|n| !n.trim().is_empty()) {
                        snow.note(&sys_id, n, i.internal)?;
                        out["noted"] = json!(true);
                    }
                    let now = snow.result("the status read", snow.client.get(&format!("/api/now/table/incident/{sys_id}?sysparm_fields={FIELDS}"))?)?;
                    let status = snow.summary(&now)["status"].clone();
                    out["status"] = status;
                }
                output(&out)
            }
            Operation::Note => {
                let sys_id = snow.sys_id(&i)?;
                let rec = snow.note(&sys_id, i.note.as_deref().unwrap_or_default(), i.internal)?;
                log::info(&format!("added a {} to {}", if i.internal { "work note" } else { "comment" }, rec["number"].as_str().unwrap_or(&sys_id)));
                let mut out = snow.summary(&rec);
                out["noted"] = json!(true);
                output(&out)
            }
            Operation::Status => {
                let sys_id = snow.sys_id(&i)?;
                let rec = snow.result("the status read", snow.client.get(&format!("/api/now/table/incident/{sys_id}?sysparm_fields={FIELDS}"))?)?;
                output(&snow.summary(&rec))
            }
        }
    }
}

warden_sdk::export_action!(Incident);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Input {
        let mut base = json!({"instance_url": "https://corp.service-now.com", "credential": "servicenow"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn jira_priorities_map_onto_impact_and_urgency() {
        let b = new_incident(&input(json!({"operation": "create", "short_description": "x", "priority": "High"})));
        assert_eq!((b["impact"].as_str(), b["urgency"].as_str()), (Some("1"), Some("2")));
        let b = new_incident(&input(json!({"operation": "create", "short_description": "x", "priority": "High", "urgency": 3})));
        assert_eq!(b["urgency"], "3", "an explicit urgency wins");
        let b = new_incident(&input(json!({"operation": "create", "short_description": "x"})));
        assert_eq!((b["impact"].as_str(), b["urgency"].as_str()), (Some("3"), Some("3")));
    }

    #[test]
    fn incidents_are_named_safely_and_operations_get_what_they_need() {
        for (patch, why) in [
            (json!({"operation": "status"}), "sys_id or number"),
            (json!({"operation": "status", "sys_id": "../../sys_user"}), "32 hex"),
            (json!({"operation": "note", "number": "INC0010001&sysparm_query=active=true"}), "incident number"),
            (json!({"operation": "note", "number": "INC0010001"}), "note is required"),
            (json!({"operation": "create"}), "short_description is required"),
            (json!({"operation": "open", "short_description": "x", "priority": "Urgent"}), "Highest, High"),
            (json!({"operation": "open", "short_description": "x", "number": "INC0010001"}), "make a new one"),
            (json!({"operation": "create", "short_description": "x", "impact": 4}), "impact must be"),
        ] {
            match validate(&input(patch.clone())) {
                Err(ActionError::InvalidInput(m)) => assert!(m.contains(why), "{patch}: {m}"),
                other => panic!("{patch}: {other:?}"),
            }
        }
        validate(&input(json!({"operation": "note", "number": "INC0010001", "note": "n"}))).unwrap();
        validate(&input(json!({"operation": "status", "sys_id": "9d385017c611228000000000000000aa"}))).unwrap();
    }

    #[test]
    fn a_long_summary_is_cut_to_the_field_and_kept_whole_in_the_description() {
        let long = "x".repeat(200);
        let b = new_incident(&input(json!({"operation": "create", "short_description": long, "description": "d"})));
        assert_eq!(b["short_description"].as_str().unwrap().chars().count(), SHORT_DESCRIPTION);
        assert_eq!(b["description"], format!("{long}\n\nd"));
        let b = new_incident(&input(json!({"operation": "create", "short_description": "short", "description": "d"})));
        assert_eq!((b["short_description"].as_str(), b["description"].as_str()), (Some("short"), Some("d")));
    }

    #[test]
    fn states_have_their_names() {
        assert_eq!(state_name("1"), "New");
        assert_eq!(state_name("6"), "Resolved");
        assert_eq!(state_name("42"), "42");
    }
}
