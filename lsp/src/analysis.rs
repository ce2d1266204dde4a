//! One document analysed as `blkc check` analyses a file: compiled with
//! everything it `use`s, then, when it compiles, the signal check of its
//! model's block (or of each bare block) — the same calls the CLI makes,
//! so the editor shows exactly the CLI's diagnostics.

use std::path::{Path, PathBuf};

use blkc::signal::report::{reports, Report, Request};
use blkc::span::{FileId, Span};
use blkc::{Compilation, Diagnostic};
use lsp_types::{self as lsp, DiagnosticRelatedInformation, DiagnosticSeverity, Location, NumberOrString};

use crate::index::Index;
use crate::text::Lines;
use crate::workspace::{uri_of, Documents, Overlay};

/// What the server is told to analyse with (`initializationOptions` or
/// the `blkc` section of the workspace configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct Options {
    /// Analyse this many stacked blocks instead of the model's depth (as
    /// `blkc check --depth`).
    pub depth: Option<u64>,
    /// Skip the signal check (as `blkc check --syntax-only`).
    pub syntax_only: bool,
}

/// A compiled document with its signal reports and its names.
#[derive(Debug)]
pub struct Analysis {
    pub root: PathBuf,
    pub compilation: Compilation,
    pub reports: Vec<Report>,
    /// The compiler's and the signal check's, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
    pub index: Index,
    /// Analysed without the signal check.
    pub syntax_only: bool,
}

impl Analysis {
    /// Analyses the document at `root`; `None` when it cannot be read.
    pub fn of(root: &Path, docs: &Documents, options: Options) -> Option<Analysis> {
        let compilation = blkc::compile(root, &Overlay(docs)).ok()?;
        let request = Request { depth: options.depth, ..Request::default() };
        let reports = match (&compilation.program, options.syntax_only) {
            (Some(p), false) => reports(p, FileId(0), &request),
            _ => Vec::new(),
        };
        let mut diagnostics = compilation.diagnostics.clone();
        diagnostics.extend(reports.iter().flat_map(|r| r.diagnostics.iter().cloned()));
        diagnostics.sort_by(|a, b| a.span.position_cmp(&b.span));
        let index = Index::build(&compilation.files);
        Some(Analysis {
            root: root.to_path_buf(),
            compilation,
            reports,
            diagnostics,
            index,
            syntax_only: options.syntax_only,
        })
    }

    /// Whether the root file itself parsed (names and spans can be trusted).
    pub fn parsed(&self) -> bool {
        self.compilation.files.iter().any(|(id, _)| *id == FileId(0))
    }

