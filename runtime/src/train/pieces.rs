//! A text file larger than a document may be (`data`'s 64 MiB: TinyStories'
//! 1.9 GB of stories, enwik8, a corpus joined into one `.txt`), read as
//! pieces of about a mebibyte and never whole. Each piece is a document
//! named `path:K` (K from 1), as a JSON-lines file's records are named by
//! their lines, so the split, the order and `blkc tokenize`'s second pass
//! treat the two alike.
//!
//! Piece K (0-based here) starts after the first line end in the
//! [`REACH`] bytes from `K · PIECE`; with no line end that near (one long
//! line, as text8's), after the first space there, else at the first
//! character boundary; it ends where piece K + 1 starts. So a piece is found from its number alone,
//! whichever order the pieces are read in, and the pieces of a file are
//! the same on every read. The file is left out for the reasons a text
//! file is (`data::Skip`): not regular, unreadable, not UTF-8, a NUL byte
//! anywhere, only whitespace.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::data::Skip;
use super::lines;

/// Bytes of a piece, about (the last is shorter).
pub(super) const PIECE: u64 = 1 << 20;

/// How far past `K · PIECE` a line end is looked for.
pub(super) const REACH: u64 = 64 << 10;

/// A large text file's pieces, by number.
pub(super) struct Pieces {
    file: lines::Body,
    len: u64,
    piece: u64,
    reach: u64,
}

impl Pieces {
    /// The pieces of `path`, after a pass that checks it is text.
    pub(super) fn open(path: &Path) -> Result<Self, Skip> {
        Self::sized(path, PIECE, REACH)
    }

    /// [`Pieces::open`] with pieces of about `piece` bytes, a line end
    /// looked for up to `reach` bytes on (`reach < piece`).
    fn sized(path: &Path, piece: u64, reach: u64) -> Result<Self, Skip> {
        // Checked as it is held: a gzip file decompressed once.
        let mut file = lines::open(path)?;
        lines::check_read(&mut file)?;
        let len = file.len()?;
        Ok(Pieces { file, len, piece, reach })
    }

    /// Where piece `k` (0-based) starts; the file's length past the last.
    fn start(&mut self, k: u64) -> Option<u64> {
        let at = k.checked_mul(self.piece)?;
        if k == 0 || at >= self.len {
            return Some(at.min(self.len));
        }
        let mut near = vec![0u8; usize::try_from(self.reach.min(self.len - at)).ok()?];
        self.file.seek(SeekFrom::Start(at)).ok()?;
        self.file.read_exact(&mut near).ok()?;
        let after = |byte: u8| near.iter().position(|&b| b == byte).map(|i| i + 1);
        // No line end near: after a space (text8's one line of words), else
        // at the first byte that starts a character.
        let cut = after(b'\n')
            .or_else(|| after(b' '))
            .unwrap_or_else(|| near.iter().position(|&b| b & 0xC0 != 0x80).unwrap_or(near.len()));
        Some(at + cut as u64)
    }

