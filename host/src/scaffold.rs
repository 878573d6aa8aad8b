//! `warden plugin new`: a plugin that builds and passes its own tests out of the box.

use anyhow::{anyhow, Context as _};
use std::path::{Path, PathBuf};

/// Where this warden's guest SDK lives (the scaffold depends on it by path).
fn sdk_path() -> PathBuf {
    let compiled_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
    std::env::var_os("WARDEN_SDK").map(PathBuf::from).unwrap_or(compiled_in)
}

pub fn rust(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || name.starts_with('-') {
        return Err(anyhow!("plugin name `{name}` must be lower-case letters, digits and -"));
    }
    let sdk = sdk_path()
        .canonicalize()
        .with_context(|| format!("cannot find the warden guest SDK at {} (set WARDEN_SDK to plugins/sdk of a warden checkout)", sdk_path().display()))?;
    let root = dir.join(name);
    if root.exists() {
        return Err(anyhow!("{} already exists; pick another name or folder", root.display()));
    }
    std::fs::create_dir_all(root.join("src"))?;
    let crate_name = name.replace('-', "_");
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
warden-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
strip = true

# A plugin is its own workspace, wherever it lives.
[workspace]
"#,
            sdk = sdk.display()
        ),
    )?;
    std::fs::write(root.join("src/lib.rs"), LIB_RS.replace("{{name}}", name))?;
    std::fs::write(
        root.join("warden.toml"),
        format!(
            r#"# A policy to try the plugin with: `warden action run {name} --policy warden.toml --input '…'`.
[plugins.{name}]
path = "target/wasm32-wasip2/release/{crate_name}.wasm"

[grants.{name}]
allow = ["GET https://api.example.com/v1/*"]
credentials = ["example"]
limits = {{ memory = "32MiB", cpu_ms = 1000, wall_ms = 10000, http_requests = 10 }}

[credentials.example]
kind = "bearer"
env = "EXAMPLE_TOKEN"
hosts = ["https://api.example.com"]
"#
        ),
    )?;
    std::fs::write(root.join(".gitignore"), "/target\n")?;
    Ok(root)
}

const LIB_RS: &str = r##"//! {{name}}: a warden plugin.
//!
//! GETs `path` from `base_url` through the host's policed `http` import, with
//! the credential the operator named, and returns the JSON body. Replace the
//! body of `run` with your connector; keep the input validated.
//!
//!     cargo test                                        # the plugin's own tests
//!     cargo build --release --target wasm32-wasip2      # the component
//!     warden plugin check target/wasm32-wasip2/release/<name>.wasm --policy warden.toml

use serde::Deserialize;
use serde_json::json;
use warden_sdk::client::retry_after_ms;
use warden_sdk::{invalid, log, output, parse_input, upstream, ActionError, Client, Guest, Invocation, Manifest};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Input {
    base_url: String,
    path: String,
    #[serde(default)]
    credential: Option<String>,
}

impl Input {
    fn validate(&self) -> Result<(), ActionError> {
        if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://")) {
            return Err(invalid("base_url must be an http(s) URL"));
        }
        if !self.path.starts_with('/') || self.path.contains("..") {
            return Err(invalid("path must start with / and must not contain .."));
        }
        Ok(())
    }
}

struct Plugin;

impl Guest for Plugin {
    fn describe() -> Manifest {
        warden_sdk::manifest(
            "{{name}}",
            env!("CARGO_PKG_VERSION"),
            "GET a JSON document from an API (a starting point for a connector).",
            json!({
                "type": "object",
                "required": ["base_url", "path"],
                "additionalProperties": false,
                "properties": {
                    "base_url": {"type": "string"},
                    "path": {"type": "string"},
                    "credential": {"type": "string"}
                }
            }),
            json!({"type": "object", "properties": {"data": {}}}),
            &["https://api.example.com"],
            &["example"],
        )
    }

    fn run(_invocation: Invocation, input: String) -> Result<String, ActionError> {
        let input: Input = parse_input(&input)?;
        input.validate()?;
        let client = Client::new("upstream", &input.base_url, input.credential.clone());
        let resp = client.get(&input.path)?;
        let data = client.json(resp, |r| upstream(Some(r.status), format!("upstream answered {}", r.status), retry_after_ms(r)))?;
        log::info(&format!("fetched {}", input.path));
        output(&json!({"data": data}))
    }
}

warden_sdk::export_action!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> Result<Input, ActionError> {
        let i: Input = parse_input(json)?;
        i.validate()?;
        Ok(i)
    }

    #[test]
    fn good_input_is_accepted() {
        let i = input(r#"{"base_url": "https://api.example.com", "path": "/v1/items", "credential": "example"}"#).unwrap();
        assert_eq!(i.path, "/v1/items");
    }

    #[test]
    fn bad_input_is_refused_with_the_field_named() {
        assert!(matches!(input(r#"{"base_url": "ftp://x", "path": "/"}"#), Err(ActionError::InvalidInput(m)) if m.contains("base_url")));
        assert!(matches!(input(r#"{"base_url": "https://x", "path": "/../admin"}"#), Err(ActionError::InvalidInput(m)) if m.contains("path")));
        assert!(matches!(input(r#"{"base_url": "https://x"}"#), Err(ActionError::InvalidInput(m)) if m.contains("path")));
    }
}
"##;
