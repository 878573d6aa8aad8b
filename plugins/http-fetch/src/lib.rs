//! `http-fetch`: GET a URL through warden's policed `http` import and return
//! the status, headers and body (parsed as JSON when it is JSON).
//!
//! The smallest useful warden plugin, and the one the README's demo runs.

wit_bindgen::generate!({ path: "../../wit", world: "action" });

use serde::Deserialize;
use serde_json::{json, Map, Value};
use warden::action::http::{self, HttpError, Request};
use warden::action::log::{self, Level};
use warden::action::types::UpstreamError;

struct HttpFetch;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    credential: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

impl Guest for HttpFetch {
    fn describe() -> Manifest {
        Manifest {
            name: "http-fetch".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "GET a URL and return its status, headers and body (JSON bodies parsed).".into(),
            input_schema: json!({
                "type": "object",
                "required": ["url"],
                "additionalProperties": false,
                "properties": {
                    "url": {"type": "string", "format": "uri", "description": "http(s) URL to GET"},
                    "credential": {"type": "string", "description": "name of a policy credential to inject"},
                    "timeout_ms": {"type": "integer", "minimum": 1}
                }
            })
            .to_string(),
            output_schema: json!({
                "type": "object",
                "required": ["status", "headers", "body"],
                "properties": {
                    "status": {"type": "integer"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {}
                }
            })
            .to_string(),
            hosts: vec![],
            credentials: vec![],
        }
    }

    fn run(_inv: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = serde_json::from_str(&input).map_err(|e| ActionError::InvalidInput(format!("input: {e}; expected {{\"url\": \"https://…\"}}")))?;
        log::log(Level::Info, &format!("GET {}", input.url));
        let response = http::send(&Request {
            method: "GET".into(),
            url: input.url.clone(),
            headers: vec![("accept".into(), "application/json, */*".into())],
            body: None,
            timeout_ms: input.timeout_ms,
            credential: input.credential,
        })
        .map_err(|e| match e {
            HttpError::Denied(why) => ActionError::Denied(why),
            HttpError::InvalidRequest(why) => ActionError::InvalidInput(format!("url: {why}")),
            HttpError::Timeout => {
                ActionError::Upstream(UpstreamError { status: None, message: format!("{} did not answer in time", input.url), retry_after_ms: None })
            }
            HttpError::Connection(why) => ActionError::Upstream(UpstreamError { status: None, message: why, retry_after_ms: None }),
            HttpError::TooLarge(why) => ActionError::Failed(why),
        })?;
        let mut headers = Map::new();
        for (k, v) in response.headers {
            headers.insert(k, Value::String(v));
        }
        let body = match serde_json::from_slice::<Value>(&response.body) {
            Ok(v) => v,
            Err(_) => Value::String(String::from_utf8_lossy(&response.body).into_owned()),
        };
        Ok(json!({"status": response.status, "headers": headers, "body": body}).to_string())
    }
}

export!(HttpFetch);