    /// Pieces in the file.
    pub(super) fn count(&mut self) -> usize {
        let mut n = self.len.div_ceil(self.piece);
        // The last may start at the end (a line end within reach of it).
        while n > 0 && self.start(n - 1).is_none_or(|s| s >= self.len) {
            n -= 1;
        }
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The text of piece `k` (1-based); `None` past the end or where the
    /// file changed (a piece that is not UTF-8 any more).
    pub(super) fn piece(&mut self, k: usize) -> Option<String> {
        let k = u64::try_from(k.checked_sub(1)?).ok()?;
        let (start, end) = (self.start(k)?, self.start(k + 1)?);
        if start >= end {
            return None;
        }
        let mut bytes = vec![0u8; usize::try_from(end - start).ok()?];
        self.file.seek(SeekFrom::Start(start)).ok()?;
        self.file.read_exact(&mut bytes).ok()?;
        String::from_utf8(bytes).ok()
    }
}

/// Gives `each` the number (from 1) and text of every piece of the text
/// file `path`, in order.
pub(super) fn each_piece(path: &Path, mut each: impl FnMut(usize, &str)) -> Result<(), Skip> {
    let mut pieces = Pieces::open(path)?;
    for k in 1..=pieces.count() {
        let text = pieces.piece(k).ok_or(Skip::Unreadable)?;
        each(k, &text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::lines::tests::file;
    use super::*;

    /// The pieces join to the file, each (but the first) starts after a
    /// line end within reach of its mark or, with none, at the first
    /// character there; read in any order they are the same.
    #[test]
    fn pieces_cut_after_a_line_end_and_join_to_the_file() {
        let lines: String = (0..40).map(|i| format!("line {i}: {}\n", "é".repeat(i % 7))).collect();
        let one_line: String = (0..200).map(|i| if i % 3 == 0 { 'ü' } else { 'a' }).collect();
        let words: String = (0..60).map(|i| format!("w{i} ")).collect();
        let texts = [lines.as_str(), one_line.as_str(), words.as_str(), "short", "ends at a mark\n"];
        for (n, text) in texts.iter().enumerate() {
            let p = file(&format!("pieces-join{n}.txt"), text.as_bytes());
            let mut pieces = Pieces::sized(&p, 32, 8).unwrap_or_else(|e| panic!("{e:?}"));
            let count = pieces.count();
            let all: Vec<String> = (1..=count).map(|k| pieces.piece(k).unwrap_or_default()).collect();
            assert_eq!(all.concat(), *text, "{text:?}");
            assert!(all.iter().all(|p| !p.is_empty()), "{all:?}");
            assert_eq!(pieces.piece(count + 1), None);
            let mut at = 0;
            for (k, piece) in all.iter().enumerate().skip(1) {
                at += all[k - 1].len();
                let mark = 32 * k;
                let near = &text.as_bytes()[mark..(mark + 8).min(text.len())];
                let after = |byte| near.iter().position(|&b| b == byte).map(|i| mark + i + 1);
                match after(b'\n').or_else(|| after(b' ')) {
                    Some(cut) => assert_eq!(at, cut, "{text:?} piece {k}"),
                    None => assert!(at >= mark && text.is_char_boundary(at) && at - mark < 4, "{text:?} {k}"),
                }
                assert!(piece.len() <= 32 + 8, "{piece:?}");
            }
            // Backwards, one at a time: the same pieces.
            let back: Vec<String> = (1..=count).rev().map(|k| pieces.piece(k).unwrap_or_default()).collect();
            assert_eq!(back.into_iter().rev().collect::<Vec<_>>(), all);
            let _ = std::fs::remove_file(p);
        }
    }

    /// The pieces of a gzip file are those of the file it holds.
    #[test]
    fn a_gzip_file_has_the_pieces_of_what_it_holds() {
        let text: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let read = |p: &std::path::Path| {
            let mut pieces = Pieces::sized(p, 32, 8).unwrap_or_else(|e| panic!("{e:?}"));
            (1..=pieces.count()).map(|k| pieces.piece(k).unwrap_or_default()).collect::<Vec<_>>()
        };
        let plain = file("pieces-gz.txt", text.as_bytes());
        let gz = file("pieces-gz.txt.gz", &super::super::lines::tests::gzip(text.as_bytes()));
        assert!(read(&plain).len() > 5);
        assert_eq!(read(&gz), read(&plain));
        let _ = std::fs::remove_file(plain);
        let _ = std::fs::remove_file(gz);
    }

    /// Left out as a text file is: not UTF-8 (a bad byte in any piece), a
    /// NUL byte, only whitespace.
    #[test]
    fn a_file_that_is_not_text_has_no_pieces() {
        let mut bad = "text\n".repeat(30).into_bytes();
        for (name, at, byte, why) in [("utf8", 100, 0xFF, Skip::NotUtf8), ("nul", 140, 0, Skip::NotUtf8)] {
            let mut bytes = bad.clone();
            bytes[at] = byte;
            let p = file(&format!("pieces-{name}"), &bytes);
            assert_eq!(Pieces::sized(&p, 32, 8).err(), Some(why), "{name}");
            let _ = std::fs::remove_file(p);
        }
        bad.fill(b' ');
        let p = file("pieces-blank", &bad);
        assert_eq!(Pieces::sized(&p, 32, 8).err(), Some(Skip::Empty));
        let _ = std::fs::remove_file(p);
    }
}
