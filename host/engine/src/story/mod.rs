//! Stories as this crate sees them: everything of [`warden_story::story`]
//! (the model, templates, the record), plus what runs them here.

pub use warden_story::story::*;

pub mod engine;
pub mod invoke;
pub mod replay;

#[cfg(test)]
mod tests;
