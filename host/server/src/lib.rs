//! `warden serve`: webhooks, schedules, the run API, approvals pages, Slack,
//! the web console, the run queue (one node or a cluster) and the telemetry
//! wiring — above the story engine, which it drives.

// Handlers answer an early refusal as an axum `Response` in `Err` (the idiom
// of the server); it is made once per request and never stored.
#![allow(clippy::result_large_err)]

pub mod server;
pub mod telemetry;

pub use warden_engine::story;
// The floors below are crates of their own: an import back up into them is a
// compile error. Re-exported under the names the modules here use.
pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, bindings, capability, explain, invocation, recording, runtime, vetting};
pub use warden_store as store;
pub use warden_store::approval;

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
