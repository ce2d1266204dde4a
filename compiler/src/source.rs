//! The files of one compilation and how they are read.
//!
//! The compiler never touches the filesystem itself: a [`Loader`] supplies
//! file contents, so the runtime reads from disk and tests from memory.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use miette::{MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

use crate::span::FileId;

/// Largest source file accepted, in bytes (a resource limit, not a parse
/// limit: bigger files are rejected before parsing).
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Reads the text of a file named by a (normalised) path.
pub trait Loader {
    fn load(&self, path: &Path) -> Result<String, String>;
}

/// Reads files from disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsLoader;

impl Loader for FsLoader {
    fn load(&self, path: &Path) -> Result<String, String> {
        let meta = std::fs::metadata(path).map_err(|e| io_reason(&e))?;
        if meta.is_dir() {
            return Err("it is a directory".into());
        }
        if meta.len() as usize > MAX_FILE_BYTES {
            return Err(format!("it is larger than the {} KiB limit", MAX_FILE_BYTES / 1024));
        }
        let bytes = std::fs::read(path).map_err(|e| io_reason(&e))?;
        String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8 text".into())
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Files held in memory, for tests and tools.
#[derive(Debug, Default, Clone)]
pub struct MemLoader {
    pub files: HashMap<PathBuf, String>,
}

impl MemLoader {
    pub fn with(mut self, path: &str, text: &str) -> Self {
        self.files.insert(normalise(Path::new(path)), text.to_string());
        self
    }
}

impl Loader for MemLoader {
    fn load(&self, path: &Path) -> Result<String, String> {
        self.files.get(&normalise(path)).cloned().ok_or_else(|| "no such file".into())
    }
}

/// Removes `.` and resolves `..` lexically (no filesystem access). A `..`
/// cancels the name before it, never another `..` (so `../../a` keeps
/// both), and stops at the root (`/..` is `/`).
pub fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// One source file: its display name and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
    pub text: Arc<str>,
}

impl SourceCode for SourceFile {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self.text.as_ref().read_span(span, before, after)?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// All files of one compilation, indexed by [`FileId`].
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, name: &str, path: PathBuf, text: &str) -> FileId {
        self.files.push(SourceFile { name: name.to_string(), path, text: Arc::from(text) });
        FileId((self.files.len() - 1) as u32)
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn find(&self, path: &Path) -> Option<FileId> {
        self.files.iter().position(|f| f.path == path).map(|i| FileId(i as u32))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, id: FileId, offset: u32) -> (usize, usize) {
        let text = &self.get(id).text;
        let mut end = (offset as usize).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let upto = &text[..end];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalise(Path::new(p)).display().to_string()
    }

    #[test]
    fn parent_steps_cancel_names_not_each_other() {
        assert_eq!(n("../../blocks/sas-p.blk"), "../../blocks/sas-p.blk");
        assert_eq!(n("../../../blocks/preln.blk"), "../../../blocks/preln.blk");
        assert_eq!(n("./sas-p.blk"), "sas-p.blk");
        assert_eq!(n("a/b/../../c"), "c");
        assert_eq!(n("a/../../c"), "../c");
        assert_eq!(n("examples/small/../../blocks/x.blk"), "blocks/x.blk");
        assert_eq!(n("/../x"), "/x");
        assert_eq!(n("/a/./b/.."), "/a");
    }
}
