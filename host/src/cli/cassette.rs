//! Recordings from the command line: `warden action run --record FILE` makes
//! one from a live call; `warden plugin test PLUGIN --cassette FILE…` replays
//! each against a plugin, offline, and says whether it behaves the same.

use anyhow::{anyhow, Context as _};
use std::path::Path;
use warden::recording::{Recording, Tape};
use warden::runtime::{InvocationReport, Plugin};
use warden::InvocationInfo;

/// Writes the recording `tape` made of one invocation.
pub fn save(tape: &Tape, path: &Path, plugin: &Plugin, info: &InvocationInfo, input: &str, report: &InvocationReport) -> anyhow::Result<()> {
    let rec = tape.finish(&plugin.name, &plugin.sha256, info, input, &report.outcome).ok_or_else(|| anyhow!("not recording"))?;
    if let Some(why) = &rec.truncated {
        eprintln!("warden: the recording is truncated: {why}");
    }
    std::fs::write(path, serde_json::to_string_pretty(&rec)? + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("warden: recorded {} call(s) to {}", rec.calls.len(), path.display());
    Ok(())
}

/// Reads a cassette; errors name the file and what is wrong.
pub fn load(path: &Path) -> anyhow::Result<Recording> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read cassette {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}:{}: not a warden recording: {e}", path.display(), e.line()))
}

pub use warden::story::replay::replay;
