//! Training text: where it comes from (a directory, a file, a glob, or the
//! named corpus `python-stdlib`), which files are kept, and the
//! deterministic split of documents into training and validation. A file
//! is a document, except a JSON-lines file (`.jsonl`, `.ndjson`), whose
//! every record is one: the string in its text field (`data_field`,
//! default `text`); and a text file over 64 MiB, whose every piece of
//! about a mebibyte is one (`pieces.rs`). A gzip file (`.gz`) is read as
//! the file it holds (`c4.json.gz` as `c4.json`), decompressed in memory.

use std::path::{Path, PathBuf};

pub use super::plan::{plan, Plan, Sample};

/// The named corpus of Python's standard library sources.
pub const PYTHON_STDLIB: &str = "python-stdlib";

/// A text file is one document up to this size, read whole; a larger one
/// is read in pieces of about a mebibyte, each a document (`pieces.rs`).
/// JSON-lines files, often gigabytes of records, are read a line at a time
/// whatever their size (`lines.rs`).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Files per corpus, at most (a glob over `/` must not exhaust memory).
const MAX_FILES: usize = 1_000_000;

/// One text file of the corpus.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Path relative to the corpus root (what the split hashes).
    pub name: String,
    pub text: String,
}

/// Why files were left out, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub not_utf8: usize,
    pub empty: usize,
    pub unreadable: usize,
    pub too_large: usize,
    /// Devices, pipes, sockets (directly or behind a link): never read.
    pub not_regular: usize,
    /// JSON-lines records that are not objects with a text field.
    pub bad_records: usize,
}

impl Skipped {
    fn count(&mut self, why: Skip) {
        match why {
            Skip::NotUtf8 => self.not_utf8 += 1,
            Skip::Empty => self.empty += 1,
            Skip::Unreadable => self.unreadable += 1,
            Skip::TooLarge => self.too_large += 1,
            Skip::NotRegular => self.not_regular += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.not_utf8 + self.empty + self.unreadable + self.too_large + self.not_regular + self.bad_records
    }

    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.not_utf8, "not UTF-8"),
            (self.empty, "empty"),
            (self.unreadable, "unreadable"),
            (self.too_large, "too large to read"),
            (self.not_regular, "not regular files"),
            (self.bad_records, "JSON lines without their text field"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A corpus split by file.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// What was asked for (`python-stdlib`, a path or a glob).
    pub source: String,
    /// The directory the file names are relative to.
    pub root: PathBuf,
    pub train: Vec<Doc>,
    pub valid: Vec<Doc>,
    pub skipped: Skipped,
    /// Pre-tokenised data (`super::token_files`): read with the tokenizer,
    /// which gives the end-of-text id; then `train` and `valid` are empty.
    pub token_files: Vec<PathBuf>,
    pub holdout: Holdout,
}

/// Which documents validate: a share of them, picked by the hash of their
/// names ([`in_validation`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    pub fraction: f64,
    /// The hash ([`Settings::split_hash`](super::settings::Settings)): 2,
    /// mixed; 1, as runs recorded before 2 split their data.
    pub hash: u64,
}

impl Holdout {
    /// The hash new runs split by.
    pub const HASH: u64 = 2;

    /// A run's holdout.
    pub fn of(s: &super::settings::Settings) -> Self {
        Holdout { fraction: s.val_fraction, hash: s.split_hash }
    }
}

/// A share of the documents, by the hash new runs split by.
impl From<f64> for Holdout {
    fn from(fraction: f64) -> Self {
        Holdout { fraction, hash: Self::HASH }
    }
}

impl Corpus {
    pub fn bytes(&self) -> usize {
        self.train.iter().chain(&self.valid).map(|d| d.text.len()).sum()
    }

    /// A 64-bit fingerprint of the training split (names and contents):
    /// the key under which tokenizers and token streams are cached.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for d in &self.train {
            h.write(d.name.as_bytes());
            h.write(&[0]);
            h.write(d.text.as_bytes());
            h.write(&[0]);
        }
        h.finish()
    }
}

