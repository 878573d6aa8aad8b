//! `warden plugin new`: a plugin that builds and passes its own tests out of the box.

use anyhow::anyhow;
use std::path::{Path, PathBuf};

use super::kit;

/// Checks the name and creates the plugin's folder.
fn start(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || name.starts_with('-') {
        return Err(anyhow!("plugin name `{name}` must be lower-case letters, digits and -"));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(anyhow!("{} already exists; pick another name or folder", root.display()));
    }
    std::fs::create_dir_all(&root)?;
    Ok(root)
}

fn example_policy(name: &str, wasm: &str) -> String {
    format!(
        r#"# A policy to try the plugin with: `warden action run {name} --policy warden.toml --input '…'`.
[plugins.{name}]
path = "{wasm}"

[grants.{name}]
allow = ["GET https://api.example.com/v1/*"]
credentials = ["example"]
limits = {{ memory = "128MiB", cpu_ms = 2000, wall_ms = 10000, http_requests = 10 }}

[credentials.example]
kind = "bearer"
env = "EXAMPLE_TOKEN"
hosts = ["https://api.example.com"]
"#
    )
}

/// A cassette the scaffold passes out of the box: one GET answered as a
/// ticket API would, the plugin's output for it. It shows the format, and
/// `warden plugin test` replays it with no network; record real ones with
/// `warden action run … --record`.
fn write_cassette(root: &Path, name: &str, request_headers: serde_json::Value) -> anyhow::Result<()> {
    let ticket = serde_json::json!({"id": 42, "summary": "Phishing report from the finance team", "status": "open"});
    let cassette = serde_json::json!({
        "format": warden::recording::FORMAT,
        "plugin": name,
        "invocation": {"run_id": "example", "team": "example", "attempt": 1},
        "input": {"base_url": "https://api.example.com", "path": "/v1/tickets/42", "credential": "example"},
        "calls": [{
            "call": "http",
            "request": {"method": "GET", "url": "https://api.example.com/v1/tickets/42", "headers": request_headers, "credential": "example"},
            "answer": {"response": {"status": 200, "headers": [["content-type", "application/json"]], "body": ticket.to_string()}}
        }],
        "outcome": {"output": {"data": ticket}}
    });
    std::fs::create_dir_all(root.join("tests/cassettes"))?;
    std::fs::write(root.join("tests/cassettes/get-ticket.json"), serde_json::to_string_pretty(&cassette)? + "\n")?;
    Ok(())
}

/// A JavaScript plugin built with componentize-js: `npm test`, `npm run build`.
pub fn js(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = start(name, dir)?;
    kit::write_wit(&root)?;
    let file = name.replace('-', "_");
    std::fs::write(
        root.join("package.json"),
        format!(
            r#"{{
  "name": "{name}",
  "private": true,
  "version": "0.1.0",
  "type": "module",
  "scripts": {{
    "test": "node --test",
    "build": "node build.mjs"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }}
}}
"#
        ),
    )?;
    std::fs::write(
        root.join("build.mjs"),
        format!(
            r#"// Builds app.js into {file}.wasm, a component of warden's `action` world
// (wit/ here, written by `warden plugin new`). `fetch()` makes it import
// standard wasi:http, which warden judges like its own http import.
import {{ componentize }} from '@bytecodealliance/componentize-js';
import {{ writeFile }} from 'node:fs/promises';

const {{ component }} = await componentize({{
  sourcePath: new URL('./app.js', import.meta.url).pathname,
  witPath: new URL('./wit', import.meta.url).pathname,
  worldName: 'action',
  // A plugin is called through `run`, never as an HTTP server.
  disableFeatures: ['fetch-event'],
}});
await writeFile(new URL('./{file}.wasm', import.meta.url), component);
console.log('built {file}.wasm');
"#
        ),
    )?;
    write_cassette(&root, name, serde_json::json!([["accept", "application/json"]]))?;
    std::fs::write(root.join("logic.js"), JS_LOGIC)?;
    std::fs::write(root.join("logic.test.js"), JS_TEST)?;
    std::fs::write(root.join("app.js"), JS_APP.replace("{{name}}", name))?;
    std::fs::write(root.join("warden.toml"), example_policy(name, &format!("{file}.wasm")))?;
    std::fs::write(
        root.join(".gitignore"),
        "/node_modules
*.wasm
",
    )?;
    Ok(root)
}

