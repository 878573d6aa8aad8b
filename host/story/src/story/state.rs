//! The words a run's record is written in: run states, step states and error
//! kinds as enums, serialized as the strings stored runs and the API have
//! always used (`succeeded`, `invalid-input`, …).

use crate::invocation::InvokeError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Implements `as_str`, `Display`, `Serialize`/`Deserialize` through the
/// strings, and comparison with `&str`, for a fieldless enum.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = String::deserialize(d)?;
                $name::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown {} `{text}`", stringify!($name))))
            }
        }
    };
}

named!(
    /// Where a run is.
    RunState {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Parked for a person's decision (an `approval` step): only rows, no
        /// worker, no instance; woken when the approval is decided or times out.
        Waiting = "waiting",
    }
);

named!(
    /// Where a step (or one item of it) is. `Continued` is what observers
    /// are told of a failed step whose `on_error: continue` let the run go on;
    /// its stored state is `failed`.
    StepState {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Skipped = "skipped",
        Retrying = "retrying",
        Recovered = "recovered",
        Continued = "continued",
        /// An approval step (or a sub-story holding one) waiting for a decision.
        Waiting = "waiting",
    }
);

named!(
    /// Why a step failed; what `retry.on` matches.
    ErrorKind {
        InvalidInput = "invalid-input",
        Denied = "denied",
        Upstream = "upstream",
        Failed = "failed",
        Limit = "limit",
        Trap = "trap",
        Timeout = "timeout",
        Story = "story",
        Template = "template",
        /// A restart cut the step off and its retry policy allowed no other attempt.
        Interrupted = "interrupted",
        /// The run store could not record the run; the run fails rather than go on unrecorded.
        Store = "store",
        /// Not a failure: the run parked at an approval step (it resumes once decided).
        Waiting = "waiting",
    }
);

impl ErrorKind {
    /// The kinds a story may list in `retry.on`.
    pub const RETRYABLE: &'static [ErrorKind] = &[
        ErrorKind::InvalidInput,
        ErrorKind::Denied,
        ErrorKind::Upstream,
        ErrorKind::Failed,
        ErrorKind::Limit,
        ErrorKind::Trap,
        ErrorKind::Timeout,
        ErrorKind::Story,
        ErrorKind::Template,
    ];
}

/// Why a step failed. `kind` is what `retry.on` matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl StepError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StepError {
        StepError { kind, message: message.into(), retry_after_ms: None }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<InvokeError> for StepError {
    fn from(e: InvokeError) -> StepError {
        let kind = match &e {
            InvokeError::InvalidInput { .. } => ErrorKind::InvalidInput,
            InvokeError::Denied { .. } => ErrorKind::Denied,
            InvokeError::Upstream { .. } => ErrorKind::Upstream,
            InvokeError::Failed { .. } | InvokeError::Instantiate { .. } => ErrorKind::Failed,
            InvokeError::Limit { .. } => ErrorKind::Limit,
            InvokeError::Trap { .. } => ErrorKind::Trap,
        };
        let retry_after_ms = match &e {
            InvokeError::Upstream { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        };
        StepError { kind, message: e.to_string(), retry_after_ms }
    }
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub state: RunState,
    pub output: Option<Value>,
    /// The step that failed the run, and why.
    pub failed_step: Option<String>,
    pub error: Option<StepError>,
}

impl RunResult {
    pub fn succeeded(run_id: &str, output: Value) -> RunResult {
        RunResult { run_id: run_id.to_string(), state: RunState::Succeeded, output: Some(output), failed_step: None, error: None }
    }

    pub fn failed(run_id: &str, failed_step: Option<String>, error: StepError) -> RunResult {
        RunResult { run_id: run_id.to_string(), state: RunState::Failed, output: None, failed_step, error: Some(error) }
    }

    /// Parked at `step` (an approval, or a sub-story waiting for one).
    pub fn waiting(run_id: &str, step: Option<String>) -> RunResult {
        RunResult { run_id: run_id.to_string(), state: RunState::Waiting, output: None, failed_step: step, error: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_kinds_keep_their_stored_spelling() {
        assert_eq!(serde_json::to_value(RunState::Succeeded).unwrap(), "succeeded");
        assert_eq!(serde_json::to_value(ErrorKind::InvalidInput).unwrap(), "invalid-input");
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(*k));
        }
        let e: StepError = serde_json::from_value(serde_json::json!({"kind": "upstream", "message": "m"})).unwrap();
        assert_eq!(e.kind, "upstream");
        assert!(serde_json::from_value::<StepError>(serde_json::json!({"kind": "nope", "message": "m"})).is_err());
    }
}