/// FNV-1a, 64 bit: a stable hash (the same on every machine and build).
#[derive(Debug)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Loads the corpus named by `source` and splits it: a file goes to
/// validation when the hash of its relative name falls below
/// `val_fraction` (so the split does not depend on which other files
/// exist). At least one file goes to each side when there are two or more.
pub fn load(source: &str, holdout: impl Into<Holdout>, field: &str) -> Result<Corpus, String> {
    let holdout = holdout.into();
    let (root, files) = find(source)?;
    if let Some(files) = tokenised(&files) {
        let empty = Vec::new;
        return Ok(Corpus {
            source: source.to_string(),
            root,
            train: empty(),
            valid: empty(),
            skipped: Skipped::default(),
            token_files: files,
            holdout,
        });
    }
    let mut docs = Vec::new();
    let skipped = documents(&root, &files, field, |name, _, _, text| docs.push(Doc { name, text: text.into_owned() }));
    if docs.is_empty() {
        return Err(no_text(source, &skipped, field));
    }
    let (train, valid) = match split(docs, |d| &d.name, holdout) {
        Split::Two(train, valid) => (train, valid),
        Split::One(d) => {
            let (head, tail) = split_tail(&d.text);
            (
                vec![Doc { name: d.name.clone(), text: head.to_string() }],
                vec![Doc { name: d.name, text: tail.to_string() }],
            )
        }
    };
    Ok(Corpus { source: source.to_string(), root, train, valid, skipped, token_files: Vec::new(), holdout })
}

