//! Stories: what a story file says and what a run of it records.
//!
//! A story is one of two kinds ([`story::Body`]): a list of steps, or a
//! graph of agents and the events between them (Tines' model). This crate
//! parses and checks both ([`story::parse`], [`story::Library`]), renders
//! their templates ([`story::template`]), and keeps the record of a run
//! ([`story::recorder`]). Running them is above it: each kind has its own
//! engine (`warden-steps`, `warden-graph`), and `warden-engine` runs a run,
//! handing its body to the engine of its kind through [`story::run::StepRunner`].

pub mod story;

// The floors below are crates of their own: an import back up into them is a
// compile error. Re-exported under the names the modules here use.
pub use warden_policy as policy;
pub use warden_policy::{limits, located};
pub use warden_sandbox::{audit, invocation, recording, runtime};
pub use warden_store as store;
pub use warden_store::approval;
