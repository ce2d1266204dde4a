//! Diagnostics: one data type for every stage, rendered by miette.
//!
//! A [`Diagnostic`] has a [`Code`] from the registry, a labelled primary
//! span, a lowercase one-line message with user names in backticks, a help
//! line saying what to do, and optional secondary labels. [`Diagnostics`]
//! collects them and sorts them by position, so a file's problems are
//! reported at once, in reading order.

pub mod codes;

use std::fmt;

use miette::{LabeledSpan, SourceCode};

pub use codes::{Code, Severity};

use crate::source::{SourceFile, SourceMap};
use crate::span::Span;

/// One problem found in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub help: String,
    /// Secondary labels (rendered when in the same file as `span`).
    pub notes: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic { code, message: message.into(), span, label: String::new(), help: String::new(), notes: Vec::new() }
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    pub fn note(mut self, span: Span, text: impl Into<String>) -> Self {
        self.notes.push((span, text.into()));
        self
    }

    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    pub fn is_error(&self) -> bool {
        self.severity() == Severity::Error
    }

    /// Pairs the diagnostic with its source for miette rendering.
    pub fn with_source<'a>(&'a self, sources: &'a SourceMap) -> Rendered<'a> {
        Rendered { diag: self, source: sources.get(self.span.file) }
    }
}

/// Every diagnostic of one compilation.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(ds);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorted by position (file, then offset), duplicates removed.
    pub fn sorted(&self) -> Vec<Diagnostic> {
        let mut v = self.items.clone();
        v.sort_by(|a, b| a.span.position_cmp(&b.span).then(a.code.cmp(&b.code)));
        v.dedup_by(|a, b| a.code == b.code && a.span.position_cmp(&b.span).is_eq() && a.message == b.message);
        v
    }
}

/// A diagnostic joined to its source file, as miette wants it.
#[derive(Debug)]
pub struct Rendered<'a> {
    diag: &'a Diagnostic,
    source: &'a SourceFile,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code.as_str()))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity() {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        (!self.diag.help.is_empty()).then(|| Box::new(&self.diag.help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let d = self.diag;
        let primary = LabeledSpan::new_primary_with_span((!d.label.is_empty()).then(|| d.label.clone()), d.span);
        let notes = d
            .notes
            .iter()
            .filter(|(s, _)| s.file == d.span.file)
            .map(|(s, t)| LabeledSpan::new_with_span(Some(t.clone()), *s));
        Some(Box::new(std::iter::once(primary).chain(notes)))
    }
}

/// Renders diagnostics as plain text (no colour), for snapshots and logs.
#[cfg(feature = "render")]
pub fn render_plain(diags: &[Diagnostic], sources: &SourceMap) -> String {
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    for d in diags {
        // Writing to a String cannot fail.
        let _ = handler.render_report(&mut out, &d.with_source(sources));
    }
    out
}

/// "did you mean" help for a misspelt name, if a candidate is close enough.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}
