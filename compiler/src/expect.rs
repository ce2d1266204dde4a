//! Files that say what they should be reported for: a comment line
//!
//! ```text
//! # blkc: expect E3001
//! ```
//!
//! (several codes separated by spaces or commas, then free text if wanted,
//! on one or more such lines) declares that `blkc check` must report exactly those codes for
//! the file. A repository's negative examples — a block kept to show that
//! it collapses, a test input that must not compile — then pass `check` as
//! long as they fail the way they say, and fail it when they stop failing.

use std::collections::BTreeSet;

use crate::diag::{Code, Diagnostic};

/// The marker that starts an expectation comment.
const MARKER: &str = "blkc: expect";

/// The codes a file's text expects, in order of first mention, with the
/// 1-based line of each; `Err` for a word after the marker that is not a
/// code of the registry (with its line).
pub fn expectations(text: &str) -> Result<Vec<(Code, usize)>, (String, usize)> {
    let mut out: Vec<(Code, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix('#').map(str::trim_start) else { continue };
        let Some(codes) = rest.strip_prefix(MARKER) else { continue };
        // Codes, then (after the first word that is not one) free text.
        let words = codes.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty());
        for word in words.take_while(|w| looks_like_code(w)) {
            let code = Code::ALL.iter().copied().find(|c| c.as_str() == word).ok_or((word.to_string(), i + 1))?;
            if !out.iter().any(|(c, _)| *c == code) {
                out.push((code, i + 1));
            }
        }
    }
    Ok(out)
}

/// Whether a file's text expects a rejection by the signal check (`#
/// blkc: expect E3…`): a negative example, which `check --fix` leaves as it
/// is.
pub fn expects_rejection(text: &str) -> bool {
    expectations(text).is_ok_and(|e| e.iter().any(|(c, _)| c.as_str().starts_with("E3")))
}

/// `E1234` or `W1234`.
fn looks_like_code(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() == 5 && matches!(b[0], b'E' | b'W') && b[1..].iter().all(u8::is_ascii_digit)
}

/// How reported diagnostics compare with a file's expectations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Expected codes that were reported.
    pub met: Vec<Code>,
    /// Expected codes that were not reported.
    pub unmet: Vec<Code>,
}

impl Outcome {
    /// Whether the file failed exactly as it says it should.
    pub fn as_expected(&self) -> bool {
        self.unmet.is_empty()
    }
}

/// Compares the reported `diagnostics` with the `expected` codes.
pub fn compare(expected: &[(Code, usize)], diagnostics: &[Diagnostic]) -> Outcome {
    let reported: BTreeSet<Code> = diagnostics.iter().map(|d| d.code).collect();
    let (met, unmet) = expected.iter().map(|(c, _)| *c).partition(|c| reported.contains(c));
    Outcome { met, unmet }
}

/// Whether `d` is one the file expects.
pub fn is_expected(expected: &[(Code, usize)], d: &Diagnostic) -> bool {
    expected.iter().any(|(c, _)| *c == d.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_are_read_from_comment_lines() {
        let text = "# a block\n# blkc: expect E3001\nblock b {\n    # blkc: expect W3002, E2001 E3001\n    out = x  # blkc: expect E2002\n}\n";
        assert_eq!(expectations(text), Ok(vec![(Code::E3001, 2), (Code::W3002, 4), (Code::E2001, 4)]));
        assert_eq!(expectations("block b { out = x }\n"), Ok(Vec::new()));
        assert_eq!(expectations("# blkc: expect E9999\n"), Err(("E9999".to_string(), 1)));
        assert_eq!(expectations("# blkc: expect E3001 (the collapse, E2001)\n"), Ok(vec![(Code::E3001, 1)]));
    }
}
