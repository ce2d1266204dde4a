//! No input makes the front end panic, hang or overflow its stack: random
//! bytes, random mutations of the canonical files, and pathological shapes
//! (deep nesting, long chains, huge blocks, huge files).

use std::path::Path;

use blkc::{compile_str, Code, MemLoader};
use blkc_tests::{blk_files, rel};
use proptest::prelude::*;

fn corpus() -> Vec<String> {
    let mut files = blk_files("blocks");
    files.extend(blk_files("examples"));
    files.extend(blk_files("tests/ui"));
    files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect()
}

/// A canonical file with random edits: deletions, insertions of
/// grammar-relevant characters, and swaps of two byte ranges.
fn mutate(text: &str, edits: &[(usize, usize, u8)]) -> String {
    const PIECES: &[&str] = &[
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
        "\"",
        "#",
        "\n",
        "x",
        "attn(",
        "layer 0 {",
        "param",
        "1e999",
        "softmax",
        "out",
        " ",
    ];
    let mut s: Vec<u8> = text.as_bytes().to_vec();
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
                let piece = PIECES[len % PIECES.len()].as_bytes();
                s.splice(at..at, piece.iter().copied());
            }
            _ => {
                let other = (pos / 7) % s.len();
                s.swap(at, other);
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let c = compile_str("fuzz.blk", &text);
        prop_assert!(c.program.is_some() || c.has_errors());
    }

    #[test]
    fn mutated_canonical_files_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>()), 1..12),
    ) {
        let files = corpus();
        let text = mutate(&files[which.index(files.len())], &edits);
        let c = compile_str("mutated.blk", &text);
        // Every diagnostic points inside its file.
        for d in &c.diagnostics {
            prop_assert!(d.span.start <= d.span.end && d.span.end as usize <= text.len() + 1, "{:?}", d);
        }
    }
}

#[test]
fn pathological_shapes_are_diagnosed_not_crashed() {
    let cases = [
        // Deep nesting right at and beyond the limit.
        format!("block b {{\n out = {}x{}\n}}", "(".repeat(31), ")".repeat(31)),
        format!("block b {{\n out = {}x{}\n}}", "attn(".repeat(200), ")".repeat(200)),
        // A right-associative chain at the operator limit.
        format!("block b {{\n param g = {}2\n out = x + g * attn(x)\n}}", "2 ^ ".repeat(250)),
        // A long sum at the operator limit.
        format!("block b {{\n out = x{}\n}}", " + attn(x)".repeat(250)),
        // Too many statements.
        format!("block b {{\n{}\n out = x\n}}", (0..600).map(|i| format!(" h{i} = x")).collect::<Vec<_>>().join("\n")),
        // Too many layer overrides.
        format!(
            "block b {{\n n = x\n{}\n out = x + attn(n)\n}}",
            (0..100).map(|i| format!(" layer {i} {{ n = rmsnorm(x) }}")).collect::<Vec<_>>().join("\n")
        ),
        // Many blocks.
        (0..2000).map(|i| format!("block b{i} {{ out = x + attn(x) }}\n")).collect::<String>(),
    ];
    for text in &cases {
        let c = compile_str("p.blk", text);
        assert!(c.program.is_some() || c.has_errors());
    }
}

#[test]
fn a_huge_file_is_refused_with_e1007() {
    let big = format!("block b {{\n out = x\n}}\n{}", "# padding\n".repeat(120_000));
    let loader = MemLoader::default().with("big.blk", &big);
    let c = blkc::compile(Path::new("big.blk"), &loader).expect("readable");
    assert_eq!(c.diagnostics.first().map(|d| d.code), Some(Code::E1007));
}

#[test]
fn corpus_is_not_empty() {
    assert!(corpus().len() > 40, "{:?}", blk_files("tests/ui").iter().map(|p| rel(p)).collect::<Vec<_>>());
}
