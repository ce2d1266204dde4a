//! The server's answers never panic: every request kind at every position
//! of every shipped and `tests/ui` file, and of broken versions of them
//! (cut short, bytes replaced), answered from the current analysis and
//! from the last good one.

use std::path::{Path, PathBuf};

use blkc::span::FileId;
use blkc_lsp::analysis::{Analysis, Options};
use blkc_lsp::workspace::{Document, Documents};
use blkc_lsp::{complete, hover, symbols};
use lsp_types::Url;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn blk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            blk_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "blk") {
            out.push(p);
        }
    }
}

/// Every answer at every position (each request kind the server has).
fn answer_everything(a: &Analysis, text: &str, step: usize) {
    let others: Vec<&Analysis> = Vec::new();
    for offset in (0..=text.len()).step_by(step) {
        let _ = hover::hover(a, &others, FileId(0), offset as u32);
        let _ = a.index.at(FileId(0), offset as u32);
        let _ = complete::complete(text, offset, Some(a));
    }
    let _ = symbols::outline(a);
    let _ = symbols::hints(a);
    let _ = a.lsp_diagnostics(&Documents::default());
}

fn analyse(path: &Path, text: &str) -> Option<Analysis> {
    let mut docs = Documents::default();
    let uri = Url::from_file_path(path).ok()?;
    docs.open(Document { uri, text: text.to_string(), version: 1 });
    Analysis::of(path, &docs, Options { depth: Some(4), syntax_only: false })
}

/// A small deterministic generator (the test must not depend on a seed
/// that changes between runs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Answers every request on each of `files` and on six broken versions of
/// it (each numbered: the number seeds its generator); the number of
/// broken versions that failed to parse.
fn break_each<'a>(files: impl Iterator<Item = (usize, &'a PathBuf)>) -> usize {
    let mut broken_parses = 0;
    for (i, path) in files {
        let mut rng = Lcg(7 + i as u64);
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let Some(good) = analyse(path, &text) else { panic!("{} cannot be analysed", path.display()) };
        answer_everything(&good, &text, 1);
        // Broken versions: the last good analysis answers positions of the
        // new text (as the server does), and the broken one answers too.
        let bytes = ['{', '}', '(', ')', '=', '"', '#', '\n', 'x', '1', '.', 'γ'];
        for _ in 0..6 {
            let cut = text.floor_char_boundary(rng.next(text.len() + 1));
            let mut broken = text[..cut].to_string();
            broken.push(bytes[rng.next(bytes.len())]);
            // Drop a few characters after the insertion.
            broken.extend(text[cut..].chars().skip(rng.next(40)));
            let Some(b) = analyse(path, &broken) else { continue };
            broken_parses += usize::from(!b.parsed());
            answer_everything(&b, &broken, 3);
            for offset in (0..=broken.len()).step_by(7) {
                let _ = hover::hover(&good, &[], FileId(0), offset as u32);
                let _ = complete::complete(&broken, offset, Some(&good));
            }
        }
    }
    broken_parses
}

#[test]
fn no_request_panics_on_any_file_or_any_broken_version_of_it() {
    let mut files = Vec::new();
    for dir in ["blocks", "examples", "tests/ui"] {
        blk_files(&root().join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() >= 60, "only {} files", files.len());
    // The files dealt to as many threads as there are cores (one test:
    // cargo runs it alone), each file broken by its own generator.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let broken_parses: usize = std::thread::scope(|s| {
        let files = &files;
        let parts: Vec<_> = (0..threads)
            .map(|k| s.spawn(move || break_each(files.iter().enumerate().skip(k).step_by(threads))))
            .collect();
        parts.into_iter().map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).sum()
    });
    assert!(broken_parses > 50, "only {broken_parses} broken versions failed to parse: the test breaks too little");
}
