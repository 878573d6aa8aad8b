//! A Tines story export, as read from its JSON (every schema version: the
//! fields this importer uses are named, every other one is kept so the
//! report can say it was not used).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

/// Largest export read (real ones are a few MiB at most).
pub const MAX_EXPORT_BYTES: u64 = 64 * 1024 * 1024;
/// Most agents in one story, nested stories apart.
pub const MAX_AGENTS: usize = 5_000;
/// Deepest nesting of `send_to_stories`.
pub const MAX_NESTING: usize = 16;

#[derive(Debug, Clone, Deserialize)]
pub struct Export {
    #[serde(default)]
    pub schema_version: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub entry_agent_guid: Option<String>,
    #[serde(default)]
    pub exit_agent_guids: Option<Vec<String>>,
    #[serde(default)]
    pub exit_agent_guid: Option<String>,
    #[serde(default)]
    pub send_to_stories: Vec<Export>,
    /// Every other top-level field, for the report.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Agent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub disabled: Option<Value>,
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub options: Value,
    #[serde(default)]
    pub schedule: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub source: usize,
    pub receiver: usize,
    #[serde(default)]
    pub link_type: Option<String>,
}

/// Top-level fields every schema has and the import does not need (the
/// diagram, forms, tags…): ignored without a report line each.
pub const LAYOUT_FIELDS: &[&str] = &[
    "diagram_notes",
    "diagram_layout",
    "exported_at",
    "send_to_story_enabled",
    "standard_lib_version",
    "action_runtime_version",
    "keep_events_for",
    "send_to_story_access",
    "synchronous_webhooks_enabled",
    "tags",
    "sections",
    "send_to_story_timeout_enabled",
    "send_to_story_timeout_duration_seconds",
    "api_entry_action_guids",
    "api_exit_action_guids",
    "recipients",
    "form",
    "forms",
    "pages",
    "integrations",
    "team",
    "story_library_metadata",
    "monitor_failures",
];

impl Export {
    /// Reads an export file; errors name the file and what is wrong.
    pub fn read(path: &Path) -> Result<Export, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        if meta.len() > MAX_EXPORT_BYTES {
            return Err(format!("{}: {} bytes; an export of at most {MAX_EXPORT_BYTES} bytes is read", path.display(), meta.len()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Export::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Export, String> {
        let e: Export = serde_json::from_str(text).map_err(|e| format!("line {}: not a Tines story export: {e}", e.line()))?;
        e.check(0)?;
        Ok(e)
    }

    fn check(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err(format!("send_to_stories nest deeper than {MAX_NESTING}"));
        }
        if self.agents.len() > MAX_AGENTS {
            return Err(format!("story `{}` has {} agents; at most {MAX_AGENTS} are imported", self.title(), self.agents.len()));
        }
        for l in &self.links {
            if l.source >= self.agents.len() || l.receiver >= self.agents.len() {
                return Err(format!("story `{}`: link {} → {} names an agent index past its {} agents", self.title(), l.source, l.receiver, self.agents.len()));
            }
        }
        self.send_to_stories.iter().try_for_each(|s| s.check(depth + 1))
    }

    /// The story's name as Tines shows it.
    pub fn title(&self) -> String {
        self.name.clone().filter(|n| !n.trim().is_empty()).or_else(|| self.slug.clone()).unwrap_or_else(|| "Untitled story".into())
    }

    pub fn exits(&self) -> Vec<String> {
        match (&self.exit_agent_guids, &self.exit_agent_guid) {
            (Some(l), _) if !l.is_empty() => l.clone(),
            (_, Some(one)) => vec![one.clone()],
            _ => Vec::new(),
        }
    }
}

impl Agent {
    pub fn is_disabled(&self) -> bool {
        self.disabled.as_ref().and_then(crate::story::graph::bool_of).unwrap_or(false)
    }
}
