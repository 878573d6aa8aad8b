//! The guest side of warden: bindings for the `warden:action` world plus the
//! helpers every connector needs.
//!
//! ```ignore
//! use warden_sdk::{ActionError, Guest, Invocation, Manifest};
//! struct MyAction;
//! impl Guest for MyAction {
//!     fn describe() -> Manifest { /* … */ }
//!     fn run(_: Invocation, input: String) -> Result<String, ActionError> { /* … */ }
//! }
//! warden_sdk::export_action!(MyAction);
//! ```

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "action",
        pub_export_macro: true,
        export_macro_name: "export_action",
        default_bindings_module: "warden_sdk::bindings",
    });
}

pub mod client;

pub use bindings::warden::action::http::{HttpError, Request, Response};
pub use bindings::warden::action::types::{ActionError, Invocation, Manifest, UpstreamError};
pub use bindings::{export_action, Guest};
pub use client::{Client, Json};

use bindings::warden::action::{clock, log as wlog};
use serde::de::DeserializeOwned;

/// Log through the host (lands in the invocation's record).
pub mod log {
    use super::wlog::{log, Level};
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    pub fn warn(msg: &str) {
        log(Level::Warn, msg)
    }
    pub fn error(msg: &str) {
        log(Level::Error, msg)
    }
}

/// Sleep on the host: costs no CPU, counts against the wall-clock limit.
pub fn sleep_ms(ms: u64) {
    clock::sleep(ms)
}

/// Milliseconds since the Unix epoch, from the host.
pub fn now_ms() -> u64 {
    clock::now()
}

/// Parses the input JSON into `T`; errors are `invalid-input` naming the field.
pub fn parse_input<T: DeserializeOwned>(input: &str) -> Result<T, ActionError> {
    serde_json::from_str(input).map_err(|e| ActionError::InvalidInput(format!("input: {e}")))
}

/// Serialises the output.
pub fn output<T: serde::Serialize>(value: &T) -> Result<String, ActionError> {
    serde_json::to_string(value).map_err(|e| ActionError::Failed(format!("cannot encode output: {e}")))
}

/// Shorthand for an `invalid-input` error.
pub fn invalid(msg: impl Into<String>) -> ActionError {
    ActionError::InvalidInput(msg.into())
}

/// Checks that `value`, the service's base URL in input field `field`, is an
/// http(s) URL; the error names the field and an `example`.
pub fn base_url(field: &str, value: &str, example: &str) -> Result<(), ActionError> {
    if value.starts_with("https://") || value.starts_with("http://") {
        Ok(())
    } else {
        Err(invalid(format!("{field} must be an http(s) URL such as {example}")))
    }
}

/// `text` in at most `max` characters: cut with `…` when longer.
pub fn cut_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Shorthand for an `upstream` error.
pub fn upstream(status: Option<u16>, message: impl Into<String>, retry_after_ms: Option<u64>) -> ActionError {
    ActionError::Upstream(UpstreamError { status, message: message.into(), retry_after_ms })
}

/// Builds a manifest from JSON-valued schemas.
pub fn manifest(
    name: &str,
    version: &str,
    description: &str,
    input_schema: serde_json::Value,
    output_schema: serde_json::Value,
    hosts: &[&str],
    credentials: &[&str],
) -> Manifest {
    Manifest {
        name: name.into(),
        version: version.into(),
        description: description.into(),
        input_schema: input_schema.to_string(),
        output_schema: output_schema.to_string(),
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        credentials: credentials.iter().map(|s| s.to_string()).collect(),
    }
}
