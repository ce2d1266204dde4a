//! Source positions. A [`Span`] is a byte range in one file of a
//! [`crate::source::SourceMap`].
//!
//! Spans never take part in equality: two AST or IR values that differ only
//! in where they were written compare equal (so a formatted file parses to
//! the same AST as the original).

use std::cmp::Ordering;

/// Index of a file in a [`crate::source::SourceMap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct FileId(pub u32);

/// A byte range `start..end` in file `file`.
#[derive(Clone, Copy, Debug, Default, Eq, serde::Serialize)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Span { file, start: clamp(start), end: clamp(end) }
    }

    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    /// A setting's span from its name (`self`) to its value: [`Span::to`]
    /// in one file; where the value lies in another (`--set` replaces a
    /// value and keeps the file's name), the value alone.
    pub fn to_value(self, value: Span) -> Span {
        if self.file == value.file {
            self.to(value)
        } else {
            value
        }
    }

    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(self) -> bool {
        self.end == self.start
    }

    /// Position order: file, then start, then end.
    pub fn position_cmp(&self, other: &Span) -> Ordering {
        (self.file, self.start, self.end).cmp(&(other.file, other.start, other.end))
    }
}

/// Spans are ignored by equality (see the module docs).
impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.start as usize, s.len()).into()
    }
}
