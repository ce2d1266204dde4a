//! Loading a file and everything it `use`s: files are parsed once each, in
//! depth-first order, with `use` cycles and unreadable files reported at
//! the `use` that names them.

use std::path::{Path, PathBuf};

use crate::diag::{Code, Diagnostic};
use crate::source::{normalise, Loader, SourceMap, MAX_FILE_BYTES};
use crate::span::{FileId, Span};
use crate::syntax::ast::{File, Item};
use crate::syntax::parse;

/// Most files one compilation may load.
pub const MAX_FILES: usize = 256;

/// Every file of a compilation, parsed (files with syntax errors are left
/// out of `files`; their diagnostics are in the returned list).
#[derive(Debug, Default)]
pub struct Loaded {
    pub sources: SourceMap,
    pub files: Vec<File>,
    /// The file of each entry of `files`.
    pub ids: Vec<FileId>,
    /// Each `use` whose file was not loaded (unreadable, too large or with
    /// syntax errors, each reported at its place): a name the program
    /// misses may be defined there.
    pub unread: Vec<Span>,
}

/// Loads `root` (read failures of the root itself are the caller's to
/// report: `Err(reason)`).
pub fn load(root: &Path, loader: &dyn Loader) -> Result<(Loaded, Vec<Diagnostic>), String> {
    let text = loader.load(root)?;
    let mut cx = Cx { loader, loaded: Loaded::default(), diags: Vec::new(), stack: Vec::new() };
    let path = normalise(root);
    cx.file(&root.display().to_string(), path, &text);
    Ok((cx.loaded, cx.diags))
}

/// Parses one in-memory text with no `use` resolution (for `fmt`).
pub fn load_text(name: &str, text: &str) -> (SourceMap, Result<File, Vec<Diagnostic>>) {
    let mut sources = SourceMap::default();
    let id = sources.add(name, PathBuf::from(name), text);
    (sources, parse(id, text))
}

struct Cx<'a> {
    loader: &'a dyn Loader,
    loaded: Loaded,
    diags: Vec<Diagnostic>,
    stack: Vec<PathBuf>,
}

impl Cx<'_> {
    /// Loads one file and what it uses; `false` when it could not be
    /// parsed (its definitions are missing).
    fn file(&mut self, name: &str, path: PathBuf, text: &str) -> bool {
        let id = self.loaded.sources.add(name, path.clone(), text);
        if text.len() > MAX_FILE_BYTES {
            self.diags.push(
                Diagnostic::new(
                    Code::E1007,
                    Span::new(id, 0, 0),
                    format!("file is larger than {} KiB", MAX_FILE_BYTES / 1024),
                )
                .label("file starts here")
                .help("a .blk file describes a block and a model; split generated content out"),
            );
            return false;
        }
        let file = match parse(id, text) {
            Ok(f) => f,
            Err(ds) => {
                self.diags.extend(ds);
                return false;
            }
        };
        self.stack.push(path.clone());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for item in &file.items {
            if let Item::Use(u) = item {
                self.use_file(&dir, &u.path.value, u.span);
            }
        }
        self.stack.pop();
        self.loaded.files.push(file);
        self.loaded.ids.push(id);
        true
    }

    fn use_file(&mut self, dir: &Path, rel: &str, span: Span) {
        let path = normalise(&dir.join(rel));
        if let Some(i) = self.stack.iter().position(|p| *p == path) {
            let chain: Vec<String> = self.stack[i..].iter().chain([&path]).map(|p| p.display().to_string()).collect();
            self.diags.push(
                Diagnostic::new(Code::E2011, span, format!("`use` cycle: {}", chain.join(" → ")))
                    .label("this `use` closes the cycle")
                    .help("move the shared definitions into a file that neither uses"),
            );
            return;
        }
        if self.loaded.sources.find(&path).is_some() {
            return;
        }
        if self.loaded.sources.len() >= MAX_FILES {
            self.diags.push(
                Diagnostic::new(Code::E2016, span, format!("more than {MAX_FILES} files are used"))
                    .label("one file too many")
                    .help("a program may load at most this many files"),
            );
            return;
        }
        let loaded = match self.loader.load(&path) {
            Ok(text) => self.file(&path.display().to_string(), path, &text),
            Err(why) => {
                self.diags.push(
                    Diagnostic::new(Code::E2012, span, format!("cannot read `{}`: {why}", path.display()))
                        .label("used here")
                        .help("paths in `use` are relative to the file that contains the `use`"),
                );
                false
            }
        };
        if !loaded {
            self.loaded.unread.push(span);
        }
    }
}
