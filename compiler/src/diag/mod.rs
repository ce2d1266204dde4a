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
    /// Secondary labels: beside the primary one in its file's snippet, or
    /// in a snippet of their own file below it (a value set on the command
    /// line, a definition in a `use`d file).
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
        Rendered { diag: self, source: sources.get(self.span.file), snippet_only: false, no_help: false }
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
    /// Without code and message: the snippet under a header of our own.
    snippet_only: bool,
    /// Without the help (it follows the snippets of notes in other files).
    no_help: bool,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.snippet_only {
            return Ok(());
        }
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        (!self.snippet_only).then(|| Box::new(self.diag.code.as_str()) as Box<dyn fmt::Display>)
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity() {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        (!self.no_help && !self.diag.help.is_empty()).then(|| Box::new(&self.diag.help) as Box<dyn fmt::Display>)
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
    render(diags, sources, false)
}

/// Renders diagnostics as people read them, in the one header style of
/// every blkc error (`error[E2001]: unknown name …`, as rustc writes
/// them), then the source snippet with its labels and the help (miette's).
#[cfg(feature = "render")]
pub fn render(diags: &[Diagnostic], sources: &SourceMap, colour: bool) -> String {
    let theme = if colour { miette::GraphicalTheme::unicode() } else { miette::GraphicalTheme::unicode_nocolor() };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    let mut out = String::new();
    for d in diags {
        out.push_str(&header(d, colour));
        out.push('\n');
        // Notes in other files: a snippet of each file, in the order the
        // files first appear among the notes, the help below the last.
        let mut files: Vec<crate::span::FileId> = Vec::new();
        for (s, _) in &d.notes {
            if s.file != d.span.file && !files.contains(&s.file) {
                files.push(s.file);
            }
        }
        let primary =
            Rendered { diag: d, source: sources.get(d.span.file), snippet_only: true, no_help: !files.is_empty() };
        out.push_str(&snippet(&handler, &primary));
        for (i, &file) in files.iter().enumerate() {
            let help = i + 1 == files.len();
            out.push_str(&snippet(&handler, &Elsewhere { diag: d, source: sources.get(file), file, help }));
        }
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
    }
    out
}

/// One report as miette draws it, without its first line (the icon of
/// the empty message: our header is above).
#[cfg(feature = "render")]
fn snippet(handler: &miette::GraphicalReportHandler, report: &dyn miette::Diagnostic) -> String {
    let mut body = String::new();
    // Writing to a String cannot fail.
    let _ = handler.render_report(&mut body, report);
    let body = body.trim_start_matches('\n');
    body.split_once('\n').map_or("", |(_, rest)| rest).to_string()
}

/// The notes of a diagnostic that lie in another file than its primary
/// span, as a snippet of that file (no header: the diagnostic's is above).
#[cfg(feature = "render")]
#[derive(Debug)]
struct Elsewhere<'a> {
    diag: &'a Diagnostic,
    source: &'a SourceFile,
    file: crate::span::FileId,
    /// The diagnostic's help goes below this snippet (the last one).
    help: bool,
}

#[cfg(feature = "render")]
impl fmt::Display for Elsewhere<'_> {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

#[cfg(feature = "render")]
impl std::error::Error for Elsewhere<'_> {}

#[cfg(feature = "render")]
impl miette::Diagnostic for Elsewhere<'_> {
    fn severity(&self) -> Option<miette::Severity> {
        Some(miette::Severity::Advice)
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        (self.help && !self.diag.help.is_empty()).then(|| Box::new(&self.diag.help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let here = self.diag.notes.iter().filter(|(s, _)| s.file == self.file);
        Some(Box::new(here.map(|(s, t)| LabeledSpan::new_with_span(Some(t.clone()), *s))))
    }
}

/// `error[E2001]: message` (bold and coloured on a terminal).
#[cfg(feature = "render")]
fn header(d: &Diagnostic, colour: bool) -> String {
    let (kind, ansi) = match d.severity() {
        Severity::Error => ("error", "31"),
        Severity::Warning => ("warning", "33"),
    };
    if colour {
        format!("\x1b[1;{ansi}m{kind}[{}]\x1b[0m\x1b[1m: {}\x1b[0m", d.code.as_str(), d.message)
    } else {
        format!("{kind}[{}]: {}", d.code.as_str(), d.message)
    }
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
