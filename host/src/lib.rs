//! warden: run security automation steps as sandboxed WebAssembly components.
//!
//! Follow one invocation through the crate:
//! [`story`] (a step of a story) → [`runtime`] (a fresh store per call, with
//! limits) → [`capability`] (the imports a guest may call: `http`, `smtp`,
//! `log`, `clock`) → each capability's `check` against the [`policy`] → the
//! wire → [`audit`] (what happened, without secrets) → [`store`] (the run's record).
//!
//! Floors, bottom up, each a crate of its own under `host/`:
//! `warden-policy` (the policy, `limits`, `located` — plain configuration
//! data) and `warden-eval` (the template languages) → `warden-sandbox`
//! (`invocation`, `audit`, `recording`, `capability`, `vetting`, `runtime`,
//! `explain`) → `warden-store` (`store`, `approval`) → `warden-story` (story
//! files of both kinds, templates, the run's record) → the engines of the two
//! story kinds, side by side: `warden-steps` (steps in order) and
//! `warden-graph` (agents and events, Liquid and formulas) → `warden-engine`
//! (`story::engine`: a run's lifecycle and each step it runs) →
//! `warden-tines` (`tines`) and `warden-server` (`server`, `telemetry`) → this
//! crate (the binary, `cli`). An import back up into a lower crate is a
//! compile error. The engine gets trace context through
//! `story::observe::TraceContext`.

// Each floor is a crate of its own under `host/`: an import back up into a
// lower one is a compile error. This crate (the `warden` binary's library)
// re-exports them under the names the command line, the tests and the
// benchmarks use.
pub use warden_engine::story;
pub use warden_graph as graph;
pub use warden_server::{server, telemetry};
pub use warden_tines::tines;

pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, bindings, capability, explain, invocation, recording, runtime, vetting};
pub use warden_store as store;
pub use warden_store::approval;

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