/// Gives `each` every document of `files` (relative names from `root`):
/// its name, its file's index, its line where the file is JSON lines, and
/// its text; returns what was skipped.
pub(super) fn documents(
    root: &Path,
    files: &[PathBuf],
    field: &str,
    mut each: impl FnMut(String, usize, Option<usize>, std::borrow::Cow<'_, str>),
) -> Skipped {
    let mut skipped = Skipped::default();
    for (i, f) in files.iter().enumerate() {
        let name = name_in(root, f);
        let read = match holds(f) {
            // Of any size, a line at a time.
            Holds::Records => {
                super::lines::each_record(f, field, |line, t| each(format!("{name}:{line}"), i, Some(line), t.into()))
                    .map(|bad| skipped.bad_records += bad)
            }
            Holds::Pieces => super::pieces::each_piece(f, |k, t| each(format!("{name}:{k}"), i, Some(k), t.into())),
            Holds::One => read(f).map(|text| each(name, i, None, text.into())),
        };
        if let Err(why) = read {
            skipped.count(why);
        }
    }
    skipped
}

/// The token files of a pre-tokenised corpus: `files` where all are token
/// files, but for the tokenizer that made them and its record (a
/// `tokenizer.json` and a `tokens.json`, as `blkc tokenize` writes beside
/// them). A `.bin` among text files is read, and skipped, as any other file.
pub(super) fn tokenised(files: &[PathBuf]) -> Option<Vec<PathBuf>> {
    let (ids, rest): (Vec<&PathBuf>, Vec<&PathBuf>) = files.iter().partition(|f| super::token_files::is_token_file(f));
    let beside = |f: &&PathBuf| f.file_name().is_some_and(|n| n == "tokenizer.json" || n == super::made_by::FILE);
    (!ids.is_empty() && rest.iter().all(beside)).then(|| ids.into_iter().cloned().collect())
}

pub(super) fn no_text(source: &str, skipped: &Skipped, field: &str) -> String {
    format!(
        "no usable text in `{source}`: skipped {}; give text files (or JSON lines with a `{field}` field) with --data",
        skipped.describe()
    )
}

/// A corpus's documents split.
pub(super) enum Split<T> {
    /// Training and validation.
    Two(Vec<T>, Vec<T>),
    /// A single document: it trains, and validation is its last tenth.
    One(T),
}

/// The side (0 training, 1 validation) that gives one document to the
/// other, left empty by the hash (too few documents for it to pick one):
/// training gives its last, validation its first.
pub(super) fn giving_side(train: u64, valid: u64) -> Option<usize> {
    match (train, valid) {
        (2.., 0) => Some(0),
        (0, 2..) => Some(1),
        _ => None,
    }
}

/// Splits documents by the hash of their names, in the order of their
/// names, at least one on each side when there are two or more.
pub(super) fn split<T>(mut docs: Vec<T>, name: impl Fn(&T) -> &str, holdout: Holdout) -> Split<T> {
    docs.sort_by(|a, b| name(a).cmp(name(b)));
    let (mut train, mut valid): (Vec<T>, Vec<T>) = docs.into_iter().partition(|d| !in_validation(name(d), holdout));
    match giving_side(train.len() as u64, valid.len() as u64) {
        Some(0) => valid.extend(train.pop()),
        Some(_) => train.push(valid.remove(0)),
        None => {}
    }
    match (train.len(), valid.len()) {
        (1, 0) => Split::One(train.remove(0)),
        (0, 1) => Split::One(valid.remove(0)),
        _ => Split::Two(train, valid),
    }
}

/// Bytes of memory that reading `source` will take, estimated from its
/// files' sizes before any is read, on the high side. A text corpus is
/// held whole while it is encoded: as text and as token ids (4 bytes each,
/// one per byte with the `bytes` tokenizer, fewer with a BPE, whose
/// encoder also holds a few hundred MB while it works). Token files stay on
/// disk (`token_files`): what is held is the order of the windows, 4 bytes
/// per window of `context` ids. Measured peaks of the process (a tiny
/// model, 58 MB of text; bench/NOTES.md): 5.6× the text with `bytes`; with
/// a BPE trained on it, 4.9× for 4,096 tokens and 8.6× (0.50 GB) for 300.
/// Also says whether the corpus is text (not token files).
pub fn footprint(source: &str, bytes_tokenizer: bool, context: u64) -> Result<(u128, bool), String> {
    let (_, files) = find(source)?;
    let size = |f: &PathBuf| std::fs::metadata(f).map(|m| u128::from(m.len())).unwrap_or(0);
    // What a file holds: a gzip file's decompressed bytes.
    let held = |f: &PathBuf| super::lines::size(f).map_or(0, u128::from).max(size(f));
    if let Some(files) = tokenised(&files) {
        // At most one id per byte (8-bit ids).
        return Ok((4 * files.iter().map(size).sum::<u128>() / u128::from(context.max(1)), false));
    }
    // Every file is read whatever its size (a large text file in pieces).
    let text: u128 = files.iter().map(held).sum();
    // A BPE's encoder holds some 200 bytes per byte of a batch of text.
    Ok((if bytes_tokenizer { 6 * text } else { 5 * text + (200 * text).min(512 << 20) }, true))
}

/// A file's name relative to the corpus root: its document's name, or the
/// prefix of its records' (`name:line`).
pub(super) fn name_in(root: &Path, f: &Path) -> String {
    f.strip_prefix(root).unwrap_or(f).to_string_lossy().replace('\\', "/")
}

/// How a corpus file holds its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holds {
    /// A text file: one.
    One,
    /// JSON lines: one per record (`name:LINE`).
    Records,
    /// A text file too large for one: one per piece (`name:K`).
    Pieces,
}

/// How `path` holds its documents (a gzip file: what it holds does).
pub(super) fn holds(path: &Path) -> Holds {
    if is_json_lines(path) {
        Holds::Records
    } else if super::lines::size(path).is_some_and(|n| n > MAX_FILE_BYTES) {
        Holds::Pieces
    } else {
        Holds::One
    }
}

/// Whether `path` holds JSON lines: a `.jsonl` or `.ndjson` file, or a
/// `.json` file whose first line that is not blank is a JSON object alone
/// (as Hugging Face `datasets` and C4 write their records); any other
/// `.json` (a document over several lines, an array) is text.
fn is_json_lines(path: &Path) -> bool {
    // A gzip file by the name of what it holds (`c4.json.gz`: `c4.json`).
    let held = if super::lines::gzipped(path) { path.with_extension("") } else { path.to_path_buf() };
    match held.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "ndjson") => true,
        Some("json") => super::lines::first_line(path)
            .is_some_and(|l| serde_json::from_str::<serde_json::Value>(&l).is_ok_and(|v| v.is_object())),
        _ => false,
    }
}

