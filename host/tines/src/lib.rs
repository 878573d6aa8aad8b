//! Tines import and export: reads a Tines story export and writes graph
//! stories (with their credentials moved out to the policy), above the story
//! engine that runs them.

pub mod tines;

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
