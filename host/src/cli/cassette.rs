//! Recordings from the command line: `warden action run --record FILE` makes
//! one from a live call; `warden plugin test PLUGIN --cassette FILE…` replays
//! each against a plugin, offline, and says whether it behaves the same.

use anyhow::{anyhow, Context as _};
use std::path::Path;
use std::sync::Arc;
use warden::policy::Grant;
use warden::recording::{self, json_diff, locked, Outcome, Recording, Tape};
use warden::runtime::{InvocationReport, Plugin};
use warden::{InvocationInfo, InvokeError, Runtime};

/// How an invocation ended, as a recording keeps it.
pub fn outcome(report: &InvocationReport) -> Outcome {
    match &report.outcome {
        Ok(text) => Outcome::Output(serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.clone()))),
        Err(e) => Outcome::Error { kind: kind(e).into(), message: e.to_string() },
    }
}

fn kind(e: &InvokeError) -> &'static str {
    match e {
        InvokeError::InvalidInput { .. } => "invalid-input",
        InvokeError::Denied { .. } => "denied",
        InvokeError::Upstream { .. } => "upstream",
        InvokeError::Failed { .. } => "failed",
        InvokeError::Limit { .. } => "limit",
        InvokeError::Trap { .. } => "trap",
        InvokeError::Instantiate { .. } => "instantiate",
    }
}

/// Writes the recording `tape` made of one invocation.
pub fn save(tape: &Tape, path: &Path, plugin: &Plugin, info: &InvocationInfo, input: &str, report: &InvocationReport) -> anyhow::Result<()> {
    let Tape::Record(recorder) = tape else { return Err(anyhow!("not recording")) };
    let invocation = recording::Invocation { run_id: info.run_id.clone(), story: info.story.clone(), step: info.step.clone(), team: info.team.clone(), attempt: info.attempt };
    let input = serde_json::from_str(input).unwrap_or(serde_json::Value::String(input.to_string()));
    let rec = locked(recorder).finish(&plugin.name, &plugin.sha256, invocation, input, outcome(report));
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

/// Replays one cassette against `plugin`; Ok(None) when it behaves exactly
/// as recorded, Ok(Some(why)) when not.
pub async fn replay(rt: &Runtime, plugin: &Plugin, grant: Arc<Grant>, rec: Recording) -> anyhow::Result<Option<String>> {
    let info = InvocationInfo {
        run_id: rec.invocation.run_id.clone(),
        story: rec.invocation.story.clone(),
        step: rec.invocation.step.clone(),
        team: rec.invocation.team.clone(),
        attempt: rec.invocation.attempt,
    };
    let input = rec.input.to_string();
    let recorded = rec.outcome.clone();
    let tape = Tape::replay(rec).map_err(|e| anyhow!(e))?;
    let report = rt.invoke_taped(plugin, grant, info, &input, None, tape.clone()).await;
    let Tape::Replay(replayer) = &tape else { unreachable!() };
    let replayer = locked(replayer);
    if let Some(d) = &replayer.divergence {
        return Ok(Some(format!("replay diverged at {d}")));
    }
    if replayer.unmade() > 0 {
        let first = replayer.peek().map(|c| match c {
            recording::Call::Http { request, .. } => format!("http {} {}", request.method, request.url),
            other => other.name().to_string(),
        });
        return Ok(Some(format!(
            "the plugin made {} call(s) fewer than recorded; the first it did not make: #{} {}",
            replayer.unmade(),
            replayer.answered() + 1,
            first.unwrap_or_default()
        )));
    }
    let now = outcome(&report);
    Ok(match (&recorded, &now) {
        (Outcome::Output(a), Outcome::Output(b)) => json_diff(a, b).map(|d| format!("the output differs at {d}")),
        (a, b) if a == b => None,
        (a, b) => Some(format!("the outcome differs: recorded {}, now {}", short(a), short(b))),
    })
}

fn short(o: &Outcome) -> String {
    match o {
        Outcome::Output(v) => format!("output {}", warden::invocation::guest_text(&v.to_string(), 200)),
        Outcome::Error { kind, message } => format!("{kind} error `{message}`"),
    }
}
