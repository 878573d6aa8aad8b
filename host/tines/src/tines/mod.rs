//! Tines story exports in warden: `warden tines import` turns an export into
//! graph stories ([`crate::story::graph`]), a policy skeleton and a report;
//! `warden tines run` imports in memory and runs. Credentials that an export
//! templated into requests become host-injected policy credentials.
//!
//! export.rs reads the export (every schema's fields, unknown ones kept for
//! the report) → import.rs converts agents and links, moves credentials out,
//! collects grants → liquid.rs renders Tines' templates at run time.

pub mod export;
pub mod import;
/// Tines' Liquid and formulas: parsed here for checks, rendered only by the
/// sandboxed evaluator ([`crate::runtime::evaluator`]).
pub use warden_eval::{formula, liquid};

use crate::story::{Library, StoryErrors};
use std::path::Path;
use std::sync::Arc;

/// The imported stories as a library, parsed exactly as their files would
/// be (each named `<dir>/<story>.yaml` in messages).
pub fn library(imported: &import::Imported, dir: &Path) -> Result<Library, StoryErrors> {
    let mut lib = Library::default();
    let mut errors = Vec::new();
    for (file, text) in import::story_files(imported) {
        match crate::story::parse(&text, &dir.join(&file)) {
            Ok(s) => {
                lib.stories.insert(s.name.clone(), Arc::new(s));
            }
            Err(StoryErrors(e)) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(lib)
    } else {
        Err(StoryErrors(errors))
    }
}
