//! warden's sandbox: a step's plugin runs here as a WebAssembly component,
//! reaching nothing but what its grant allows.
//!
//! One invocation: [`runtime`] (a fresh instance per call, with the grant's
//! limits; templates render in the [`runtime::evaluator`] guest) →
//! [`capability`] (the imports a guest may call — `http`, `smtp`, `log`,
//! `clock` — each checked against the [`policy`], then the wire) → [`audit`]
//! (what happened, without secrets) and [`recording`] (every byte exchanged,
//! to replay). [`vetting`] says whom a plugin's bytes are trusted by,
//! [`explain`] how a grant reads to a person. [`invocation`] is the
//! vocabulary they all speak.
//!
//! Floors, bottom up: `warden-policy` → `invocation`, `bindings` → `audit`,
//! `recording` → `capability`, `vetting` → `runtime`, `explain`. It knows
//! nothing of stories, the run store or the server (they build on it).

pub mod audit;
pub mod bindings;
pub mod capability;
pub mod explain;
pub mod invocation;
pub mod recording;
pub mod runtime;
pub mod vetting;

// The policy, under the names the modules here use for it.
pub use warden_policy as policy;
pub use warden_policy::limits;

pub use invocation::{InvocationInfo, InvokeError};