/// A Python plugin built with componentize-py: `python3 -m unittest`, then componentize.
pub fn python(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = start(name, dir)?;
    kit::write_wit(&root)?;
    std::fs::write(root.join("warden_http.py"), kit::PY_HTTP)?;
    let file = name.replace('-', "_");
    write_cassette(&root, name, serde_json::json!([["accept", "application/json"]]))?;
    std::fs::write(root.join("logic.py"), PY_LOGIC)?;
    std::fs::write(root.join("test_logic.py"), PY_TEST)?;
    std::fs::write(root.join("app.py"), PY_APP.replace("{{name}}", name))?;
    std::fs::write(
        root.join("build.sh"),
        format!(
            r#"#!/bin/sh
# Builds app.py into {file}.wasm, a component of warden's `action-http` world
# (wit/ here, written by `warden plugin new`): the `action` world with standard
# wasi:http, which warden_http.py uses and warden judges like its own http import.
set -e
cd "$(dirname "$0")"
componentize-py -d wit -w action-http componentize app -o {file}.wasm
"#
        ),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("build.sh"), std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(root.join("warden.toml"), example_policy(name, &format!("{file}.wasm")))?;
    std::fs::write(
        root.join(".gitignore"),
        "*.wasm
__pycache__/
",
    )?;
    Ok(root)
}

pub fn rust(name: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let root = start(name, dir)?;
    kit::write_wit(&root)?;
    kit::write_sdk(&root)?;
    write_cassette(&root, name, serde_json::json!([["accept", "application/json"]]))?;
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
# The SDK and wit/ are in this folder, written by `warden plugin new`.
warden-sdk = {{ path = "warden-sdk" }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
strip = true

# A plugin is its own workspace, wherever it lives.
[workspace]
"#
        ),
    )?;
    std::fs::write(root.join("src/lib.rs"), LIB_RS.replace("{{name}}", name))?;
    std::fs::write(root.join("warden.toml"), example_policy(name, &format!("target/wasm32-wasip2/release/{crate_name}.wasm")))?;
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

const JS_LOGIC: &str = r##"// Pure logic, testable with `node --test` outside the sandbox.

/// Parses and checks the input; throws warden's `invalid-input` error naming the field.
export function parseInput(text) {
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw { tag: 'invalid-input', val: `input is not JSON: ${e.message}` };
  }
  if (typeof v.base_url !== 'string' || !/^https?:\/\//.test(v.base_url)) {
    throw { tag: 'invalid-input', val: 'base_url must be an http(s) URL' };
  }
  if (typeof v.path !== 'string' || !v.path.startsWith('/') || v.path.includes('..')) {
    throw { tag: 'invalid-input', val: 'path must start with / and must not contain ..' };
  }
  return { url: v.base_url.replace(/\/+$/, '') + v.path, credential: v.credential };
}
"##;

const JS_TEST: &str = r##"import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseInput } from './logic.js';

test('good input is accepted', () => {
  const i = parseInput('{"base_url": "https://api.example.com/", "path": "/v1/items", "credential": "example"}');
  assert.equal(i.url, 'https://api.example.com/v1/items');
  assert.equal(i.credential, 'example');
});

test('bad input is refused with the field named', () => {
  assert.throws(() => parseInput('{"base_url": "ftp://x", "path": "/"}'), (e) => e.tag === 'invalid-input' && e.val.includes('base_url'));
  assert.throws(() => parseInput('{"base_url": "https://x", "path": "/../admin"}'), (e) => e.val.includes('path'));
  assert.throws(() => parseInput('not json'), (e) => e.tag === 'invalid-input');
});
"##;

const JS_APP: &str = r##"// {{name}}: a warden plugin in JavaScript.
//
// GETs a JSON document with the standard `fetch()`, with the credential the
// operator named in the `warden-credential` header (the host removes it and
// injects the value after the policy check; the plugin never sees it).
// `npm test` tests logic.js; `npm run build` makes the component.
import { log } from 'warden:action/log@0.1.0';
import { parseInput } from './logic.js';

