#![doc = include_str!("../ARCHITECTURE.md")]
#![forbid(unsafe_code)]

pub mod check;
pub mod diag;
pub mod eval;
pub mod expect;
pub mod fix;
pub mod graph;
pub mod load;
pub mod set;
pub mod signal;
pub mod source;
pub mod span;
pub mod syntax;

use std::path::Path;

pub use diag::{Code, Diagnostic, Severity};
pub use graph::Program;
pub use source::{FsLoader, Loader, MemLoader, SourceMap};

/// The result of compiling one root file.
#[derive(Debug)]
pub struct Compilation {
    pub sources: SourceMap,
    /// Every file that parsed, with its id (files with syntax errors are
    /// missing): what editors resolve names in.
    pub files: Vec<(span::FileId, syntax::ast::File)>,
    /// `Some` when no error was found.
    pub program: Option<Program>,
    /// Every diagnostic, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Compilation {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// `load` → `parse` → `check`: the whole front end. `Err` only when the
/// root file itself cannot be read (the reason, for the caller to show).
pub fn compile(root: &Path, loader: &dyn Loader) -> Result<Compilation, String> {
    compile_with(root, loader, &[])
}

/// [`compile`] with `--set KEY=VALUE` pairs applied before the check
/// (see [`set`]).
pub fn compile_with(root: &Path, loader: &dyn Loader, sets: &[String]) -> Result<Compilation, String> {
    let (mut loaded, mut diags) = load::load(root, loader)?;
    if !sets.is_empty() {
        set::apply(&mut loaded, sets, &mut diags);
    }
    let (program, check_diags) = check::check(&loaded.files, &loaded.unread);
    diags.extend(check_diags);
    let mut all = diag::Diagnostics::default();
    all.extend(diags);
    let diagnostics = all.sorted();
    let program = program.filter(|_| !diagnostics.iter().any(Diagnostic::is_error));
    let files = loaded.ids.into_iter().zip(loaded.files).collect();
    Ok(Compilation { sources: loaded.sources, files, program, diagnostics })
}

/// Compiles one in-memory text (tests, fuzzing, editors).
pub fn compile_str(name: &str, text: &str) -> Compilation {
    let loader = MemLoader::default().with(name, text);
    compile(Path::new(name), &loader).unwrap_or_else(|_| Compilation {
        sources: SourceMap::default(),
        files: Vec::new(),
        program: None,
        diagnostics: Vec::new(),
    })
}
