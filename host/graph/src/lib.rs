//! The graph engine: runs graph stories ([`Body::Graph`], Tines' model of
//! agents and the events between them), a sibling of the step engine
//! (`warden-steps`); neither knows the other.
//!
//! [`engine`] takes events one at a time in the order emitted (so a run is
//! deterministic and resumes from its record); [`evaluate`] renders agents'
//! options in Tines' Liquid or its formulas, in the sandboxed evaluator.
//! Actions, emails and sub-stories are run by the run's engine through
//! [`StepRunner`](warden_story::story::run::StepRunner), under the policy like any step.
//!
//! [`Body::Graph`]: warden_story::story::Body::Graph

pub mod engine;
pub mod evaluate;

pub use engine::run;
pub use evaluate::{render, run_globals, webhook_response};
