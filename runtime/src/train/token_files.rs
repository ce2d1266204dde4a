//! Pre-tokenised data: token ids on disk, as other pipelines write them.
//!
//! - `.npy`: a NumPy array of integer ids, one dimension (little-endian
//!   `u1`, `u2`, `u4`, `u8`, `i2`, `i4`, `i8`);
//! - `.bin`: raw little-endian unsigned 16-bit ids, nanoGPT's
//!   `prepare.py` format (`train.bin`, `val.bin`).
//!
//! Files named `val*` or `valid*` are the validation split and the others
//! training; without such a name, a single file gives its last tenth to
//! validation and several are split by the hash of their names, as text
//! files are. Each file ends with the tokenizer's end of text unless it
//! already does.
//!
//! The ids stay on disk: a split is a list of ranges of its files' ids
//! ([`OnDisk`]), and a batch reads its windows from them, so a corpus of
//! any size trains in the memory of its batches (the page cache keeps what
//! is read often). Every id is checked against the vocabulary once, when
//! the run starts, in one pass over the files a block at a time; a file's
//! smallest, largest and last id are then kept in the cache, keyed by the
//! file's path, size and times, so that the next start (a resume, another
//! model) skips the pass. Each window is checked again as it is read, so a
//! file changed behind the key's back gives an error, never a wrong id.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::data::Holdout;

/// Largest token file, in bytes (1 TiB: larger is a mistake, not a corpus).
pub const MAX_BYTES: u64 = 1 << 40;

/// Bytes read at a time by the check of every id (a multiple of every id
/// width).
const BLOCK: usize = 1 << 20;

/// Bytes of the `.npy` headers [`npy_header`] writes.
pub const NPY_HEADER: usize = 128;

/// A version-1 `.npy` header of `count` ids stored as `descr` (`<u4`,
/// `|u1`, …), [`NPY_HEADER`] bytes long whatever the count, so that a file
/// written before its count is known can have its header written again.
pub fn npy_header(descr: &str, count: u64) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({count},), }}");
    while dict.len() < NPY_HEADER - 10 - 1 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&((NPY_HEADER - 10) as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b
}

/// Whether `path` names a token file.
pub fn is_token_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "npy" || e == "bin")
}

/// Token streams of files, and what went where.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub train: OnDisk,
    pub valid: OnDisk,
    /// Files in each split.
    pub files: (usize, usize),
}

/// How a file stores its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    /// Bytes per id.
    width: usize,
    signed: bool,
}

impl Kind {
    /// The smallest and the largest id of `bytes` (whole ids).
    fn range(self, bytes: &[u8]) -> (i128, i128) {
        fn fold<const N: usize, T: Ord + Copy + Into<i128>>(bytes: &[u8], f: fn([u8; N]) -> T) -> (i128, i128) {
            let mut ids = bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N])));
            let Some(first) = ids.next() else { return (0, 0) };
            let (low, high) = ids.fold((first, first), |(l, h), x| (l.min(x), h.max(x)));
            (low.into(), high.into())
        }
        match (self.width, self.signed) {
            (1, _) => fold::<1, u8>(bytes, u8::from_le_bytes),
            (2, false) => fold::<2, u16>(bytes, u16::from_le_bytes),
            (2, true) => fold::<2, i16>(bytes, i16::from_le_bytes),
            (4, false) => fold::<4, u32>(bytes, u32::from_le_bytes),
            (4, true) => fold::<4, i32>(bytes, i32::from_le_bytes),
            (_, false) => fold::<8, u64>(bytes, u64::from_le_bytes),
            (_, true) => fold::<8, i64>(bytes, i64::from_le_bytes),
        }
    }

    fn id(self, b: &[u8]) -> i128 {
        let mut le = [0u8; 16];
        le[..self.width].copy_from_slice(&b[..self.width]);
        if self.signed && b[self.width - 1] & 0x80 != 0 {
            le[self.width..].fill(0xff);
        }
        i128::from_le_bytes(le)
    }
}