/// Gives `each` the line (1-based) and text of every record of a JSON-lines
/// file that has a non-empty text in `field`; returns how many lines had
/// none.
pub(super) fn records(text: &str, field: &str, mut each: impl FnMut(usize, &str)) -> usize {
    let mut bad = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: Option<serde_json::Value> = serde_json::from_str(line).ok();
        match value.as_ref().and_then(|v| v.get(field)).and_then(|t| t.as_str()).filter(|t| !t.is_empty()) {
            Some(t) => each(i + 1, t),
            None => bad += 1,
        }
    }
    bad
}

/// Whether the document named `name` belongs to the validation split.
/// FNV-1a alone moves its top bits little for a change in the last
/// characters, so the records of a JSON-lines file (`r.jsonl:1`,
/// `r.jsonl:2`, …) fell together: none of 73 validated at 0.1, a fifth of
/// 1,000. Hash 2 mixes it first (SplitMix64's finaliser).
pub fn in_validation(name: &str, holdout: Holdout) -> bool {
    let mut h = Fnv::new();
    h.write(name.as_bytes());
    let x = if holdout.hash >= 2 { mixed(h.finish()) } else { h.finish() };
    // Top 53 bits as a fraction in [0, 1).
    ((x >> 11) as f64 / (1u64 << 53) as f64) < holdout.fraction
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mixed(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A text cut before its last tenth, at the start of a line where one
/// is near (else at a character boundary).
pub(super) fn split_tail(text: &str) -> (&str, &str) {
    let cut = text.floor_char_boundary(text.len() * 9 / 10);
    let line = text[..cut].rfind('\n').map(|i| i + 1).filter(|&i| cut - i < text.len() / 20 + 1);
    text.split_at(line.filter(|&i| i > 0).unwrap_or(cut))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    NotUtf8,
    Empty,
    Unreadable,
    TooLarge,
    NotRegular,
}

/// A file's text: a regular file of at most 64 MiB (`durable::read_regular`),
/// or what a gzip file of at most that holds.
pub(super) fn read(path: &Path) -> Result<String, Skip> {
    let bytes = if super::lines::gzipped(path) {
        super::lines::held(path, MAX_FILE_BYTES)?
    } else {
        match crate::durable::read_regular(path, MAX_FILE_BYTES).map_err(|_| Skip::Unreadable)? {
            crate::durable::Read::Bytes(b) => b,
            crate::durable::Read::NotRegular => return Err(Skip::NotRegular),
            crate::durable::Read::TooLarge => return Err(Skip::TooLarge),
        }
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Skip::Empty);
    }
    // NUL bytes mark binary files even when they happen to be valid UTF-8.
    if bytes.contains(&0) {
        return Err(Skip::NotUtf8);
    }
    String::from_utf8(bytes).map_err(|_| Skip::NotUtf8)
}

/// The files of `source` (sorted) and the root their names are relative to.
pub(super) fn find(source: &str) -> Result<(PathBuf, Vec<PathBuf>), String> {
    if source == PYTHON_STDLIB {
        let root = python_stdlib().ok_or_else(|| {
            "no Python standard library found (looked for lib/python3.*/os.py under /usr, /usr/local, /opt, \
             $PYTHONHOME, $VIRTUAL_ENV, $CONDA_PREFIX and ~/.pyenv); give a text corpus with --data PATH"
                .to_string()
        })?;
        let mut files = Vec::new();
        walk(&root, &mut files, &|p| p.extension().is_some_and(|e| e == "py"), true)?;
        files.sort();
        return Ok((root, files));
    }
    let path = Path::new(source);
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files, &|_| true, false)?;
        if files.is_empty() {
            return Err(format!("`{source}` is an empty directory; give a directory with text files"));
        }
        files.sort();
        return Ok((path.to_path_buf(), files));
    }
    if path.is_file() {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok((root, vec![path.to_path_buf()]));
    }
    if source.contains(['*', '?', '[']) {
        let paths = glob::glob(source).map_err(|e| format!("bad glob `{source}`: {e}"))?;
        let mut files: Vec<PathBuf> =
            paths.filter_map(Result::ok).filter(|p| p.is_file()).take(MAX_FILES + 1).collect();
        if files.len() > MAX_FILES {
            return Err(format!("`{source}` matches more than {MAX_FILES} files"));
        }
        if files.is_empty() {
            return Err(format!("no file matches `{source}`"));
        }
        files.sort();
        let root = glob_root(source);
        return Ok((root, files));
    }
    if std::fs::metadata(path).is_ok() {
        return Err(format!("`{source}` is not a regular file or a directory (a device, a pipe or a socket)"));
    }
    Err(format!("`{source}` does not exist (give a directory, a file, a glob or `{PYTHON_STDLIB}`)"))
}