export function describe() {
  return {
    name: '{{name}}',
    version: '0.1.0',
    description: 'GET a JSON document from an API (a starting point for a connector).',
    inputSchema: JSON.stringify({
      type: 'object',
      required: ['base_url', 'path'],
      properties: { base_url: { type: 'string' }, path: { type: 'string' }, credential: { type: 'string' } },
    }),
    outputSchema: JSON.stringify({ type: 'object', properties: { data: {} } }),
    hosts: ['https://api.example.com'],
    credentials: ['example'],
  };
}

// A refused or failed fetch carries warden's reason (and rule) in its message.
function reason(e) {
  for (let x = e; x; x = x.cause) {
    if (x.message) return String(x.message);
  }
  return String(e);
}

export async function run(invocation, input) {
  const { url, credential } = parseInput(input);
  const headers = { accept: 'application/json' };
  if (credential) headers['warden-credential'] = credential;
  let resp;
  try {
    resp = await fetch(url, { headers });
  } catch (e) {
    const why = reason(e);
    if (why.includes('warden refused')) throw { tag: 'denied', val: why };
    throw { tag: 'upstream', val: { status: undefined, message: why, retryAfterMs: undefined } };
  }
  if (resp.status >= 400) {
    throw { tag: 'upstream', val: { status: resp.status, message: `upstream answered ${resp.status}`, retryAfterMs: undefined } };
  }
  log('info', `fetched ${url}`);
  return JSON.stringify({ data: await resp.json() });
}
"##;

const PY_LOGIC: &str = r##""""Pure logic, testable with `python3 -m unittest` outside the sandbox."""

import json


def parse_input(text: str) -> dict:
    """Parses and checks the input; raises ValueError naming the field."""
    try:
        v = json.loads(text)
    except ValueError as e:
        raise ValueError(f"input is not JSON: {e}")
    base = v.get("base_url")
    if not isinstance(base, str) or not base.startswith(("https://", "http://")):
        raise ValueError("base_url must be an http(s) URL")
    path = v.get("path")
    if not isinstance(path, str) or not path.startswith("/") or ".." in path:
        raise ValueError("path must start with / and must not contain ..")
    return {"url": base.rstrip("/") + path, "credential": v.get("credential")}
"##;

const PY_TEST: &str = r##"import unittest

from logic import parse_input


class ParseInput(unittest.TestCase):
    def test_good_input_is_accepted(self):
        i = parse_input('{"base_url": "https://api.example.com/", "path": "/v1/items", "credential": "example"}')
        self.assertEqual(i["url"], "https://api.example.com/v1/items")

    def test_bad_input_is_refused_with_the_field_named(self):
        with self.assertRaisesRegex(ValueError, "base_url"):
            parse_input('{"base_url": "ftp://x", "path": "/"}')
        with self.assertRaisesRegex(ValueError, "path"):
            parse_input('{"base_url": "https://x", "path": "/../admin"}')


if __name__ == "__main__":
    unittest.main()
"##;

const PY_APP: &str = r##""""{{name}}: a warden plugin in Python.

GETs a JSON document over standard wasi:http (warden_http.py), with the
credential the operator named (the host injects its value; the plugin never
sees it). `python3 -m unittest` tests logic.py; `./build.sh` makes the component.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports import warden_action_types as types

from logic import parse_input
from warden_http import HttpError, request


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Manifest:
        return types.Manifest(
            name="{{name}}",
            version="0.1.0",
            description="GET a JSON document from an API (a starting point for a connector).",
            input_schema=json.dumps({"type": "object", "required": ["base_url", "path"]}),
            output_schema=json.dumps({"type": "object", "properties": {"data": {}}}),
            hosts=["https://api.example.com"],
            credentials=["example"],
        )

    def run(self, invocation: types.Invocation, input: str) -> str:
        try:
            args = parse_input(input)
        except ValueError as e:
            raise Err(types.ActionError_InvalidInput(str(e)))
        try:
            resp = request("GET", args["url"], headers={"accept": "application/json"}, credential=args["credential"])
        except HttpError as e:
            if e.kind == "denied":
                raise Err(types.ActionError_Denied(e.message))
            raise Err(types.ActionError_Upstream(types.UpstreamError(status=None, message=e.message, retry_after_ms=None)))
        if resp.status >= 400:
            raise Err(types.ActionError_Upstream(types.UpstreamError(status=resp.status, message=f"upstream answered {resp.status}", retry_after_ms=None)))
        log.log(log.Level.INFO, f"fetched {args['url']}")
        return json.dumps({"data": resp.json()})
"##;
