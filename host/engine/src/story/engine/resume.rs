//! Resuming a run a restart interrupted: finished steps keep their results,
//! the interrupted one runs again only if its retry policy allows.

use super::{ErrorKind, Resume, RunResult, RunState, StepError, StepState, StoryRunner};
use crate::story::observe::Observer;
use crate::story::recorder::StepAt;
use crate::story::OnError;
use serde_json::Value;

/// Resumes after the process ended that may each end it again before a run
/// is failed instead (see [`StoryRunner::resume_after_restart`]).
pub const MAX_FATAL_RESUMES: u32 = 2;

impl StoryRunner {
    /// Continues a run that a restart interrupted. Finished steps keep their
    /// results; the interrupted step runs again if its retry policy allows
    /// another attempt, otherwise the run fails saying so. Never silent.
    ///
    /// A run parked at an approval resumes the same way, once woken: its
    /// approval step (or the sub-story step holding one) runs again and finds
    /// the decision.
    pub async fn resume(&self, run_id: &str, observer: &dyn Observer) -> RunResult {
        self.resume_at(run_id, 0, None, observer).await
    }

    /// Resumes a run that was executing when the process ended (a restart,
    /// a crash, a node whose lease lapsed). The resume is counted durably
    /// first; a run whose last [`MAX_FATAL_RESUMES`] resumes each ended the
    /// process (none reached a finish or a park) is failed instead: a run
    /// that kills the host must not kill it at every start, stalling every
    /// other run.
    ///
    /// `started`: whether the store shows the run started (`running`); a run
    /// still `queued` may have been executing too (its start not yet
    /// committed), so it is counted the same way and then executed from its
    /// first step.
    pub async fn resume_after_restart(&self, run_id: &str, started: bool, observer: &dyn Observer) -> RunResult {
        match self.store.resumes(run_id) {
            Ok(n) if n >= MAX_FATAL_RESUMES => {
                tracing::error!(
                    run = run_id,
                    resumes = n,
                    "not resuming a run whose resumption ended the process on each of its last {n} attempts; failing it"
                );
                let msg = format!(
                    "the process ended while this run was executing, and again on each of its last {n} attempts to resume it; it is failed, not resumed again (its steps' records show how far it got)"
                );
                return self.fail_run(run_id, None, StepError::new(ErrorKind::Interrupted, msg)).await;
            }
            Ok(_) => {}
            Err(e) => {
                return RunResult::failed(run_id, None, StepError::new(ErrorKind::Store, format!("cannot read how often run {run_id} was resumed: {e:#}")))
            }
        }
        // Committed before the run executes: if this resume ends the process
        // too, the next start knows.
        if let Err(e) = self.store.apply_one(crate::store::Write::NoteResume { id: run_id.to_string() }) {
            return RunResult::failed(run_id, None, StepError::new(ErrorKind::Store, format!("cannot count the resume of run {run_id}: {e:#}")));
        }
        if started {
            self.resume(run_id, observer).await
        } else {
            self.execute(run_id, observer).await
        }
    }

    /// Resumes the sub-story run `run_id` of the top-level run `root`, at `depth`.
    pub(super) async fn resume_child(&self, run_id: &str, root: &str, depth: usize, observer: &dyn Observer) -> RunResult {
        self.resume_at(run_id, depth, Some(root.to_string()), observer).await
    }

    async fn resume_at(&self, run_id: &str, depth: usize, root: Option<String>, observer: &dyn Observer) -> RunResult {
        let detail = match self.store.get_run(run_id) {
            Ok(Some(d)) => d,
            _ if depth > 0 => {
                return RunResult::failed(run_id, None, StepError::new(ErrorKind::Store, format!("cannot read sub-story run {run_id} to resume it")))
            }
            _ => return self.execute(run_id, observer).await,
        };
        let Some(story) = self.library.get(&detail.run.story) else {
            let msg = format!("interrupted by a restart, and story `{}` is no longer loaded", detail.run.story);
            return self.fail_run(run_id, None, StepError::new(ErrorKind::Failed, msg)).await;
        };
        // Sub-story runs cut off mid-way are over; their step runs again below.
        for child in detail.children.iter().filter(|c| c.state == RunState::Running.as_str() || c.state == RunState::Queued.as_str()) {
            let why = "interrupted by a restart; the calling step runs again";
            if let Err(down) = self.recorder.finish_run(&child.id, RunState::Failed, None, Some(why), None).await {
                return RunResult::failed(run_id, None, down.into());
            }
        }
        let mut resume = Resume { resumed: true, ..Resume::default() };
        for step in story.steps().into_iter().flat_map(|b| &b.steps) {
            let row = detail.steps.iter().find(|r| r.step_id == step.id && r.item.is_none());
            let Some(r) = row else { break };
            match StepState::parse(&r.state) {
                Some(state @ (StepState::Succeeded | StepState::Skipped | StepState::Recovered)) => {
                    resume.done.push((step.id.clone(), state, r.output.clone().unwrap_or(Value::Null), None));
                    resume.from += 1;
                }
                // Parked here: the step runs again and finds its decision
                // (or, for a sub-story, resumes the run that waits).
                Some(StepState::Waiting) => {
                    resume.waiting_child = detail
                        .children
                        .iter()
                        .find(|c| c.parent_step.as_deref() == Some(step.id.as_str()) && c.state == RunState::Waiting.as_str())
                        .map(|c| c.id.clone());
                    break;
                }
                Some(StepState::Failed) if step.on_error == OnError::Continue => {
                    let e: Option<StepError> = r.error.clone().and_then(|e| serde_json::from_value(e).ok());
                    resume.done.push((step.id.clone(), StepState::Failed, Value::Null, e));
                    resume.from += 1;
                }
                _ => {
                    if r.attempts >= step.retry.attempts {
                        let msg =
                            format!("interrupted by a restart during step {} (attempt {}); its retry policy allows no further attempt", step.id, r.attempts);
                        let e = StepError::new(ErrorKind::Interrupted, msg);
                        let at = StepAt { run: run_id, step: &step.id, item: None, kind: step.kind.name() };
                        if let Err(down) = self.recorder.step_finished_now(&at, StepState::Failed, None, Some(&e), r.attempts).await {
                            return RunResult::failed(run_id, Some(step.id.clone()), down.into());
                        }
                        let msg = e.message.clone();
                        return match self.recorder.finish_run(run_id, RunState::Failed, None, Some(&msg), Some(&step.id)).await {
                            Ok(()) => RunResult::failed(run_id, Some(step.id.clone()), e),
                            Err(down) => RunResult::failed(run_id, Some(step.id.clone()), down.into()),
                        };
                    }
                    resume.attempts_used = r.attempts;
                    break;
                }
            }
        }
        let caller = detail.run.parent_run.clone().zip(detail.run.parent_step.clone());
        // A top-level run resumed (after an approval, or a restart) continues its trace.
        if let (Some(t), None, Some(trace), Some(span)) = (&self.traces, &caller, &detail.run.trace_id, &detail.run.trace_span) {
            t.adopt_earlier(run_id, trace, span);
        }
        self.run_story(story, run_id.to_string(), detail.input, depth, observer, resume, root, caller).await
    }
}