    /// Every file of the compilation, by path.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        (0..self.compilation.sources.len()).map(|i| self.compilation.sources.get(FileId(i as u32)).path.as_path())
    }

    pub fn lines(&self, file: FileId) -> Lines<'_> {
        Lines::new(&self.compilation.sources.get(file).text)
    }

    pub fn range(&self, span: Span) -> lsp::Range {
        self.lines(span.file).range(span.start as usize, span.end as usize)
    }

    pub fn location(&self, span: Span, docs: &Documents) -> Option<Location> {
        let uri = uri_of(&self.compilation.sources.get(span.file).path, docs)?;
        Some(Location::new(uri, self.range(span)))
    }

    /// The file id of a path in this compilation.
    pub fn file(&self, path: &Path) -> Option<FileId> {
        self.compilation.sources.find(path)
    }

    /// The diagnostics to publish for the root document: those in the
    /// root at their place; those in a `use`d file at the `use` that
    /// loads it, with their place as related information.
    ///
    /// As `blkc check`, a diagnostic the file expects (`# blkc: expect
    /// CODE`) is information, not an error, and an expected code that is
    /// not reported is an error on the line that expects it.
    pub fn lsp_diagnostics(&self, docs: &Documents) -> Vec<lsp::Diagnostic> {
        let text = &self.compilation.sources.get(FileId(0)).text;
        let lines = Lines::new(text);
        let line = |n: usize| {
            let start = text.split_inclusive('\n').take(n.saturating_sub(1)).map(str::len).sum::<usize>();
            let end = text[start..].find('\n').map_or(text.len(), |e| start + e);
            lines.range(start, end)
        };
        let error = |range, code: String, message: String| lsp::Diagnostic {
            range,
            severity: Some(DiagnosticSeverity::ERROR),
            code: Some(NumberOrString::String(code)),
            source: Some("blkc".into()),
            message,
            ..lsp::Diagnostic::default()
        };
        let expected = match blkc::expect::expectations(text) {
            Ok(e) => e,
            Err((word, n)) => {
                let why = format!("`# blkc: expect {word}`: `{word}` is not a diagnostic code of blkc");
                return self
                    .diagnostics
                    .iter()
                    .map(|d| self.lsp_diagnostic(d, docs, false))
                    .chain([error(line(n), "expect".into(), why)])
                    .collect();
            }
        };
        let mut out: Vec<lsp::Diagnostic> = self
            .diagnostics
            .iter()
            .map(|d| self.lsp_diagnostic(d, docs, blkc::expect::is_expected(&expected, d)))
            .collect();
        // Without the signal check, its codes cannot be reported, nor expected.
        let outcome = blkc::expect::compare(&expected, &self.diagnostics);
        for code in outcome.unmet {
            if self.syntax_only && code.as_str()[1..].starts_with('3') {
                continue;
            }
            let n = expected.iter().find(|(c, _)| *c == code).map_or(1, |(_, n)| *n);
            let why = format!(
                "the file expects {}, which was not reported (remove the `# blkc: expect` line if it no longer applies)",
                code.as_str()
            );
            out.push(error(line(n), format!("expected {}", code.as_str()), why));
        }
        out
    }

    fn lsp_diagnostic(&self, d: &Diagnostic, docs: &Documents, expected: bool) -> lsp::Diagnostic {
        let here = d.span.file == FileId(0);
        let mut related: Vec<DiagnosticRelatedInformation> = Vec::new();
        let mut relate = |span: Span, message: &str| {
            if let Some(location) = self.location(span, docs) {
                related.push(DiagnosticRelatedInformation { location, message: message.to_string() });
            }
        };
        let range = if here {
            self.range(d.span)
        } else {
            relate(d.span, &d.label);
            self.range(self.use_leading_to(d.span.file).unwrap_or_default())
        };
        for (span, text) in &d.notes {
            relate(*span, text);
        }
        let mut message = d.message.clone();
        if !here {
            let name = &self.compilation.sources.get(d.span.file).name;
            message = format!("in `{name}`: {message}");
        }
        if !d.label.is_empty() && here {
            message.push_str(&format!("\n{}", d.label));
        }
        if !d.help.is_empty() {
            message.push_str(&format!("\nhelp: {}", d.help));
        }
        let severity = if expected {
            message.push_str(&format!("\n(as expected: the file says `# blkc: expect {}`)", d.code.as_str()));
            DiagnosticSeverity::INFORMATION
        } else if d.is_error() {
            DiagnosticSeverity::ERROR
        } else {
            DiagnosticSeverity::WARNING
        };
        lsp::Diagnostic {
            range,
            severity: Some(severity),
            code: Some(NumberOrString::String(d.code.as_str().to_string())),
            code_description: None,
            source: Some("blkc".into()),
            message,
            related_information: (!related.is_empty()).then_some(related),
            tags: None,
            data: None,
        }
    }

    /// The `use` of the root file through which `file` was loaded.
    fn use_leading_to(&self, file: FileId) -> Option<Span> {
        let uses = |id: FileId| -> Vec<(Span, FileId)> {
            let Some((_, f)) = self.compilation.files.iter().find(|(i, _)| *i == id) else { return Vec::new() };
            let dir = self.compilation.sources.get(id).path.parent().map(Path::to_path_buf).unwrap_or_default();
            f.items
                .iter()
                .filter_map(|item| match item {
                    blkc::syntax::ast::Item::Use(u) => {
                        let path = blkc::source::normalise(&dir.join(&u.path.value));
                        Some((u.span, self.compilation.sources.find(&path)?))
                    }
                    _ => None,
                })
                .collect()
        };
        for (span, first) in uses(FileId(0)) {
            let mut seen = vec![first];
            let mut todo = vec![first];
            while let Some(id) = todo.pop() {
                if id == file {
                    return Some(span);
                }
                for (_, next) in uses(id) {
                    if !seen.contains(&next) {
                        seen.push(next);
                        todo.push(next);
                    }
                }
            }
        }
        None
    }
}
