//! What several commands share: loading the policy, reading input, finding a
//! plugin or a story by name or path.

use super::PolicyArg;
use anyhow::{anyhow, Context as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warden::policy::{Grant, Policy};
use warden::runtime::Plugin;
use warden::runtime::Runtime;
use warden::story::Library;

/// An error and its causes on one line, each cause once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

pub fn load_policy(arg: &PolicyArg) -> anyhow::Result<Policy> {
    let path = match &arg.policy {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("warden.toml")).filter(|p| p.exists()),
    };
    match path {
        Some(p) => Ok(Policy::load(&p)?),
        None => Ok(Policy::empty()),
    }
}

/// `--input`: JSON text, or `@file`.
pub fn read_input(input: &str) -> anyhow::Result<String> {
    let text = match input.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read input file {file}"))?,
        None => input.to_string(),
    };
    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| anyhow!("--input is not JSON ({e}); pass a JSON object or @file.json"))?;
    Ok(text)
}

/// The policy's name for `spec`: a plugin name, or the entry whose file `spec` is.
pub fn policy_name(policy: &Policy, spec: &str) -> Option<String> {
    if policy.plugins.contains_key(spec) {
        return Some(spec.to_string());
    }
    policy.plugin_at(Path::new(spec)).map(|e| e.name.clone())
}

/// A name from the policy, or a path; a path gets the grant of the policy
/// entry that points at the same file, otherwise nothing.
pub fn resolve_plugin(rt: &Runtime, policy: &Policy, spec: &str) -> anyhow::Result<(Arc<Plugin>, Arc<Grant>)> {
    if let Some(name) = policy_name(policy, spec) {
        return Ok((rt.load_entry(&policy.plugins[&name])?, policy.grant_for(&name)));
    }
    let path = Path::new(spec);
    if !path.exists() {
        let known: Vec<&str> = policy.plugins.keys().map(String::as_str).collect();
        return Err(anyhow!(
            "`{spec}` is neither a plugin in {} (known: {}) nor a file",
            policy.file,
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ));
    }
    let plugin = rt.load_file(path)?;
    let grant = Arc::new(Grant::deny_all(&plugin.name));
    Ok((plugin, grant))
}

/// The library that holds `spec` (a story file, or a name in `stories`) and the story's name.
pub fn load_library(spec: &str, stories: Option<&Path>) -> anyhow::Result<(Library, String)> {
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path)?;
        let story = warden::story::parse(&text, path)?;
        let dir = stories.map(Path::to_path_buf).unwrap_or_else(|| folder_of(path).to_path_buf());
        let mut library = Library::load_dir(&dir)?;
        library.stories.entry(story.name.clone()).or_insert_with(|| Arc::new(story.clone()));
        return Ok((library, story.name));
    }
    let Some(dir) = stories else {
        return Err(anyhow!("`{spec}` is not a story file; to run a story by name, give --stories DIR (or set WARDEN_STORIES)"));
    };
    let library = Library::load_dir(dir)?;
    if library.get(spec).is_none() {
        return Err(anyhow!("no story `{spec}` in {} (it has: {})", dir.display(), library.stories.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    Ok((library, spec.to_string()))
}

/// The folder a file lies in (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

pub fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