/// Ids `first..first + count` of one file, and the end of text after them
/// where `end` (the file does not end with one).
#[derive(Debug, Clone)]
struct Part {
    file: Arc<File>,
    path: Arc<Path>,
    /// Byte offset of the file's id 0.
    data: u64,
    kind: Kind,
    first: u64,
    count: u64,
    end: bool,
}

impl Part {
    fn len(&self) -> u64 {
        self.count + u64::from(self.end)
    }
}

/// One split's ids where they lie: ranges of files, one after the other,
/// read on demand. Cloning shares the open files.
#[derive(Debug, Clone, Default)]
pub struct OnDisk {
    parts: Vec<Part>,
    /// Where each part starts in the split.
    starts: Vec<u64>,
    len: u64,
    /// The end of text.
    end: u32,
    /// Ids at or above this were refused when the files were checked: one
    /// read later means a file changed under the run.
    vocab: u64,
}

impl OnDisk {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, p: Part) {
        if p.len() > 0 {
            self.starts.push(self.len);
            self.len += p.len();
            self.parts.push(p);
        }
    }

    /// `other`'s ids after these.
    pub fn append(&mut self, other: OnDisk) {
        for p in other.parts {
            self.push(p);
        }
    }

    /// Keeps ids `..at` and returns the rest (`at` at most the length).
    fn split_off(&mut self, at: u64) -> OnDisk {
        let mut rest = OnDisk { end: self.end, vocab: self.vocab, ..OnDisk::default() };
        let mut keep = OnDisk { end: self.end, vocab: self.vocab, ..OnDisk::default() };
        for (p, start) in std::mem::take(&mut self.parts).into_iter().zip(std::mem::take(&mut self.starts)) {
            if start + p.len() <= at {
                keep.push(p);
            } else if start >= at {
                rest.push(p);
            } else {
                // The cut falls inside: among the ids, or before the end of text.
                let cut = at - start;
                keep.push(Part { count: cut, end: false, ..p.clone() });
                rest.push(Part { first: p.first + cut, count: p.count - cut, ..p });
            }
        }
        *self = keep;
        rest
    }

    /// Fills `out` with the split's ids from `start`.
    pub fn read(&self, start: usize, out: &mut [u32]) -> Result<(), String> {
        let mut at = start as u64;
        let mut filled = 0;
        let mut bytes = Vec::new();
        while filled < out.len() {
            // The part holding `at` (parts are never empty).
            let i = match self.starts.partition_point(|&s| s <= at).checked_sub(1) {
                Some(i) if at < self.len => i,
                _ => return Err(format!("id {at} is past the {} ids of the split", self.len)),
            };
            let (p, off) = (&self.parts[i], at - self.starts[i]);
            let take = (p.len() - off).min((out.len() - filled) as u64) as usize;
            let from_file = take.min(p.count.saturating_sub(off) as usize);
            if from_file > 0 {
                bytes.resize(from_file * p.kind.width, 0);
                let offset = p.data + (p.first + off) * p.kind.width as u64;
                read_at(&p.file, &mut bytes, offset)
                    .map_err(|e| crate::durable::describe("read", &p.path, &e) + " (a token file of this run)")?;
                for (slot, b) in out[filled..filled + from_file].iter_mut().zip(bytes.chunks_exact(p.kind.width)) {
                    let id = p.kind.id(b);
                    if !(0..i128::from(self.vocab)).contains(&id) {
                        return Err(format!(
                            "`{}` changed while the run read it: id {id} where its check found only ids below {}",
                            p.path.display(),
                            self.vocab
                        ));
                    }
                    *slot = id as u32;
                }
            }
            out[filled + from_file..filled + take].fill(self.end);
            filled += take;
            at += take as u64;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Opens `files` (relative names from `root`) as training and validation
/// streams, each file followed by `end` when it does not end with it, after
/// checking that every id is below `vocab`.
pub fn load(root: &Path, files: &[PathBuf], holdout: Holdout, end: u32, vocab: usize) -> Result<Tokens, String> {
    let name = |f: &PathBuf| f.strip_prefix(root).unwrap_or(f).to_string_lossy().replace('\\', "/");
    let named_valid = |f: &PathBuf| {
        let stem = f.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        stem.starts_with("val")
    };
    let by_name = files.iter().any(named_valid);
    let split = || OnDisk { end, vocab: vocab as u64, ..OnDisk::default() };
    let mut t = Tokens { train: split(), valid: split(), files: (0, 0) };
    let cache = super::tokenizer::cache_dir();
    for f in files {
        let part = open(f, end, vocab, Some(&cache))?;
        let valid = if by_name { named_valid(f) } else { super::data::in_validation(&name(f), holdout) };
        if valid {
            t.valid.push(part);
            t.files.1 += 1;
        } else {
            t.train.push(part);
            t.files.0 += 1;
        }
    }
    if t.valid.is_empty() || t.train.is_empty() {
        // One side empty: the last tenth of everything validates.
        let mut all = std::mem::replace(&mut t.train, split());
        all.append(std::mem::replace(&mut t.valid, split()));
        let cut = all.len - all.len / 10;
        t.valid = all.split_off(cut);
        t.train = all;
        t.files = (files.len(), files.len());
    }
    Ok(t)
}

/// One token file, its every id checked (or found checked in the cache
/// `cache`): whole, followed by `end` unless it ends with it.
fn open(path: &Path, end: u32, vocab: usize, cache: Option<&Path>) -> Result<Part, String> {
    let io = |e: std::io::Error| crate::durable::describe("read", path, &e);
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(format!("`{}` is not a regular file", path.display()));
    }
    if meta.len() > MAX_BYTES {
        return Err(format!("`{}` is larger than the {} GiB a token file may have", path.display(), MAX_BYTES >> 30));
    }
    let file = File::open(path).map_err(io)?;
    let bad = |why: &str| format!("`{}` is not a token file: {why}", path.display());
    let (data, kind) = if path.extension().is_some_and(|e| e == "bin") {
        if !meta.len().is_multiple_of(2) {
            return Err(bad("a .bin file holds 16-bit ids, and its size is odd"));
        }
        (0, Kind { width: 2, signed: false })
    } else {
        npy_layout(&file, meta.len()).map_err(|e| bad(&e))?
    };
    let count = (meta.len() - data) / kind.width as u64;
    let key = cache.zip(check_key(path, &meta));
    let known = key.and_then(|(cache, k)| Checked::read(cache, k));
    let checked = match known {
        Some(c) if c.low >= 0 && c.high < vocab as i128 => c,
        _ => {
            let c = check(path, &file, data, kind, count, vocab)?;
            if let Some((cache, k)) = key {
                // A check that cannot be kept only costs time next start.
                let _ = c.write(cache, k);
            }
            c
        }
    };
    let end = checked.last != i128::from(end);
    Ok(Part { file: Arc::new(file), path: path.into(), data, kind, first: 0, count, end })
}

/// What the check of every id of a token file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checked {
    low: i128,
    high: i128,
    last: i128,
}

