//! What a run tells whoever watches it (the CLI's live progress, metrics):
//! events as they happen, after the recorder has written them.

use super::state::{RunState, StepError, StepState};
use crate::invocation::LogLine;
use std::time::Duration;

/// What an observer (the CLI's progress display, metrics) is told.
#[derive(Debug)]
pub enum Event<'a> {
    RunStarted { run: &'a str, story: &'a str, depth: usize },
    StepStarted { run: &'a str, step: &'a str, item: Option<usize>, attempt: u32, depth: usize },
    StepFinished { run: &'a str, step: &'a str, kind: &'static str, item: Option<usize>, state: StepState, elapsed: Duration, error: Option<&'a StepError>, depth: usize },
    Log { run: &'a str, step: &'a str, line: &'a LogLine, depth: usize },
    /// One capability call's audit record (already stored).
    Audit { run: &'a str, step: &'a str, record: &'a crate::audit::AuditRecord },
    RunFinished { run: &'a str, story: &'a str, state: RunState, elapsed: Duration, depth: usize },
}

pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}