/// The directory part of a glob before its first wildcard.
fn glob_root(pattern: &str) -> PathBuf {
    let cut = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let head = &pattern[..cut];
    match head.rfind('/') {
        Some(i) => PathBuf::from(&head[..=i]),
        None => PathBuf::from("."),
    }
}

/// Every file under `dir` (depth-first, hidden entries and symlinked
/// directories skipped) that `keep` accepts.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, keep: &dyn Fn(&Path) -> bool, library: bool) -> Result<(), String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || (library && (name == "site-packages" || name == "dist-packages")) {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            let p = e.path();
            if kind.is_dir() {
                if !blkc_output(&p) {
                    stack.push(p);
                }
            } else if keep(&p) {
                // Links, pipes and devices too: `read` counts them as not
                // regular instead of reading them.
                out.push(p);
                if out.len() > MAX_FILES {
                    return Err(format!("`{}` holds more than {MAX_FILES} files", dir.display()));
                }
            }
        }
    }
    Ok(())
}

/// Whether `dir` is what blkc wrote: a run (`run.json` beside
/// `checkpoints/`) or `blkc tokenize`'s output (`tokens.json`). A corpus
/// walk passes them over, so that a run kept inside its data directory
/// (`--data . --out runs/x`) never trains on its own metrics, plots and
/// tokenizer, nor reads a corpus on resuming that its start did not.
fn blkc_output(dir: &Path) -> bool {
    (dir.join("run.json").is_file() && dir.join("checkpoints").is_dir()) || dir.join(super::made_by::FILE).is_file()
}

/// The standard library directory of the newest Python 3 found in the
/// usual places.
pub fn python_stdlib() -> Option<PathBuf> {
    let mut prefixes: Vec<PathBuf> = ["PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    prefixes.extend(["/usr", "/usr/local", "/opt/homebrew", "/opt/local", "/opt/conda"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        if let Ok(entries) = std::fs::read_dir(versions) {
            prefixes.extend(entries.flatten().map(|e| e.path()));
        }
    }
    stdlib_under(&prefixes)
}

