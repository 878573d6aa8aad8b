//! What a run tells whoever watches it (the CLI's live progress, metrics):
//! events as they happen, after the recorder has written them.

use super::state::{RunState, StepError, StepState};
use crate::invocation::LogLine;
use std::time::Duration;

/// What an observer (the CLI's progress display, metrics) is told.
#[derive(Debug)]
pub enum Event<'a> {
    /// `caller`: the run and step that called this sub-story.
    RunStarted {
        run: &'a str,
        story: &'a str,
        team: &'a str,
        depth: usize,
        caller: Option<(&'a str, &'a str)>,
    },
    StepStarted {
        run: &'a str,
        step: &'a str,
        item: Option<usize>,
        attempt: u32,
        depth: usize,
    },
    StepFinished {
        run: &'a str,
        step: &'a str,
        kind: &'static str,
        item: Option<usize>,
        state: StepState,
        elapsed: Duration,
        error: Option<&'a StepError>,
        depth: usize,
    },
    Log {
        run: &'a str,
        step: &'a str,
        line: &'a LogLine,
        depth: usize,
    },
    /// A plugin invocation of a step attempt, just over (its calls follow as
    /// `Audit`); `error`: what it ended with, if not output.
    Invoked {
        run: &'a str,
        step: &'a str,
        item: Option<usize>,
        plugin: &'a str,
        digest: &'a str,
        elapsed: Duration,
        error: Option<&'a crate::invocation::InvokeError>,
    },
    /// One capability call's audit record (already stored).
    Audit {
        run: &'a str,
        step: &'a str,
        item: Option<usize>,
        record: &'a crate::audit::AuditRecord,
    },
    RunFinished {
        run: &'a str,
        story: &'a str,
        state: RunState,
        elapsed: Duration,
        depth: usize,
    },
}

pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// A run's trace context, when runs are traced (the server's telemetry
/// implements it; its spans come from [`Event`]s): what the engine stores
/// with a run, sends on a step's HTTP, and continues when a run resumes.
pub trait TraceContext: Send + Sync {
    /// The run's `(trace id, span id)`, kept with its record.
    fn trace_of(&self, run: &str) -> Option<(String, String)>;
    /// The W3C `traceparent` of a step's span.
    fn traceparent_of_step(&self, run: &str, step: &str, item: Option<usize>) -> Option<String>;
    /// A resumed run continues the trace it started in.
    fn adopt_earlier(&self, run: &str, trace: &str, span: &str);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}
