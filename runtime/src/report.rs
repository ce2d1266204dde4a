//! Printing diagnostics for people (miette, coloured on a terminal) and for
//! tools (JSON lines, GitHub workflow annotations).

use std::io::IsTerminal;

use blkc::diag::Severity;
use blkc::{Diagnostic, SourceMap};
use serde::Serialize;

/// How diagnostics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiagFormat {
    Human,
    Json,
    Github,
}

/// Prints diagnostics to stderr (human) or stdout (json, github).
pub fn print(diags: &[Diagnostic], sources: &SourceMap, format: DiagFormat) {
    match format {
        DiagFormat::Human => err!("{}", human(diags, sources, std::io::stderr().is_terminal())),
        DiagFormat::Json => {
            for d in diags {
                outln!("{}", serde_json::to_string(&record(d, sources)).unwrap_or_default());
            }
        }
        DiagFormat::Github => {
            for d in diags {
                outln!("{}", github(d, sources));
            }
        }
    }
}

/// The compiler's rendering (header, snippet, help), coloured when `colour`.
pub fn human(diags: &[Diagnostic], sources: &SourceMap, colour: bool) -> String {
    blkc::diag::render(diags, sources, colour)
}

/// One diagnostic as a stable JSON record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub code: &'a str,
    pub severity: Severity,
    pub message: &'a str,
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub label: &'a str,
    pub help: &'a str,
}

pub fn record<'a>(d: &'a Diagnostic, sources: &'a SourceMap) -> Record<'a> {
    let (line, column) = sources.line_col(d.span.file, d.span.start);
    let (end_line, end_column) = sources.line_col(d.span.file, d.span.end);
    Record {
        code: d.code.as_str(),
        severity: d.severity(),
        message: &d.message,
        file: &sources.get(d.span.file).name,
        line,
        column,
        end_line,
        end_column,
        label: &d.label,
        help: &d.help,
    }
}

/// A GitHub Actions workflow command (`::error file=…::message`).
pub fn github(d: &Diagnostic, sources: &SourceMap) -> String {
    let r = record(d, sources);
    let level = if d.is_error() { "error" } else { "warning" };
    let esc = |s: &str| s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
    let prop = |s: &str| esc(s).replace(':', "%3A").replace(',', "%2C");
    format!(
        "::{level} file={},line={},col={},endLine={},endColumn={},title={}::{} (help: {})",
        prop(r.file),
        r.line,
        r.column,
        r.end_line,
        r.end_column,
        prop(r.code),
        esc(r.message),
        esc(r.help)
    )
}

/// Counts of errors and warnings, for the summary line.
pub fn counts(diags: &[Diagnostic]) -> (usize, usize) {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    (errors, diags.len() - errors)
}

pub fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
