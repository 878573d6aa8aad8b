//! warden: run security automation steps as sandboxed WebAssembly components.
//!
//! Follow one invocation through the crate:
//! [`story`] (a step of a story) → [`runtime`] (a fresh store per call, with
//! limits) → [`capability`] (the imports a guest may call: `http`, `smtp`,
//! `log`, `clock`) → each capability's `check` against the [`policy`] → the
//! wire → [`audit`] (what happened, without secrets) → [`store`] (the run's record).
//!
//! Floors, bottom up: `warden-policy` (its own crate under `host/policy`:
//! the policy, `limits`, `located` — plain configuration data) and
//! `warden-eval` (the template languages) → `invocation`, `audit`,
//! `bindings`, `recording` → `capability`, `approval`, `vetting` → `runtime`
//! → `store` → `story` → `tines`, `telemetry` → `server` → `cli`. No module
//! imports one above it (`farm-studio look`: no circle, no arrow back up); the
//! story engine gets trace context through `story::observe::TraceContext`.

pub mod approval;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tines;
pub mod story;

// The floors below are crates of their own (host/policy, host/sandbox): an
// import back up into them is a compile error.
pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, bindings, capability, explain, invocation, recording, runtime, vetting};

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
