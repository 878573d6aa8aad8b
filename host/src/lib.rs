//! warden: run security automation steps as sandboxed WebAssembly components.
//!
//! Follow one invocation through the crate:
//! [`policy`] (what the operator granted) → [`runtime`] (a fresh store per call,
//! with limits) → `runtime::host` (the capability imports) → [`egress`] (the
//! layered checks and the wire) → [`audit`] (what happened, without secrets).

pub mod audit;
pub mod egress;
pub mod limits;
pub mod located;
pub mod mail;
pub mod policy;
pub mod runtime;
pub mod server;
pub mod store;
pub mod story;
pub mod vetting;

pub use policy::Policy;
pub use runtime::{InvocationInfo, InvocationReport, InvokeError, Runtime, RuntimeConfig};