/// The key of a token file's check in the cache: its canonical path, its
/// size and its modification time, and on Unix its inode and status-change
/// time (which no tool can set back); `None` where they cannot be read.
fn check_key(path: &Path, meta: &std::fs::Metadata) -> Option<u64> {
    let mut h = super::data::Fnv::new();
    h.write(std::fs::canonicalize(path).ok()?.to_string_lossy().as_bytes());
    h.write(&meta.len().to_le_bytes());
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    h.write(&modified.as_nanos().to_le_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        for v in [meta.ino() as i64, meta.dev() as i64, meta.ctime(), meta.ctime_nsec()] {
            h.write(&v.to_le_bytes());
        }
    }
    Some(h.finish())
}

/// Header of a kept check (its format's version in the last byte).
const CHECKED: &str = "blkcchk1";

impl Checked {
    /// Where the check of key `key` is kept under the cache `cache`.
    fn path(cache: &Path, key: u64) -> PathBuf {
        cache.join("token-checks").join(format!("{key:016x}"))
    }

    fn read(cache: &Path, key: u64) -> Option<Checked> {
        let text = std::fs::read_to_string(Self::path(cache, key)).ok()?;
        let mut words = text.split_whitespace();
        if words.next() != Some(CHECKED) {
            return None;
        }
        let mut num = || words.next()?.parse::<i128>().ok();
        Some(Checked { low: num()?, high: num()?, last: num()? })
    }

