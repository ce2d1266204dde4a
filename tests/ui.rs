//! Golden tests of diagnostics: each `tests/ui/<stage>/<case>.blk` is a bad
//! input; its snapshot holds the source and the rendered diagnostics, and
//! its `# blkc: expect` line names exactly the codes it reports. The
//! suite also checks that every diagnostic code of the registry is shown by
//! at least one case. Cases under `tests/ui/signal/` also run the signal
//! analysis.

use std::collections::BTreeSet;

use blkc::signal::report::{reports, Request};
use blkc::span::FileId;
use blkc::Code;
use blkc_tests::{blk_files, compile_rel, rel, rendered};

/// Codes that a static input file cannot show, and where they are tested.
const ELSEWHERE: &[(Code, &str)] = &[
    (Code::E1007, "a file over 1 MiB: `load` unit test in tests/robust.rs"),
    (Code::E5001, "a file with nothing to count: runtime/tests/cli.rs"),
    (Code::E5002, "a vocabulary that is not the tokenizer's: runtime/tests/train.rs"),
];

#[test]
fn ui_cases_match_their_snapshots_and_cover_every_code() {
    let cases = blk_files("tests/ui");
    assert!(cases.len() >= 40, "only {} ui cases", cases.len());
    let mut seen = BTreeSet::new();
    for case in &cases {
        let path = rel(case);
        let mut c = compile_rel(&path);
        if path.starts_with("tests/ui/signal/") {
            // Signal cases: the analysis's diagnostics join the compiler's.
            let p = c.program.as_ref().unwrap_or_else(|| panic!("{path} must compile:\n{}", rendered(&c)));
            let found: Vec<_> =
                reports(p, FileId(0), &Request::default()).into_iter().flat_map(|r| r.diagnostics).collect();
            c.diagnostics.extend(found);
            c.diagnostics.sort_by(|a, b| a.span.position_cmp(&b.span));
        }
        assert!(!c.diagnostics.is_empty(), "{path} produced no diagnostic");
        // Each case says what it is for; `blkc check` holds it to that.
        let text = std::fs::read_to_string(case).unwrap_or_default();
        let expected = blkc::expect::expectations(&text).unwrap_or_else(|e| panic!("{path}: bad expectation {e:?}"));
        let want: BTreeSet<Code> = expected.iter().map(|(c, _)| *c).collect();
        let have: BTreeSet<Code> = c.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(have, want, "{path}: the codes reported are not those of its `# blkc: expect` line");
        seen.extend(c.diagnostics.iter().map(|d| d.code));
        for d in &c.diagnostics {
            assert!(!d.help.is_empty(), "{path}: {} has no help", d.code.as_str());
            assert!(!d.label.is_empty(), "{path}: {} has no label", d.code.as_str());
            let first = d.message.chars().next().unwrap_or(' ');
            assert!(!first.is_uppercase(), "{path}: message not lowercase: {}", d.message);
        }
        let positions: Vec<_> = c.diagnostics.iter().map(|d| (d.span.file, d.span.start)).collect();
        assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{path}: diagnostics not sorted by position");
        let source = std::fs::read_to_string(case).unwrap_or_default();
        let name = path.trim_start_matches("tests/ui/").trim_end_matches(".blk").replace('/', "__");
        insta::with_settings!({ snapshot_path => "snapshots/ui", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name, format!("{source}\n────── diagnostics ──────\n{}", rendered(&c)));
        });
    }
    let missing: Vec<&str> = Code::ALL
        .iter()
        .filter(|c| !seen.contains(c) && !ELSEWHERE.iter().any(|(e, _)| e == *c))
        .map(|c| c.as_str())
        .collect();
    assert!(missing.is_empty(), "codes without a ui case: {missing:?}");
}

/// A note in another file than the error (here the width set on the
/// command line, the error at the file's heads) is shown in a snippet of
/// that file below the error's, so the value the message names is seen
/// where it was given.
#[test]
fn a_note_in_another_file_gets_its_own_snippet() {
    let c = blkc_tests::compile_rel_with("blocks/sas.blk", &["width=7".to_string()]);
    let d = c.diagnostics.iter().find(|d| d.code == Code::E2013).unwrap_or_else(|| panic!("no E2013"));
    assert_ne!(d.notes[0].0.file, d.span.file, "the width is set on the command line, the heads in the file");
    let text = rendered(&c);
    let error = text.find("4 heads do not divide the width 7").unwrap_or_else(|| panic!("{text}"));
    let heads = text.find("heads = 4").unwrap_or_else(|| panic!("the heads' snippet:\n{text}"));
    let width = text.find("width = 7").unwrap_or_else(|| panic!("the command line's snippet:\n{text}"));
    assert!(error < heads && heads < width, "error, then the heads, then the width:\n{text}");
    assert!(text.contains("<command line>") && text.contains("the width, 7"), "{text}");
}
