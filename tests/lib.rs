//! Helpers shared by the golden and round-trip tests: finding the
//! repository's `.blk` files and rendering what a user would see.
#![forbid(unsafe_code)]

pub mod sim;

use std::path::{Path, PathBuf};

use blkc::diag::render_plain;
use blkc::{Compilation, FsLoader};

/// The repository root (this crate lives in `tests/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.blk` file under `dir` (relative to the repository root),
/// sorted, skipping directories whose name starts with `_` (helpers).
pub fn blk_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(&repo().join(dir), &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('_'));
        if p.is_dir() && !hidden {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "blk") {
            out.push(p);
        }
    }
}

/// The path of `p` relative to the repository root, with `/`.
pub fn rel(p: &Path) -> String {
    let root = repo().canonicalize().unwrap_or_else(|_| repo());
    let abs = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    abs.strip_prefix(&root).unwrap_or(&abs).to_string_lossy().replace('\\', "/")
}

/// Compiles a repository file by its relative path (so file names in
/// diagnostics are stable).
pub fn compile_rel(rel_path: &str) -> Compilation {
    compile_rel_with(rel_path, &[])
}

/// [`compile_rel`] with `--set` pairs.
pub fn compile_rel_with(rel_path: &str, sets: &[String]) -> Compilation {
    let _cwd = CwdGuard::enter(&repo());
    match blkc::compile_with(Path::new(rel_path), &FsLoader, sets) {
        Ok(c) => c,
        Err(why) => panic!("cannot read {rel_path}: {why}"),
    }
}

/// Diagnostics rendered as a user sees them (no colour, width 100).
pub fn rendered(c: &Compilation) -> String {
    render_plain(&c.diagnostics, &c.sources)
}

static CWD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs with the working directory at the repository root (serialised:
/// the working directory is process-wide).
struct CwdGuard {
    _lock: std::sync::MutexGuard<'static, ()>,
    old: PathBuf,
}

impl CwdGuard {
    fn enter(dir: &Path) -> CwdGuard {
        let lock = CWD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        if let Err(e) = std::env::set_current_dir(dir) {
            panic!("cannot enter {}: {e}", dir.display());
        }
        CwdGuard { _lock: lock, old }
    }
}

impl Drop for CwdGuard {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.old);
    }
}

/// Pieces of the language that [`mutate`] inserts.
pub const PIECES: &[&str] = &[
    "(",
    ")",
    "{",
    "}",
    "=",
    "+",
    "*",
    "-",
    "/",
    "^",
    ",",
    "..",
    "\"",
    "#",
    "\n",
    " ",
    "x",
    "out",
    "attn(",
    "softmax",
    "1e999",
    "1e-3",
    "0.5",
    ".5",
    "_a1",
    "= ",
    "param",
    "param g = 1 ",
    "trainable",
    "fixed ",
    "per_head",
    "layer",
    "layer 0 {",
    "layer first, 1..depth-1 ",
    "depth",
    "model",
    "train ",
    "block b ",
    "use \"a.blk\"",
];

/// `text` with random edits, each `(position, length, kind)`: a deletion of
/// up to 7 characters, an insertion of one of [`PIECES`], or a swap of two
/// characters. On characters, so the result is text.
pub fn mutate(text: &str, edits: &[(usize, usize, u8)]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for &(pos, len, op) in edits {
        if s.is_empty() {
            break;
        }
        let at = pos % s.len();
        match op % 3 {
            0 => {
                let end = (at + len % 8).min(s.len());
                s.drain(at..end);
            }
            1 => {
                let piece = PIECES[len % PIECES.len()];
                s.splice(at..at, piece.chars());
            }
            _ => {
                let other = (pos / 7) % s.len();
                s.swap(at, other);
            }
        }
    }
    s.into_iter().collect()
}