    fn write(self, cache: &Path, key: u64) -> Result<(), String> {
        let path = Self::path(cache, key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| crate::durable::describe("create", dir, &e))?;
        }
        let text = format!("{CHECKED} {} {} {}\n", self.low, self.high, self.last);
        crate::durable::write_atomic(&path, text.as_bytes())
    }
}

/// Reads every id of a token file, a block at a time, refusing one that is
/// not a token id or not below `vocab`.
fn check(path: &Path, file: &File, data: u64, kind: Kind, count: u64, vocab: usize) -> Result<Checked, String> {
    let io = |e: std::io::Error| crate::durable::describe("read", path, &e);
    let bad = |why: &str| format!("`{}` is not a token file: {why}", path.display());
    // The last id stays -1 (no id) for an empty file.
    let mut found = Checked { low: i128::MAX, high: i128::MIN, last: -1 };
    let mut block = vec![0u8; BLOCK];
    let mut at = 0u64;
    while at < count {
        let n = (count - at).min((BLOCK / kind.width) as u64) as usize;
        let bytes = &mut block[..n * kind.width];
        read_at(file, bytes, data + at * kind.width as u64).map_err(io)?;
        // The block's range first (a loop the compiler vectorises), each id
        // only where it holds a bad one (for the message).
        let (low, high) = kind.range(bytes);
        (found.low, found.high) = (found.low.min(low), found.high.max(high));
        if low < 0 || high >= vocab as i128 {
            for (i, b) in bytes.chunks_exact(kind.width).enumerate() {
                let id = kind.id(b);
                if id < 0 || id > i128::from(u32::MAX) {
                    return Err(bad(&format!("an id of {id} is not a token id")));
                }
                if id >= vocab as i128 {
                    return Err(format!(
                        "`{}`: token {} has id {id}, but the model's vocabulary has {vocab} tokens (ids 0 to {}); \
                         the tokenizer does not belong to this model",
                        path.display(),
                        at + i as u64,
                        vocab.saturating_sub(1)
                    ));
                }
            }
        }
        if let Some(b) = bytes.rchunks_exact(kind.width).next() {
            found.last = kind.id(b);
        }
        at += n as u64;
    }
    Ok(found)
}

