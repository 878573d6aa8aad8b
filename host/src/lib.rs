//! warden: run security automation steps as sandboxed WebAssembly components.
//!
//! Follow one invocation through the crate:
//! [`story`] (a step of a story) → [`runtime`] (a fresh store per call, with
//! limits) → [`capability`] (the imports a guest may call: `http`, `smtp`,
//! `log`, `clock`) → each capability's `check` against the [`policy`] → the
//! wire → [`audit`] (what happened, without secrets) → [`store`] (the run's record).
//!
//! Floors, bottom up, each floor below `story` a crate of its own under
//! `host/`: `warden-policy` (the policy, `limits`, `located` — plain
//! configuration data) and `warden-eval` (the template languages) →
//! `warden-sandbox` (`invocation`, `audit`, `recording`, `capability`,
//! `vetting`, `runtime`, `explain`) → `warden-store` (`store`, `approval`) →
//! here: `story` → `tines`, `telemetry` → `server` → `cli` (the binary). An
//! import back up into a lower crate is a compile error; within this crate,
//! `farm-studio look` shows no circle and no arrow back up. The story engine
//! gets trace context through `story::observe::TraceContext`.

// Handlers answer an early refusal as an axum `Response` in `Err` (the idiom
// of the server); it is made once per request and never stored.
#![allow(clippy::result_large_err)]

pub mod server;
pub mod story;
pub mod telemetry;
pub mod tines;

// The floors below are crates of their own (host/policy, host/sandbox,
// host/store): an import back up into them is a compile error.
pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, bindings, capability, explain, invocation, recording, runtime, vetting};
pub use warden_store as store;
pub use warden_store::approval;

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
