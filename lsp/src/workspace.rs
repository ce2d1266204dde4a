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