/// Where a `.npy` file's ids start and how they are stored (format
/// versions 1 to 3); `size` is the file's.
fn npy_layout(file: &File, size: u64) -> Result<(u64, Kind), String> {
    let mut head = [0u8; 12];
    read_at(file, &mut head[..size.min(12) as usize], 0).map_err(|e| e.to_string())?;
    if head.get(..6) != Some(b"\x93NUMPY") {
        return Err("no NumPy header".into());
    }
    let (len, at) = match head[6] {
        1 => (u64::from(u16::from_le_bytes([head[8], head[9]])), 10),
        2 | 3 => (u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])), 12),
        v => return Err(format!("NumPy format version {v}")),
    };
    if at + len > size || len > 1 << 20 {
        return Err("truncated header".into());
    }
    let mut bytes = vec![0u8; len as usize];
    read_at(file, &mut bytes, at).map_err(|e| e.to_string())?;
    let header = std::str::from_utf8(&bytes).map_err(|_| "bad header")?;
    let field = |key: &str| {
        let rest = &header[header.find(key)? + key.len()..];
        let rest = rest.trim_start_matches(|c: char| c == '\'' || c == ':' || c.is_whitespace());
        Some(rest.split([',', '}']).next()?.trim().trim_matches('\'').to_string())
    };
    let descr = field("'descr'").ok_or("no dtype")?;
    if field("'fortran_order'").as_deref() == Some("True") {
        return Err("Fortran order".into());
    }
    let shape = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
    let dims: Vec<&str> =
        shape.trim_start_matches([' ', '(']).split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if dims.len() != 1 {
        return Err(format!("an array of {} dimensions; token ids are one", dims.len()));
    }
    let kind = |width, signed| Kind { width, signed };
    let kind = match descr.as_str() {
        "|u1" | "<u1" => kind(1, false),
        "<u2" => kind(2, false),
        "<i2" => kind(2, true),
        "<u4" => kind(4, false),
        "<i4" => kind(4, true),
        "<u8" => kind(8, false),
        "<i8" => kind(8, true),
        other => return Err(format!("dtype {other}; token ids are little-endian integers")),
    };
    let data = at + len;
    if !(size - data).is_multiple_of(kind.width as u64) {
        return Err("its data does not fill the last id".into());
    }
    Ok((data, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` of `descr` holding `data`.
    fn npy_file(descr: &str, n: usize, data: &[u8]) -> Vec<u8> {
        let mut b = npy_header(descr, n as u64);
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn the_npy_header_has_one_length_for_every_count() {
        for count in [0, 7, u64::MAX] {
            let h = npy_header("<u4", count);
            assert_eq!(h.len(), NPY_HEADER, "{count}");
            assert!(String::from_utf8_lossy(&h).contains(&format!("({count},)")));
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blkc-tokfiles-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn all(d: &OnDisk) -> Vec<u32> {
        let mut v = vec![0; d.len()];
        d.read(0, &mut v).unwrap_or_else(|e| panic!("{e}"));
        v
    }

    /// The ids of one file alone, as a split.
    fn ids_of(path: &Path, vocab: usize) -> Result<Vec<u32>, String> {
        let mut d = OnDisk { end: u32::MAX, vocab: vocab as u64, ..OnDisk::default() };
        d.push(Part { end: false, ..open(path, u32::MAX, vocab, None)? });
        Ok(all(&d))
    }

    #[test]
    fn a_check_is_kept_until_its_file_changes() {
        let d = scratch("checks");
        let (f, cache) = (d.join("train.bin"), d.join("cache"));
        let bin = |ids: &[u16]| ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(&f, bin(&[1, 7, 3])).unwrap_or_else(|e| panic!("{e}"));
        let meta = || std::fs::metadata(&f).unwrap_or_else(|e| panic!("{e}"));
        let key = check_key(&f, &meta()).unwrap_or_else(|| panic!("no key"));
        assert_eq!(check_key(&f, &meta()), Some(key), "the same file, the same key");
        let first = open(&f, 0, 8, Some(&cache)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checked::read(&cache, key), Some(Checked { low: 1, high: 7, last: 3 }));
        // Kept: a vocabulary the ids fit is not read again; one they do not
        // fit is, for its message.
        let again = open(&f, 3, 8, Some(&cache)).unwrap_or_else(|e| panic!("{e}"));
        assert!(first.end && !again.end, "ends with 3, not 0");
        let small = open(&f, 0, 5, Some(&cache)).err().unwrap_or_default();
        assert!(small.contains("token 1 has id 7"), "{small}");
        // A kept check is believed (the pass is skipped), and the reads
        // check again: a file that changed behind its key gives an error.
        let lie = Checked { low: 1, high: 4, last: 3 };
        lie.write(&cache, key).unwrap_or_else(|e| panic!("{e}"));
        let trusted = open(&f, 0, 5, Some(&cache)).unwrap_or_else(|e| panic!("the pass was not skipped: {e}"));
        let mut d5 = OnDisk { end: 0, vocab: 5, ..OnDisk::default() };
        d5.push(trusted);
        let read = d5.read(0, &mut [0; 3]).err().unwrap_or_default();
        assert!(read.contains("changed while the run read it"), "{read}");
        // A damaged entry is no entry.
        std::fs::write(Checked::path(&cache, key), "blkcchk1 1 x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checked::read(&cache, key), None);
        // Rewritten with other ids, the same size and the old time set back:
        // another key on Unix (the status-change time moves).
        let modified = meta().modified().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&f, bin(&[1, 2, 9])).unwrap_or_else(|e| panic!("{e}"));
        let file = File::options().write(true).open(&f).unwrap_or_else(|e| panic!("{e}"));
        file.set_modified(modified).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta().modified().ok(), Some(modified));
        if cfg!(unix) {
            assert_ne!(check_key(&f, &meta()), Some(key));
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn npy_and_bin_files_are_read() {
        let dir = scratch("formats");
        let ids: Vec<u32> = vec![5, 300, 70_000, 0];
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
            p
        };
        let le32: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(ids_of(&write("a.npy", npy_file("<u4", 4, &le32)), 1 << 20), Ok(ids.clone()));
        let le64: Vec<u8> = ids.iter().flat_map(|&i| i64::from(i).to_le_bytes()).collect();
        assert_eq!(ids_of(&write("b.npy", npy_file("<i8", 4, &le64)), 1 << 20), Ok(ids.clone()));
        let le16: Vec<u8> = [7i16, 9].iter().flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(ids_of(&write("c.npy", npy_file("<i2", 2, &le16)), 10), Ok(vec![7, 9]));
        let f4 = ids_of(&write("d.npy", npy_file("<f4", 1, &[0; 4])), 10);
        assert!(f4.is_err_and(|e| e.contains("dtype <f4")));
        let negative = ids_of(&write("e.npy", npy_file("<i4", 1, &(-3i32).to_le_bytes())), 10);
        assert!(negative.is_err_and(|e| e.contains("-3")));
        let big = ids_of(&write("f.npy", npy_file("<u4", 4, &le32)), 70_000);
        assert!(big.is_err_and(|e| e.contains("token 2 has id 70000") && e.contains("70000 tokens")));
        assert!(ids_of(&write("g.bin", vec![1, 0, 2]), 10).is_err_and(|e| e.contains("size is odd")));
        assert!(
            ids_of(&write("h.npy", b"\x93NUMPY\x01\x00\xff\x7f".to_vec()), 10).is_err_and(|e| e.contains("truncated"))
        );
        let train: Vec<u8> = (0..1000u16).flat_map(|i| (i % 250).to_le_bytes()).collect();
        let files = [write("train.bin", train), write("val.bin", vec![7u8, 0, 8, 0])];
        let t = load(&dir, &files, 0.05.into(), 256, 258).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.train.len(), all(&t.valid)), (1001, vec![7, 8, 256]), "named splits, end of text after each");
        assert_eq!(all(&t.train)[998..], [248, 249, 256]);
        let one = load(&dir, &files[..1], 0.05.into(), 256, 258).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((one.train.len(), one.valid.len()), (901, 100));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Any run of ids read from the files is the same run of the split
    /// held whole: across files, across the end of text added after a
    /// file, and across the cut of the last tenth.
    #[test]
    fn any_window_reads_as_the_split_held_whole() {
        let dir = scratch("windows");
        let end = 9u32;
        let mut rng = crate::rng::Rng::new(3);
        let mut whole = Vec::new();
        let mut files = Vec::new();
        for f in 0..5 {
            let n = [0, 1, 37, 200, 5][f];
            let mut ids: Vec<u32> = (0..n).map(|_| (rng.next_u64() % 9) as u32).collect();
            if f == 3 {
                ids.push(end); // ends with the end of text: none is added
            }
            let bytes: Vec<u8> = ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect();
            let p = dir.join(format!("part{f}.bin"));
            std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
            files.push(p);
            whole.extend(&ids);
            if ids.last() != Some(&end) {
                whole.push(end);
            }
        }
        // No file is named for validation and 0 puts none there by hash:
        // the last tenth of all of them validates.
        let t = load(&dir, &files, 0.0.into(), end, 10).unwrap_or_else(|e| panic!("{e}"));
        let cut = whole.len() - whole.len() / 10;
        assert_eq!((all(&t.train), all(&t.valid)), (whole[..cut].to_vec(), whole[cut..].to_vec()));
        for _ in 0..500 {
            let start = (rng.next_u64() % whole.len() as u64) as usize;
            let n = 1 + (rng.next_u64() % 60) as usize;
            let mut out = vec![0; n];
            let read = t.train.read(start, &mut out);
            if start + n <= cut {
                assert_eq!((read, &out[..]), (Ok(()), &whole[start..start + n]), "{start}+{n}");
            } else {
                assert!(read.is_err(), "past the end of the split: {start}+{n}");
            }
        }
        // A file that shrinks under the run: an error, not a panic.
        std::fs::write(&files[3], [1u8, 0]).unwrap_or_else(|e| panic!("{e}"));
        let mut out = vec![0; cut];
        assert!(t.train.read(0, &mut out).is_err_and(|e| e.contains("part3.bin")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
