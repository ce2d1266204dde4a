//! The open documents and how the compiler reads files: an open
//! document's text as the editor holds it (saved or not), any other file
//! from disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blkc::source::normalise;
use blkc::{FsLoader, Loader};
use lsp_types::Url;

/// One open document.
#[derive(Debug, Clone)]
pub struct Document {
    pub uri: Url,
    pub text: String,
    pub version: i32,
}

/// Every open document, by normalised path.
#[derive(Debug, Default, Clone)]
pub struct Documents {
    open: BTreeMap<PathBuf, Document>,
}

impl Documents {
    pub fn open(&mut self, doc: Document) -> PathBuf {
        let path = path_of(&doc.uri);
        self.open.insert(path.clone(), doc);
        path
    }

    pub fn close(&mut self, uri: &Url) -> Option<Document> {
        self.open.remove(&path_of(uri))
    }

    pub fn get(&self, path: &Path) -> Option<&Document> {
        self.open.get(path)
    }

    pub fn get_mut(&mut self, path: &Path) -> Option<&mut Document> {
        self.open.get_mut(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.open.keys()
    }
}

/// The path the compiler knows a document by: the file's, for `file:`
/// URIs; the URI itself for others (an unsaved buffer), which then
/// resolves its `use`s against nothing but other open documents.
pub fn path_of(uri: &Url) -> PathBuf {
    match uri.to_file_path() {
        Ok(p) => normalise(&p),
        Err(()) => PathBuf::from(uri.as_str()),
    }
}

/// The URI of a path the compiler reported.
pub fn uri_of(path: &Path, docs: &Documents) -> Option<Url> {
    if let Some(d) = docs.get(path) {
        return Some(d.uri.clone());
    }
    Url::from_file_path(path).ok()
}

/// Open documents first, then the disk.
#[derive(Debug)]
pub struct Overlay<'a>(pub &'a Documents);

impl Loader for Overlay<'_> {
    fn load(&self, path: &Path) -> Result<String, String> {
        match self.0.get(&normalise(path)) {
            Some(d) => Ok(d.text.clone()),
            None => FsLoader.load(path),
        }
    }
}

/// Directory entries looked at, at most, by [`blk_files`]: a folder as
/// large as a home directory (or `/`) is searched in part, not for minutes.
pub const MAX_ENTRIES: usize = 200_000;

/// The `.blk` files under `root` (hidden folders, `target` and
/// `node_modules` left out), at most `limit`, in a stable order; no more
/// than [`MAX_ENTRIES`] entries are read.
pub fn blk_files(root: &Path, limit: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.take(MAX_ENTRIES - seen).filter_map(Result::ok).collect();
        seen += entries.len();
        if seen >= MAX_ENTRIES {
            return out;
        }
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    dirs.push(e.path());
                }
            } else if kind.is_file() && name.ends_with(".blk") {
                out.push(normalise(&e.path()));
                if out.len() >= limit {
                    return out;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blk_files_are_found_in_order_without_hidden_or_build_folders() {
        let root = std::env::temp_dir().join(format!("blkc-ws-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["a", "b/c", ".git", "target", "node_modules"] {
            std::fs::create_dir_all(root.join(dir)).unwrap_or_else(|e| panic!("{e}"));
        }
        for f in [
            "a/one.blk",
            "b/c/two.blk",
            "b/three.blk",
            "b/notes.txt",
            ".git/x.blk",
            "target/y.blk",
            "node_modules/z.blk",
        ] {
            std::fs::write(root.join(f), "").unwrap_or_else(|e| panic!("{e}"));
        }
        let rel = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter().filter_map(|p| p.strip_prefix(&root).ok()).map(|p| p.display().to_string()).collect()
        };
        let all = rel(blk_files(&root, 10));
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, ["a/one.blk", "b/c/two.blk", "b/three.blk"]);
        assert_eq!(rel(blk_files(&root, 2)).len(), 2, "no more than the limit");
        let _ = std::fs::remove_dir_all(&root);
    }
}
