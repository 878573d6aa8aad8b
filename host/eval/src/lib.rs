//! The template languages of warden's stories: minijinja for YAML stories
//! ([`jinja`]), and Tines' Liquid ([`liquid`]) and formulas ([`formula`]) for
//! imported graph stories.
//!
//! Two builds of this one crate, on either side of the sandbox wall:
//!
//! - **The host** (`warden`) depends on it without features: it parses
//!   templates to check stories at load (references, syntax, unknown
//!   functions) and never renders one. Rendering is not compiled in, so no
//!   code path in the host process can render a template.
//! - **The evaluator guest** (`host/eval/guest`) turns on `evaluate` and is
//!   compiled to a Wasm component. The host runs every render inside a fresh
//!   instance of it with a memory limit and a fuel budget
//!   (`warden::runtime::evaluator`): a template, a filter, a formula or a
//!   Liquid loop that grows a value without bound fails that render (a trap
//!   in the guest), never the host. A filter added to any of the three
//!   languages later is bounded the same way without anyone remembering to
//!   cap it.
#![cfg_attr(not(feature = "evaluate"), allow(dead_code))]

pub mod formula;
pub mod jinja;
pub mod liquid;
#[cfg(feature = "evaluate")]
pub mod render;

use serde_json::Value;

/// `a.b.0.c` (or `.a.b`) in a JSON value: object keys and list indexes.
pub fn lookup_ref<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A regex from an export (Ruby's syntax is mostly Rust's), size-capped.
pub fn regex(text: &str) -> Option<regex::Regex> {
    regex::RegexBuilder::new(text).size_limit(1 << 20).dfa_size_limit(1 << 20).build().ok()
}

/// A template shown in an error: one line, at most 80 characters.
pub fn excerpt(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 80 {
        format!("{}…", one.chars().take(79).collect::<String>())
    } else {
        one
    }
}
