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

/// A canonical file with random edits ([`blkc_tests::mutate`]).
fn mutate(text: &str, edits: &[(usize, usize, u8)]) -> String {
    blkc_tests::mutate(text, edits)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let c = compile_str("fuzz.blk", &text);
        prop_assert!(c.program.is_some() || c.has_errors());
    }

    /// `--set` pairs from an alphabet of the characters that matter to
    /// them (dots, `=`, spaces, line breaks, braces, a multi-byte letter),
    /// on a file with sections: diagnostics, never a panic, each inside
    /// the text it points into.
    #[test]
    fn random_sets_never_panic(pairs in proptest::collection::vec("[a-z.= \n{}0-9é_]{0,16}", 1..4)) {
        let text = "attention local {\n window = 4\n}\nmlp wide {\n width = 2\n}\n\
                    block b {\n out = x + attn(rmsnorm(x), local) + mlp(x, wide)\n}\n";
        let loader = MemLoader::default().with("s.blk", text);
        let c = blkc::compile_with(Path::new("s.blk"), &loader, &pairs).expect("readable");
        prop_assert!(c.program.is_some() || c.has_errors());
        for d in &c.diagnostics {
            let len = c.sources.get(d.span.file).text.len();
            prop_assert!(d.span.start <= d.span.end && d.span.end as usize <= len + 1, "{:?}", d);
        }
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

/// `blkc check --fix` on every file of the repository that has a rejected
/// block: every fix it proposes passes the check that `blkc check` runs
/// (the same reports, with their diagnostics), changes the text, and leaves
/// a file that compiles; and it finds fixes for several of them.
#[test]
fn every_fix_passes_the_check() {
    use blkc::signal::report::{reports, Request};
    use blkc::signal::verdict::Status;
    let mut files = blk_files("blocks");
    files.extend(blk_files("examples"));
    files.extend(blk_files("tests/ui"));
    let (mut rejected, mut fixed) = (0, 0);
    for path in files {
        let Ok(c) = blkc::compile(&path, &blkc::FsLoader) else { continue };
        let Some(p) = &c.program else { continue };
        let req = Request::default();
        if !reports(p, blkc::span::FileId(0), &req).iter().any(|r| r.verdict == Status::Reject) {
            continue;
        }
        rejected += 1;
        let budget = std::time::Duration::from_secs(20);
        let outcomes = blkc::fix::fix(&path, &blkc::FsLoader, &[], &req, budget).expect("it compiles");
        for o in outcomes {
            let blkc::fix::Outcome::Fixed { block, fix, others } = o else { continue };
            for f in std::iter::once(&fix).chain(&others) {
                let original = std::fs::read_to_string(&f.file).unwrap_or_default();
                assert_ne!(f.text, original, "{}: `{block}`: the fix changes the text", rel(&path));
                // The fixed text where its file was, every other file as before.
                let mut loader = MemLoader::default();
                for other in blk_files("blocks").into_iter().chain(blk_files("examples")).chain([path.clone()]) {
                    let text = std::fs::read_to_string(&other).unwrap_or_default();
                    loader = loader.with(&other.to_string_lossy(), &text);
                }
                let loader = loader.with(&f.file.to_string_lossy(), &f.text);
                let after = blkc::compile(&path, &loader).expect("readable");
                let program = after.program.as_ref().unwrap_or_else(|| {
                    panic!(
                        "{}: `{block}` fixed by {:?} does not compile: {:?}",
                        rel(&path),
                        f.changes,
                        after.diagnostics
                    )
                });
                let verdict = reports(program, blkc::span::FileId(0), &req)
                    .into_iter()
                    .find(|r| r.block == block)
                    .map(|r| r.verdict);
                assert!(
                    matches!(verdict, Some(Status::Pass | Status::Warn)),
                    "{}: `{block}` fixed by {:?} is {verdict:?}",
                    rel(&path),
                    f.changes
                );
            }
            fixed += 1;
        }
    }
    println!("fixed {fixed} of {rejected} files with a rejected block");
    assert!(rejected >= 4, "the repository has rejected blocks to fix ({rejected})");
    assert_eq!(fixed, rejected, "every rejected block is fixed (in its own file where it is used)");
}
