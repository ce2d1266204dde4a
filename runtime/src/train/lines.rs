//! JSON-lines files of any size, read a line at a time and never whole:
//! a dump of records is often gigabytes in one file (a text file of that
//! size is read in pieces, `pieces.rs`). Lines are cut as `str::lines`
//! cuts them (`\n`, or `\r\n`), numbered from 1, so a record has the name
//! it has when its file is read whole. A gzip file (`.gz`) is read as what
//! it holds: decompressed as it is read ([`stream`]), or into memory where
//! it is sought in ([`open`]). A file is left out for the reasons a text
//! file is (`data::Skip`): not regular, unreadable, empty, not UTF-8 or
//! with a NUL byte anywhere; a record longer than 64 MiB is a bad record.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use super::data::{records, Skip};

/// Longest record held, in bytes (a longer line is a bad record).
const MAX_LINE: usize = 64 << 20;

/// Gives `each` the line number and text of every record of the JSON-lines
/// file `path` (a string in `field`), a line at a time; returns the count
/// of bad records (not an object with a non-empty string there), as
/// [`records`] counts them.
pub(super) fn each_record(path: &Path, field: &str, mut each: impl FnMut(usize, &str)) -> Result<usize, Skip> {
    check(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, stream(path)?);
    let (mut buf, mut bad, mut number) = (Vec::new(), 0, 0);
    while let Some(fits) = next_line(&mut reader, &mut buf).map_err(|_| Skip::Unreadable)? {
        number += 1;
        if !fits {
            bad += 1;
            continue;
        }
        // Checked as UTF-8 whole: a line of it is too.
        let line = std::str::from_utf8(&buf).map_err(|_| Skip::NotUtf8)?;
        bad += records(line, field, |_, text| each(number, text));
    }
    Ok(bad)
}

/// What a corpus file holds, to be read and sought in: the file itself,
/// or, for a gzip-compressed one (`.gz`), its bytes decompressed into
/// memory.
pub(super) enum Body {
    File(File),
    Held(Cursor<Vec<u8>>),
}

impl Body {
    /// Bytes in it.
    pub(super) fn len(&self) -> Result<u64, Skip> {
        match self {
            Body::File(f) => f.metadata().map(|m| m.len()).map_err(|_| Skip::Unreadable),
            Body::Held(c) => Ok(c.get_ref().len() as u64),
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::File(f) => f.read(buf),
            Body::Held(c) => c.read(buf),
        }
    }
}

impl Seek for Body {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match self {
            Body::File(f) => f.seek(to),
            Body::Held(c) => c.seek(to),
        }
    }
}

/// Whether `path` is gzip-compressed (`.gz`): read as the file it holds.
pub(super) fn gzipped(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// The regular file `path`, opened.
fn regular(path: &Path) -> Result<File, Skip> {
    let meta = std::fs::metadata(path).map_err(|_| Skip::Unreadable)?;
    if !meta.is_file() {
        return Err(Skip::NotRegular);
    }
    File::open(path).map_err(|_| Skip::Unreadable)
}

/// What the regular file `path` holds, read from its start: a gzip file
/// decompressed as it is read (several members, as `bgzip` and `cat a.gz
/// b.gz` write, one after another; a file that is not gzip fails to read).
pub(super) fn stream(path: &Path) -> Result<Box<dyn Read>, Skip> {
    let file = regular(path)?;
    Ok(if gzipped(path) { Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))) } else { Box::new(file) })
}

/// What the regular file `path` holds, to be sought in: the file, or a
/// gzip file decompressed into memory. Decompressing more than a quarter
/// of the memory free is refused as too large; a file that is not gzip as
/// unreadable.
pub(super) fn open(path: &Path) -> Result<Body, Skip> {
    if !gzipped(path) {
        return regular(path).map(Body::File);
    }
    let room = super::memory::available().map_or(4 << 30, |free| free / 4);
    held(path, u64::try_from(room).unwrap_or(u64::MAX)).map(|bytes| Body::Held(Cursor::new(bytes)))
}

/// What the regular file `path` holds (a gzip file decompressed), when
/// that is at most `cap` bytes.
pub(super) fn held(path: &Path, cap: u64) -> Result<Vec<u8>, Skip> {
    match crate::durable::read_capped(stream(path)?, cap).map_err(|_| Skip::Unreadable)? {
        crate::durable::Read::Bytes(bytes) => Ok(bytes),
        _ => Err(Skip::TooLarge),
    }
}