/// The newest `lib/python3.N` (holding `os.py`) under `prefixes`; among
/// equal versions, the first prefix wins.
pub fn stdlib_under(prefixes: &[PathBuf]) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else { continue };
        let mut here: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let minor = name.strip_prefix("python3.")?.parse::<u32>().ok()?;
                e.path().join("os.py").is_file().then(|| (minor, e.path()))
            })
            .collect();
        here.sort();
        found.extend(here);
    }
    let newest = found.iter().map(|f| f.0).max()?;
    found.into_iter().find(|f| f.0 == newest).map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_may_have_their_tokenizer_beside_them() {
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        let ids = paths(&["d/train.bin", "d/val.npy"]);
        assert_eq!(tokenised(&ids), Some(ids.clone()));
        assert_eq!(tokenised(&paths(&["d/train.bin", "d/val.npy", "d/tokenizer.json"])), Some(ids));
        assert_eq!(tokenised(&paths(&["d/train.bin", "d/notes.json"])), None);
        assert_eq!(tokenised(&paths(&["d/tokenizer.json"])), None);
        assert_eq!(tokenised(&paths(&["d/train.bin", "d/tokens.json"])).map(|f| f.len()), Some(1));
    }

    #[test]
    fn the_split_is_stable_and_near_the_fraction() {
        let names: Vec<String> = (0..4000).map(|i| format!("pkg/mod_{i}.py")).collect();
        let valid = names.iter().filter(|n| in_validation(n, 0.1.into())).count();
        assert!((300..500).contains(&valid), "{valid} of 4000 in validation at 0.1");
        assert_eq!(in_validation("a/b.py", 0.3.into()), in_validation("a/b.py", 0.3.into()));
        assert!(names.iter().all(|n| !in_validation(n, 0.0.into())));
        // Names that differ in their last characters alone (the records of
        // a JSON-lines file, the pieces of a large text file) spread as
        // others do, in every stretch of them; the hash of runs recorded
        // before did not, and still splits them so.
        for n in [73, 1000, 10_000] {
            let names: Vec<String> = (1..=n).map(|i| format!("data/r.jsonl:{i}")).collect();
            let share = |hash, from: usize, to: usize| {
                let valid =
                    names[from..to].iter().filter(|m| in_validation(m, Holdout { fraction: 0.1, hash })).count();
                valid as f64 / (to - from) as f64
            };
            assert!((0.04..0.16).contains(&share(2, 0, n)), "{n}: {}", share(2, 0, n));
            if n == 10_000 {
                assert!((0.06..0.14).contains(&share(2, 0, 1000)) && (0.06..0.14).contains(&share(2, 9000, n)));
            }
            let legacy = names.iter().filter(|m| in_validation(m, Holdout { fraction: 0.1, hash: 1 })).count();
            // Counted by a Python FNV-1a: none of the first 1,000, 6 % of 10,000.
            assert_eq!(legacy, [0, 0, 600][[73, 1000, 10_000].iter().position(|&m| m == n).unwrap_or(0)], "{n}");
        }
    }

    #[test]
    fn the_newest_stdlib_is_found_and_none_is_none() {
        let root = std::env::temp_dir().join(format!("blkc-stdlib-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (prefix, v, real) in [("a", "python3.9", true), ("b", "python3.12", true), ("b", "python3.13", false)] {
            let lib = root.join(prefix).join("lib").join(v);
            let _ = std::fs::create_dir_all(&lib);
            if real {
                let _ = std::fs::write(lib.join("os.py"), "import sys\n");
            }
        }
        let prefixes = [root.join("a"), root.join("b"), root.join("missing")];
        assert_eq!(stdlib_under(&prefixes), Some(root.join("b/lib/python3.12")));
        assert_eq!(stdlib_under(&[root.join("missing")]), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_single_file_trains_and_gives_its_last_tenth_to_validation() {
        let dir = std::env::temp_dir().join(format!("blkc-single-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        // Names hash to either side at this fraction; each must split.
        for name in ["a.txt", "b.py", "corpus.txt", "x", "data.csv", "z.md"] {
            let p = dir.join(name);
            let text: String = (0..100).map(|i| format!("line {i} of {name}\n")).collect();
            let _ = std::fs::write(&p, &text);
            let c = load(&p.display().to_string(), 0.5, "text").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((c.train.len(), c.valid.len()), (1, 1), "{name}");
            let (t, v) = (&c.train[0].text, &c.valid[0].text);
            assert_eq!(format!("{t}{v}"), text);
            assert!(v.starts_with("line 90 ") || v.starts_with("line 89 "), "{name}: {v:.20}");
            let _ = std::fs::remove_file(&p);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn json_lines_give_a_document_per_record() {
        let dir = std::env::temp_dir().join(format!("blkc-jsonl-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("corpus.jsonl");
        let mut text: String =
            (0..40).map(|i| format!("{{\"id\": {i}, \"content\": \"def f{i}(x):\\n    return x\"}}\n")).collect();
        text.push_str("not json\n{\"id\": 99}\n\n");
        let _ = std::fs::write(&p, text);
        let c = load(&p.display().to_string(), 0.2, "content").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.train.len() + c.valid.len(), 40);
        assert!(!c.valid.is_empty() && c.train.len() > c.valid.len());
        assert_eq!(c.skipped.bad_records, 2, "{:?}", c.skipped);
        assert!(c
            .train
            .iter()
            .chain(&c.valid)
            .any(|d| d.name == "corpus.jsonl:1" && d.text == "def f0(x):\n    return x"));
        let err = load(&p.display().to_string(), 0.2, "text").err().unwrap_or_default();
        assert!(err.contains("42 JSON lines without their text field"), "{err}");
        // `.json` files: records where the first line is an object alone
        // (C4's, `datasets`' `to_json`), else text.
        let records = dir.join("records");
        let _ = std::fs::create_dir_all(&records);
        let _ = std::fs::write(records.join("c4.json"), "\n{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
        let _ = std::fs::write(records.join("pretty.json"), "{\n  \"text\": \"not a record\"\n}\n");
        let _ = std::fs::write(records.join("array.json"), "[{\"text\": \"a\"}, {\"text\": \"b\"}]\n");
        let c = load(&records.display().to_string(), 0.0, "text").unwrap_or_else(|e| panic!("{e}"));
        let mut names: Vec<&str> = c.train.iter().chain(&c.valid).map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["array.json", "c4.json:2", "c4.json:3", "pretty.json"]);
        // Compressed, the same documents by the same names, but `.gz`; a
        // text file too.
        let gz = |name: &str, text: &[u8]| {
            let _ = std::fs::write(records.join(name), super::super::lines::tests::gzip(text));
        };
        for f in ["c4.json", "pretty.json", "array.json"] {
            let text = std::fs::read(records.join(f)).unwrap_or_default();
            let _ = std::fs::remove_file(records.join(f));
            gz(&format!("{f}.gz"), &text);
        }
        gz("notes.txt.gz", b"a text\n");
        let c = load(&records.display().to_string(), 0.0, "text").unwrap_or_else(|e| panic!("{e}"));
        let mut docs: Vec<(&str, &str)> =
            c.train.iter().chain(&c.valid).map(|d| (d.name.as_str(), d.text.as_str())).collect();
        docs.sort_unstable();
        let want = [
            ("array.json.gz", "[{\"text\": \"a\"}, {\"text\": \"b\"}]\n"),
            ("c4.json.gz:2", "one"),
            ("c4.json.gz:3", "two"),
            ("notes.txt.gz", "a text\n"),
            ("pretty.json.gz", "{\n  \"text\": \"not a record\"\n}\n"),
        ];
        assert_eq!(docs, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A run, or token files, inside the data directory are not data.
    #[test]
    fn blkc_outputs_inside_the_corpus_are_passed_over() {
        let dir = std::env::temp_dir().join(format!("blkc-outputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, text) in [
            ("a.txt", "text\n"),
            ("runs/x/run.json", "{}"),
            ("runs/x/metrics.csv", "step,loss\n"),
            ("runs/x/checkpoints/latest", "step-00000001"),
            ("runs/notes.txt", "kept\n"),
            ("ids/tokens.json", "{}"),
            ("ids/tokenizer.json", "{}"),
            ("looks/run.json", "a run.json alone is data\n"),
        ] {
            let p = dir.join(rel);
            let _ = std::fs::create_dir_all(p.parent().unwrap_or(&dir));
            let _ = std::fs::write(&p, text);
        }
        let (_, files) = find(&dir.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = files.iter().map(|f| name_in(&dir, f)).collect();
        assert_eq!(names, ["a.txt", "looks/run.json", "runs/notes.txt"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("blkc-special-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("good.txt"), "def f():\n    return 1\n".repeat(50));
        let _ = std::os::unix::fs::symlink("/dev/zero", dir.join("zero.txt"));
        let fifo = dir.join("pipe.txt");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        let c = load(&dir.display().to_string(), 0.0, "text").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.skipped.not_regular, 1 + usize::from(made), "{:?}", c.skipped);
        assert!(c.skipped.describe().contains("not regular files"));
        let err = load("/dev/zero", 0.1, "text").err().unwrap_or_default();
        assert!(err.contains("not a regular file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn glob_roots() {
        assert_eq!(glob_root("data/**/*.py"), PathBuf::from("data/"));
        assert_eq!(glob_root("*.txt"), PathBuf::from("."));
    }
}
