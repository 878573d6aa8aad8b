//! The run engine: accepts a run, runs it, resumes it after a restart or
//! an approval, and replays it from its recordings.
//!
//! One run's path through this crate: [`story::engine`] (`StoryRunner::accept` /
//! `execute`: the run's lifecycle) hands the story's body to the engine of
//! its kind — `warden-steps` (steps in order) or `warden-graph` (agents and
//! events) — which asks back for each step through
//! [`story::run::StepRunner`]: its retries and timeout, then an action
//! through [`story::invoke`] (the seam to the sandbox's runtime), a
//! sub-story as its own run, or an approval. Every part is written through
//! [`story::recorder`] (the store's group commit). It knows nothing of the
//! server, Tines or telemetry above it: trace context comes through
//! [`story::observe::TraceContext`], the link base from its caller.

pub mod story;

// The floors below are crates of their own: an import back up into them is a
// compile error. Re-exported under the names the modules here use.
pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, bindings, capability, explain, invocation, recording, runtime, vetting};
pub use warden_store as store;
pub use warden_store::approval;
pub use warden_story::story::run;

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