/// Bytes the regular file `path` holds, without reading it: a gzip
/// file's from its trailer (its last member's size, modulo 4 GiB: a hint,
/// which reading it settles). `None` for what is not a regular file (a
/// pipe is never opened: that would wait for a writer).
pub(super) fn size(path: &Path) -> Option<u64> {
    let len = std::fs::metadata(path).ok().filter(|m| m.is_file())?.len();
    if !gzipped(path) || len < 18 {
        return Some(len);
    }
    let mut file = File::open(path).ok()?;
    let mut trailer = [0u8; 4];
    file.seek(SeekFrom::End(-4)).ok()?;
    file.read_exact(&mut trailer).ok()?;
    Some(u64::from(u32::from_le_bytes(trailer)))
}

/// Whether the file is text as `data::read` requires it, read in blocks:
/// UTF-8 (a character may straddle two blocks), no NUL byte, not only
/// whitespace.
pub(super) fn check(path: &Path) -> Result<(), Skip> {
    check_read(stream(path)?)
}

/// [`check`] of what `file` gives from where it stands to its end.
pub(super) fn check_read(mut file: impl Read) -> Result<(), Skip> {
    let mut block = vec![0u8; 1 << 20];
    // Bytes of a character cut by the block's end, carried to the next.
    let (mut carried, mut blank) = (0usize, true);
    loop {
        let n = file.read(&mut block[carried..]).map_err(|_| Skip::Unreadable)?;
        let filled = carried + n;
        if n == 0 {
            return match (carried, blank) {
                (0, true) => Err(Skip::Empty),
                (0, false) => Ok(()),
                _ => Err(Skip::NotUtf8),
            };
        }
        let bytes = &block[..filled];
        if bytes[carried..].contains(&0) {
            return Err(Skip::NotUtf8);
        }
        blank &= bytes.iter().all(u8::is_ascii_whitespace);
        let good = match std::str::from_utf8(bytes) {
            Ok(_) => filled,
            // Cut at the end: the rest of the character is in the next block.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return Err(Skip::NotUtf8),
        };
        block.copy_within(good..filled, 0);
        carried = filled - good;
    }
}

/// The first line of the regular file `path` that is not blank, when it
/// is UTF-8 and no longer than a record may be.
pub(super) fn first_line(path: &Path) -> Option<String> {
    let mut reader = BufReader::new(stream(path).ok()?);
    let mut buf = Vec::new();
    while next_line(&mut reader, &mut buf).ok()?? {
        if !buf.iter().all(u8::is_ascii_whitespace) {
            return String::from_utf8(std::mem::take(&mut buf)).ok();
        }
    }
    None
}

/// The next line of `r` into `buf`, without its `\n` (or `\r\n`): `None` at
/// the end, `Some(false)` for a line longer than [`MAX_LINE`] (skipped,
/// `buf` left empty).
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut any, mut fits) = (false, true);
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if fits && buf.len() + take <= MAX_LINE + 2 {
            buf.extend_from_slice(&available[..take]);
        } else {
            fits = false;
            buf.clear();
        }
        r.consume(take);
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(fits && buf.len() <= MAX_LINE))
}

/// A JSON-lines file's lines by number, for reading its records in another
/// order than the file's: where each line starts (8 bytes a line), and the
/// file, held where it is no larger than a record may be, else read a line
/// at a time when asked.
pub(super) struct Lines {
    bytes: Option<Vec<u8>>,
    file: Body,
    /// Where each line starts, and where the file ends.
    starts: Vec<u64>,
}

impl Lines {
    /// Where the lines of `path` start (a pass over it). Refused where the
    /// index would take more than a quarter of the memory free (a file of
    /// gigabytes of empty lines: 8 bytes each).
    pub(super) fn index(path: &Path) -> Result<Self, String> {
        let room = super::memory::available().map_or(4 << 30, |free| free / 4);
        Self::index_holding(path, MAX_LINE as u64, room)
    }

