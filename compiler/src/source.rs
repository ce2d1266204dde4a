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
        if is_device(&meta) {
            return Err("it is a device, not a file".into());
        }
        let too_large = || format!("it is larger than the {} KiB limit", MAX_FILE_BYTES / 1024);
        if meta.len() as usize > MAX_FILE_BYTES {
            return Err(too_large());
        }
        // A pipe says no length: read no more than the limit.
        let mut bytes = Vec::new();
        read_pipe_or_file(path, &mut bytes).map_err(|e| io_reason(&e))?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(too_large());
        }
        String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8 text".into())
    }
}

#[cfg(unix)]
fn is_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    t.is_char_device() || t.is_block_device() || t.is_socket()
}

#[cfg(not(unix))]
fn is_device(_: &std::fs::Metadata) -> bool {
    false
}

/// Reads up to one byte past [`MAX_FILE_BYTES`] of `path` into `out`. A
/// named pipe is opened without waiting for a writer (one that has none
/// reads as empty, where a plain open would wait for ever); one whose
/// writer has not written yet is waited for.
fn read_pipe_or_file(path: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::{ErrorKind, Read};
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = options.open(path)?.take(MAX_FILE_BYTES as u64 + 1);
    let mut chunk = [0u8; 1 << 16];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Directory entries read, at most, by [`blk_files`]: a folder as large
/// as a home directory (or `/`) is searched in part, not for minutes.
pub const MAX_ENTRIES: usize = 200_000;

/// The `.blk` files under a folder, as [`blk_files`] finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// In path order (a folder's entries by name, depth first).
    pub files: Vec<PathBuf>,
    /// False when the search stopped at `limit` files or at
    /// [`MAX_ENTRIES`] entries before the end.
    pub complete: bool,
}

/// The `.blk` files under `root` (hidden folders, `target` and
/// `node_modules` left out; links not followed), at most `limit`, in path
/// order; no more than [`MAX_ENTRIES`] entries are read.
pub fn blk_files(root: &Path, limit: usize) -> Found {
    let mut found = Found::default();
    let mut stack = vec![(root.to_path_buf(), true)];
    let mut seen = 0;
    while let Some((path, is_dir)) = stack.pop() {
        if !is_dir {
            if found.files.len() == limit {
                return found;
            }
            found.files.push(normalise(&path));
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        let mut entries: Vec<_> = entries.take(MAX_ENTRIES - seen).filter_map(Result::ok).collect();
        seen += entries.len();
        if seen >= MAX_ENTRIES {
            return found;
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in entries {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && !name.starts_with('.') && name != "target" && name != "node_modules" {
                stack.push((e.path(), true));
            } else if kind.is_file() && name.ends_with(".blk") {
                stack.push((e.path(), false));
            }
        }
    }
    found.complete = true;
    found
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
        let upto = &text[..text.floor_char_boundary(offset as usize)];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blk_files_are_found_in_path_order_without_hidden_or_build_folders() {
        let root = std::env::temp_dir().join(format!("blkc-found-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["a", "b/c", ".git", "target", "node_modules"] {
            std::fs::create_dir_all(root.join(dir)).unwrap_or_else(|e| panic!("{e}"));
        }
        let files = ["a/one.blk", "b/c/two.blk", "b/three.blk", "b/notes.txt", ".git/x.blk", "target/y.blk"];
        for f in files.iter().chain(&["node_modules/z.blk", "b/a.blk"]) {
            std::fs::write(root.join(f), "").unwrap_or_else(|e| panic!("{e}"));
        }
        let rel = |f: Found| -> (Vec<String>, bool) {
            let names = f.files.iter().filter_map(|p| p.strip_prefix(&root).ok()).map(|p| p.display().to_string());
            (names.collect(), f.complete)
        };
        let all = (["a/one.blk", "b/a.blk", "b/c/two.blk", "b/three.blk"].map(String::from).to_vec(), true);
        assert_eq!(rel(blk_files(&root, 10)), all);
        assert_eq!(rel(blk_files(&root, 4)), all, "exactly the limit: complete");
        assert_eq!(rel(blk_files(&root, 2)), (all.0[..2].to_vec(), false), "no more than the limit");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Devices are refused, a pipe is read to its end or to the limit,
    /// and a named pipe without a writer reads as empty: nothing waits
    /// for ever or reads without end.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_files_and_pipes_are_read_and_no_further_than_the_limit() {
        use std::io::Write;
        assert_eq!(FsLoader.load(Path::new("/dev/zero")), Err("it is a device, not a file".into()));
        let dir = std::env::temp_dir().join(format!("blkc-source-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let fifo = dir.join("pipe.blk");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        assert_eq!(FsLoader.load(&fifo), Ok(String::new()), "no writer: empty, at once");
        // A writer that is there but writes later is waited for (opened
        // for reading and writing, it holds the pipe open without a reader).
        let writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo);
        let mut writer = writer.unwrap_or_else(|e| panic!("{e}"));
        let text = "block b { out = x }\n";
        let late = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = writer.write_all(text.as_bytes());
        });
        let read = FsLoader.load(&fifo);
        let _ = late.join();
        assert_eq!(read, Ok(text.to_string()));
        // A writer that sends more than the limit is read no further.
        let writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo);
        let mut writer = writer.unwrap_or_else(|e| panic!("{e}"));
        let flood = std::thread::spawn(move || {
            // What the reader leaves (4 KiB less one byte) fits in the
            // pipe's buffer, so this write returns.
            let _ = writer.write_all(&vec![b'#'; MAX_FILE_BYTES + 4096]);
        });
        assert!(FsLoader.load(&fifo).is_err_and(|e| e.contains("larger than the 1024 KiB limit")));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = flood.join();
    }

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
