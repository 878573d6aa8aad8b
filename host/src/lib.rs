//! warden: run security automation steps as sandboxed WebAssembly components.
//!
//! Follow one invocation through the crate:
//! [`story`] (a step of a story) → [`runtime`] (a fresh store per call, with
//! limits) → [`capability`] (the imports a guest may call: `http`, `smtp`,
//! `log`, `clock`) → each capability's `check` against the [`policy`] → the
//! wire → [`audit`] (what happened, without secrets) → [`store`] (the run's record).
//!
//! Floors, bottom up: `limits`, `located` → `policy` → `invocation`, `audit`,
//! `bindings` → `capability`, `vetting` → `runtime` → `store` → `story` → `server`.

pub mod approval;
pub mod audit;
pub mod bindings;
pub mod capability;
pub mod explain;
pub mod invocation;
pub mod limits;
pub mod located;
pub mod policy;
pub mod recording;
pub mod runtime;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tines;
pub mod story;
pub mod vetting;

pub use invocation::{InvocationInfo, InvokeError};
pub use policy::Policy;
pub use runtime::{InvocationReport, Runtime, RuntimeConfig};