    /// [`Lines::index`], the file held where it has at most `hold` bytes,
    /// the index at most `room` bytes.
    fn index_holding(path: &Path, hold: u64, room: u128) -> Result<Self, String> {
        let unreadable = |_| format!("`{}` cannot be read", path.display());
        let mut file = open(path).map_err(|_| format!("`{}` cannot be read as a regular file", path.display()))?;
        let size = file.len().map_err(|_| format!("`{}` cannot be read", path.display()))?;
        let mut starts = vec![0u64];
        let mut at = 0u64;
        let mut mark = |bytes: &[u8], at: u64| {
            starts.extend(bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| at + i as u64 + 1));
            if starts.len() as u128 * 8 > room {
                return Err(format!(
                    "`{}` has too many lines ({} and more) for an index of their starts in a quarter of the memory \
                     free; split it into several files",
                    path.display(),
                    starts.len()
                ));
            }
            Ok(())
        };
        let bytes = if size <= hold {
            let mut held = Vec::new();
            file.read_to_end(&mut held).map_err(unreadable)?;
            mark(&held, 0)?;
            at = held.len() as u64;
            Some(held)
        } else {
            let mut reader = BufReader::with_capacity(1 << 20, &mut file);
            loop {
                let available = reader.fill_buf().map_err(unreadable)?;
                if available.is_empty() {
                    break;
                }
                let n = available.len();
                mark(available, at)?;
                at += n as u64;
                reader.consume(n);
            }
            None
        };
        // The end of the last line: the file's end (a line after the last
        // `\n` only where bytes follow it).
        if starts.last() != Some(&at) {
            starts.push(at);
        }
        Ok(Lines { bytes, file, starts })
    }

    /// Lines in the file.
    pub(super) fn count(&self) -> usize {
        self.starts.len() - 1
    }

    /// The text of line `l` (1-based) without its line end; `None` past the
    /// end, for a line longer than [`MAX_LINE`], or where the file changed.
    pub(super) fn line(&mut self, l: usize) -> Option<Cow<'static, str>> {
        let (start, end) = (*self.starts.get(l.checked_sub(1)?)?, *self.starts.get(l)?);
        let len = usize::try_from(end - start).ok().filter(|&n| n <= MAX_LINE + 2)?;
        let read;
        let bytes = match &self.bytes {
            Some(held) => held.get(start as usize..end as usize)?,
            None => {
                let mut buf = vec![0u8; len];
                self.file.seek(SeekFrom::Start(start)).ok()?;
                self.file.read_exact(&mut buf).ok()?;
                read = buf;
                &read
            }
        };
        let mut line = Vec::new();
        let fits = next_line(&mut &bytes[..], &mut line).ok()??;
        if !fits {
            return None;
        }
        String::from_utf8(line).ok().map(Cow::Owned)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A file of `bytes` of its own for the test that names it `name`.
    pub(in crate::train) fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("blkc-lines-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// Records read a line at a time are those of the file read whole, by
    /// the same numbers, through every kind of line end; by number, the
    /// index gives each line as `str::lines` does.
    #[test]
    fn lines_are_cut_and_numbered_as_str_lines_cuts_them() {
        let texts = [
            "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\r\n not json\n{\"text\": \"ü\"}",
            "{\"text\": \"a\"}\n",
            "\n\n{\"text\": \"x\\ny\"}\r\n{\"text\": \"\"}\n{\"text\": \"last\"}\r",
            "{\"text\": \"only\"}",
        ];
        for (k, text) in texts.iter().enumerate() {
            let p = file(&format!("cut{k}.jsonl"), text.as_bytes());
            let (mut whole, mut read) = (Vec::new(), Vec::new());
            let bad_whole = records(text, "text", |l, t| whole.push((l, t.to_string())));
            let bad_read = each_record(&p, "text", |l, t| read.push((l, t.to_string()))).unwrap_or(usize::MAX);
            assert_eq!((read, bad_read), (whole, bad_whole), "{text:?}");
            // Held, and read from the file line by line.
            for hold in [u64::MAX, 0] {
                let mut lines = Lines::index_holding(&p, hold, u128::MAX).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(lines.bytes.is_some(), hold > 0);
                let want: Vec<&str> = text.lines().collect();
                assert_eq!(lines.count(), want.len(), "{text:?}");
                for (i, w) in want.iter().enumerate().rev() {
                    assert_eq!(lines.line(i + 1).as_deref(), Some(*w), "{text:?} line {}", i + 1);
                }
                assert_eq!(lines.line(want.len() + 1), None);
            }
            let _ = std::fs::remove_file(p);
        }
    }

    /// A file larger than a text file may be is read, a line at a time; a
    /// line longer than a record may be is a bad record, never held.
    #[test]
    fn a_file_of_any_size_is_read_and_a_line_too_long_is_a_bad_record() {
        let record = |c: char| format!("{{\"text\": \"{}\"}}\n", c.to_string().repeat(20 << 20));
        let mut text = record('a');
        text.push_str(&"x".repeat(MAX_LINE + 1));
        text.push('\n');
        text.push_str(&record('b'));
        let p = file("large.jsonl", text.as_bytes());
        let mut seen = Vec::new();
        let bad =
            each_record(&p, "text", |l, t| seen.push((l, t.len(), t.chars().next()))).map_err(|e| format!("{e:?}"));
        assert_eq!(bad, Ok(1), "the long line");
        assert_eq!(seen, [(1, 20 << 20, Some('a')), (3, 20 << 20, Some('b'))]);
        let mut lines = Lines::index(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(lines.bytes.is_none(), "not held");
        assert_eq!((lines.count(), lines.line(2)), (3, None));
        assert_eq!(lines.line(3).map(|l| l.len()), Some((20 << 20) + 12));
        let _ = std::fs::remove_file(p);
    }

    /// An index that would not fit its room is refused, by name.
    #[test]
    fn an_index_too_large_is_refused() {
        let p = file("blank-lines.jsonl", &b"\n".repeat(10_000));
        let e = Lines::index_holding(&p, 0, 8 * 5_000).err().unwrap_or_default();
        assert!(e.contains("blank-lines.jsonl` has too many lines"), "{e}");
        assert!(Lines::index_holding(&p, 0, 8 * 10_002).is_ok());
        let _ = std::fs::remove_file(p);
    }

    /// A file is left out as `data::read` leaves a text file out, however
    /// its bad bytes fall across the blocks it is read in.
    #[test]
    fn files_are_left_out_as_text_files_are() {
        let big = |at: usize, bytes: &[u8]| {
            let mut v = b"{\"text\": \"x\"}\n".repeat((at + 15) / 14);
            v.truncate(at);
            v.extend_from_slice(bytes);
            v.extend_from_slice(b"\n{\"text\": \"y\"}\n");
            v
        };
        let cases: [(&str, Vec<u8>, Result<(), Skip>); 6] = [
            ("blank", b" \n\t\n".to_vec(), Err(Skip::Empty)),
            ("nul", big(10, b"\0"), Err(Skip::NotUtf8)),
            ("bad", big(1 << 20, &[0xff]), Err(Skip::NotUtf8)),
            // A character cut by the first block's end, whole: kept.
            ("straddle", big((1 << 20) - 1, "é".as_bytes()), Ok(())),
            ("cut-at-end", b"{\"text\": \"x\"}\n\xc3".to_vec(), Err(Skip::NotUtf8)),
            ("fine", b"{\"text\": \"x\"}".to_vec(), Ok(())),
        ];
        for (name, bytes, want) in cases {
            let p = file(&format!("{name}.jsonl"), &bytes);
            assert_eq!(check(&p).map_err(|e| format!("{e:?}")), want.map_err(|e| format!("{e:?}")), "{name}");
            let _ = std::fs::remove_file(p);
        }
        let dir = std::env::temp_dir();
        assert!(matches!(check(&dir), Err(Skip::NotRegular)));
    }

    /// `bytes` gzip-compressed, as `gzip` writes them.
    pub(in crate::train) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, bytes).unwrap_or_else(|e| panic!("{e}"));
        z.finish().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A gzip file is read as the file it holds: its records one by one,
    /// by number, its size from its trailer; two members one after the
    /// other hold their texts joined; a file that is not gzip cannot be
    /// read.
    #[test]
    fn a_gzip_file_reads_as_the_file_it_holds() {
        let text = "{\"text\": \"a\"}\n\n{\"text\": \"ü\"}\nnot json\n";
        let plain = file("gz-plain.jsonl", text.as_bytes());
        let mut two = gzip(&text.as_bytes()[..10]);
        two.extend(gzip(&text.as_bytes()[10..]));
        for (name, bytes) in [("gz-one.jsonl.gz", gzip(text.as_bytes())), ("gz-two.jsonl.gz", two)] {
            let p = file(name, &bytes);
            let read = |path: &Path| {
                let mut got = Vec::new();
                let bad = each_record(path, "text", |l, t| got.push((l, t.to_string())));
                (got, bad)
            };
            assert_eq!(read(&p), read(&plain), "{name}");
            let mut lines = Lines::index(&p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((lines.count(), lines.line(3).as_deref()), (4, Some("{\"text\": \"ü\"}")), "{name}");
            assert_eq!(first_line(&p).as_deref(), Some("{\"text\": \"a\"}"));
            if name == "gz-one.jsonl.gz" {
                assert_eq!(size(&p), Some(text.len() as u64), "from the trailer");
            }
            let _ = std::fs::remove_file(p);
        }
        let fake = file("gz-fake.txt.gz", b"plain text, not gzip\n");
        assert_eq!(check(&fake).err(), Some(Skip::Unreadable));
        assert_eq!(open(&fake).err(), Some(Skip::Unreadable));
        let _ = std::fs::remove_file(fake);
        let _ = std::fs::remove_file(plain);
    }
}
