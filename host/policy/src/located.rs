//! An error in an operator's or author's file: `file:line: what; the fix`,
//! always on one line (a value quoted from the file may hold newlines).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: String,
    pub line: u64,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message.replace('\r', "\\r").replace('\n', "\\n"))
    }
}

impl std::error::Error for Located {}
