//! The seam between the engine that runs a run and the engine of each story
//! kind.
//!
//! `warden-engine` owns a run: it accepts it, resumes it, and runs any one
//! step (an action in the sandbox, a sub-story as its own run, an approval)
//! with its retries and timeout. What a story's body does with its steps —
//! a list in order with conditions and fallbacks (`warden-steps`), or agents
//! receiving events (`warden-graph`) — is its kind's engine, which asks the
//! run's engine for that one thing through [`StepRunner`]. Neither kind's engine
//! knows the other, nor the one above them.

use super::observe::{Event, Observer};
use super::recorder::{Recorder, StepAt};
use super::state::{StepError, StepState};
use super::template::Bindings;
use super::{Step, Story};
use crate::policy::Policy;
use crate::store::RunStore;
use serde_json::Value;
use std::time::Duration;

/// How a run's body ended: the output, or the step that failed (`None`
/// before any step) and why.
pub type RunOutcome = Result<Value, (Option<String>, StepError)>;

/// One step being run: where it is and who watches.
#[derive(Clone, Copy)]
pub struct StepRun<'a> {
    pub story: &'a Story,
    pub step: &'a Step,
    pub run: &'a str,
    /// The top-level run (woken when an approval below it is decided).
    pub root: &'a str,
    pub depth: usize,
    pub observer: &'a dyn Observer,
    /// A resumed run's sub-story run that this step left waiting.
    pub waiting_child: Option<&'a str>,
}

impl<'a> StepRun<'a> {
    pub fn at(&self, item: Option<usize>) -> StepAt<'a> {
        StepAt { run: self.run, step: &self.step.id, item, kind: self.step.kind.name() }
    }

    /// Tells the observer the step (or one item of it) ended.
    pub fn finished(&self, item: Option<usize>, state: StepState, elapsed: Duration, error: Option<&StepError>) {
        let (run, step, kind, depth) = (self.run, self.step.id.as_str(), self.step.kind.name(), self.depth);
        self.observer.event(&Event::StepFinished { run, step, kind, item, state, elapsed, error, depth });
    }
}

/// Where a resumed run picks up: the finished steps' results, and the index of
/// the first step still to run (a graph run reads its own record instead).
#[derive(Default)]
pub struct Resume {
    /// Whether the run was interrupted or parked before (a new run: `false`).
    pub resumed: bool,
    pub done: Vec<(String, StepState, Value, Option<StepError>)>,
    pub from: usize,
    /// Attempts the interrupted step already used (recorded for the audit trail).
    pub attempts_used: u32,
    /// The sub-story run the step at `from` left waiting for an approval.
    pub waiting_child: Option<String>,
}

/// What a story kind's engine asks of the engine running the run.
#[async_trait::async_trait]
pub trait StepRunner: Send + Sync {
    /// Runs one step (or one item of it, `item`) with its retry policy and
    /// timeout, recording every attempt; `first_attempt` continues a count a
    /// restart interrupted. An error of kind `Waiting` means the step parked
    /// the run (recorded already).
    async fn attempts(&self, sr: &StepRun<'_>, ctx: &Bindings, item: Option<usize>, first_attempt: u32) -> Result<Value, StepError>;

    /// The run's record: where a kind's engine writes what it computed itself.
    fn recorder(&self) -> &Recorder;

    /// The policy the run is under (resources, grants).
    fn policy(&self) -> &Policy;

    /// The run store, for reading back what a resumed run recorded.
    fn store(&self) -> &dyn RunStore;

    /// The `approval` object a story's templates read (each approval step's
    /// links, sealed); `None` when the story has no approval step.
    fn approval_links(&self, story: &Story, run: &str, root: &str, ctx: &Bindings) -> Result<Option<Value>, StepError>;
}
