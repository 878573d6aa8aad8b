//! Replaying runs: each recorded action step attempt re-executed offline
//! from its recording (see [`crate::recording`]), sub-stories included, with
//! the first divergence or output difference named.

use crate::policy::{Grant, Policy};
use crate::recording::{self, json_diff, locked, Outcome, Recording, Tape};
use crate::runtime::{Plugin, Runtime};
use crate::store::RunStore;
use anyhow::{anyhow, Context as _};
use std::sync::Arc;

/// One step attempt replayed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReplay {
    pub run: String,
    pub step: String,
    pub item: Option<usize>,
    pub attempt: u32,
    pub plugin: String,
    /// Capability calls in the recording.
    pub calls: usize,
    /// `None` when the step behaved exactly as recorded; else why not.
    pub differs: Option<String>,
}

/// Replays `rec` against `plugin`: Ok(None) when it asks for exactly the
/// recorded calls and returns the recorded outcome.
pub async fn replay(rt: &Runtime, plugin: &Plugin, grant: Arc<Grant>, rec: Recording) -> anyhow::Result<Option<String>> {
    let info = rec.invocation.info();
    let input = rec.input.to_string();
    let recorded = rec.outcome.clone();
    let tape = Tape::replay(rec).map_err(|e| anyhow!(e))?;
    let report = rt.invoke_taped(plugin, grant, info, &input, None, tape.clone()).await;
    let Tape::Replay(replayer) = &tape else { unreachable!("a replay tape") };
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
    let now = Outcome::of(&report.outcome);
    Ok(match (&recorded, &now) {
        (Outcome::Output(a), Outcome::Output(b)) => json_diff(a, b).map(|d| format!("the output differs at {d}")),
        (a, b) if a == b => None,
        (a, b) => Some(format!("the outcome differs: recorded {}, now {}", short(a), short(b))),
    })
}

fn short(o: &Outcome) -> String {
    match o {
        Outcome::Output(v) => format!("output {}", crate::invocation::guest_text(&v.to_string(), 200)),
        Outcome::Error { kind, message } => format!("{kind} error `{}`", crate::invocation::guest_text(message, 300)),
    }
}

/// Replays every recorded step attempt of `run` (only `step`, when given)
/// and of its sub-story runs, each with the policy's plugin or `other`.
pub async fn replay_run(
    rt: &Runtime,
    policy: &Policy,
    store: &dyn RunStore,
    run: &str,
    step: Option<&str>,
    other: Option<&Arc<Plugin>>,
) -> anyhow::Result<Vec<StepReplay>> {
    let detail = store.get_run(run)?.ok_or_else(|| anyhow!("no run {run} in the store"))?;
    let mut out = Vec::new();
    for stored in store.recordings(run)? {
        if step.is_some_and(|s| s != stored.step) {
            continue;
        }
        let rec: Recording =
            serde_json::from_str(&stored.recording).with_context(|| format!("the recording of step {} of run {run} is not readable", stored.step))?;
        let plugin = match other {
            Some(p) => p.clone(),
            None => {
                let entry = policy.plugins.get(&rec.plugin).ok_or_else(|| {
                    anyhow!("step {} ran plugin {}, which the policy does not name; give --policy, or --plugin FILE", stored.step, rec.plugin)
                })?;
                rt.load_entry(entry)?
            }
        };
        let grant = policy.grant_for_team(&rec.plugin, &rec.invocation.team);
        let (plugin_name, calls) = (rec.plugin.clone(), rec.calls.len());
        let differs = replay(rt, &plugin, grant, rec).await?;
        out.push(StepReplay { run: run.to_string(), step: stored.step, item: stored.item, attempt: stored.attempt, plugin: plugin_name, calls, differs });
    }
    for child in &detail.children {
        let inner = Box::pin(replay_run(rt, policy, store, &child.id, None, other)).await?;
        out.extend(inner);
    }
    Ok(out)
}
