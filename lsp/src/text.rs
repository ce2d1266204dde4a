//! Byte offsets (the compiler's spans) to LSP positions and back. LSP
//! counts columns in UTF-16 code units; the compiler counts bytes.

use lsp_types::{Position, Range};

/// Where each line of a text starts, for offset ↔ position.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Lines { text, starts }
    }

    /// The position of byte `offset` (clamped to the text, moved back to a
    /// character boundary).
    pub fn position(&self, offset: usize) -> Position {
        let offset = self.text.floor_char_boundary(offset);
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let column = self.text[self.starts[line]..offset].encode_utf16().count();
        Position::new(line as u32, column as u32)
    }

    pub fn range(&self, start: usize, end: usize) -> Range {
        Range::new(self.position(start), self.position(end))
    }

    /// The byte offset of a position (a column past the line's end is the
    /// line's end; a line past the last is the text's end).
    pub fn offset(&self, p: Position) -> usize {
        let Some(&start) = self.starts.get(p.line as usize) else { return self.text.len() };
        let end = self.starts.get(p.line as usize + 1).map_or(self.text.len(), |&e| e);
        let mut units = 0;
        for (i, c) in self.text[start..end].char_indices() {
            if units >= p.character as usize || c == '\n' {
                return start + i;
            }
            units += c.len_utf16();
        }
        end
    }

    /// The whole text's range.
    pub fn all(&self) -> Range {
        self.range(0, self.text.len())
    }
}

/// The one edit that turns `before` into `after`: the text between their
/// common beginning and common end replaced (at character boundaries).
pub fn replacement(before: &str, after: &str) -> lsp_types::TextEdit {
    let mut pre = before.bytes().zip(after.bytes()).take_while(|(a, b)| a == b).count();
    while !before.is_char_boundary(pre) || !after.is_char_boundary(pre) {
        pre -= 1;
    }
    let room = before.len().min(after.len()) - pre;
    let mut suf = before.bytes().rev().zip(after.bytes().rev()).take(room).take_while(|(a, b)| a == b).count();
    while !before.is_char_boundary(before.len() - suf) || !after.is_char_boundary(after.len() - suf) {
        suf -= 1;
    }
    lsp_types::TextEdit {
        range: Lines::new(before).range(pre, before.len() - suf),
        new_text: after[pre..after.len() - suf].to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_positions_round_trip_through_utf16() {
        let text = "ab\nγ = 𝛼 + x\n\nlast";
        let lines = Lines::new(text);
        for (offset, _) in text.char_indices() {
            assert_eq!(lines.offset(lines.position(offset)), offset, "offset {offset}");
        }
        // `𝛼` is one char, four bytes, two UTF-16 units.
        let after = text.find(" + x").unwrap_or(0);
        assert_eq!(lines.position(after), Position::new(1, 6));
        assert_eq!(lines.position(text.len()), Position::new(3, 4));
        assert_eq!(lines.offset(Position::new(0, 99)), 2);
        assert_eq!(lines.offset(Position::new(9, 0)), text.len());
    }

    #[test]
    fn a_replacement_spans_only_what_changed() {
        let before = "block b {\n    h = attn(x)\n}\n";
        let after = "block b {\n    h = x + attn(x)\n}\n";
        let e = replacement(before, after);
        assert_eq!(e.range, Range::new(Position::new(1, 8), Position::new(1, 8)));
        assert_eq!(e.new_text, "x + ");
        // Repeated text at the seam (`aa` → `aaa`) and multi-byte characters.
        let e = replacement("γaa", "γaaa");
        assert_eq!((e.range.start, e.new_text.as_str()), (Position::new(0, 3), "a"));
        let e = replacement("αβ", "αγβ");
        assert_eq!((e.range, e.new_text.as_str()), (Range::new(Position::new(0, 1), Position::new(0, 1)), "γ"));
        assert_eq!(replacement("same", "same").new_text, "");
    }
}
