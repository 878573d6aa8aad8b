//! The story engine: story files, their templates and transforms, and the
//! engine that runs a story's steps (and today's `graph:` mode) against the
//! sandbox and records every part in the run store.
//!
//! One run's path through this crate: [`story::library`] (the loaded
//! stories) → [`story::engine`] (`Engine::submit` / `run`: steps in order,
//! conditions, retries, `for_each`, sub-stories, approvals) →
//! [`story::invoke`] (the seam to the sandbox's runtime) → [`story::recorder`]
//! (the run's record, through the store's group commit). It knows nothing of
//! the server, Tines or telemetry above it: trace context comes through
//! [`story::observe::TraceContext`], the link base from its caller.

pub mod story;

// The floors below are crates of their own: an import back up into them is a
// compile error. Re-exported under the names the modules here use.
pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, bindings, capability, explain, invocation, recording, runtime, vetting};
pub use warden_store as store;
pub use warden_store::approval;

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
