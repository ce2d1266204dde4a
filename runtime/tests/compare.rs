//! `blkc compare` as a user runs it, on tiny models: variants with the same
//! seed see the same batches (two copies of one model log the same losses,
//! step by step), seeds differ, and an interrupted comparison run again
//! ends with the numbers of an uninterrupted one.

use std::path::Path;

use crate::train::{blkc, losses, ok, scratch, text, tiny};

/// Two variants in `d`: `tiny.blk` (SAS-P) and `twin.blk` (the same model),
/// and `pre.blk` (Pre-LN).
fn variants(d: &Path) {
    tiny(d, "preln", "causal", 258, "");
    std::fs::rename(d.join("tiny.blk"), d.join("pre.blk")).unwrap_or_else(|e| panic!("{e}"));
    tiny(d, "sas_p", "causal", 258, "");
    std::fs::copy(d.join("tiny.blk"), d.join("twin.blk")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn variants_with_one_seed_see_the_same_batches() {
    let d = scratch("compare-batches");
    variants(&d);
    let o = blkc(&d, &["compare", "tiny.blk", "twin.blk", "pre.blk", "--steps", "5", "--seeds", "2", "--out", "cmp"]);
    ok(&o);
    let run = |v: &str, s: u64| losses(&d.join("cmp").join(v).join(format!("seed-{s}")));
    for seed in 0..2 {
        let (a, b) = (run("tiny", seed), run("twin", seed));
        assert_eq!(a.len(), 5, "a loss per step");
        assert_eq!(a, b, "the same model with seed {seed} learns the same: same weights, same batches");
    }
    assert_ne!(run("tiny", 0), run("tiny", 1), "another seed, other weights and batches");
    assert_ne!(run("tiny", 0), run("pre", 0), "another block, other losses");
    let table = text(&o.stdout);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| tiny") || l.starts_with("| twin") || l.starts_with("| pre")).count(),
        3,
        "{table}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("cmp/summary.json")).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(summary["variants"][0]["seeds"], 2, "{summary}");
    // Bits per byte: the mean validation loss per token over the bytes per
    // token of the validation text.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("cmp/tiny/seed-0/run.json")).unwrap_or_default())
            .unwrap_or_default();
    let (tokens, bytes) = (info["valid_tokens"].as_f64().unwrap_or(0.0), info["valid_bytes"].as_f64().unwrap_or(0.0));
    // A token per byte, and one end of text per document.
    assert!(bytes > 0.0 && tokens > bytes && tokens - bytes < 10.0, "{info}");
    let loss = summary["variants"][0]["eval_loss"][0].as_f64().unwrap_or(f64::NAN);
    let bpb = summary["variants"][0]["eval_bits_per_byte"].as_f64().unwrap_or(f64::NAN);
    assert!((bpb - loss / std::f64::consts::LN_2 * tokens / bytes).abs() < 1e-9, "{summary}");
    assert!(table.contains("validation bits/byte") && table.contains(&format!("{bpb:.4}")), "{table}");
    assert!(d.join("cmp/summary.md").is_file());
}

#[test]
fn an_interrupted_comparison_finishes_with_the_numbers_of_an_uninterrupted_one() {
    let d = scratch("compare-resume");
    variants(&d);
    let args = |out: &str| {
        vec!["compare", "tiny.blk", "pre.blk", "--steps", "6", "--out", out]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| blkc(&d, &a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&run(args("whole")));
    let mut stopped = args("parts");
    stopped.extend(["--stop-at".to_string(), "3".to_string()]);
    let o = run(stopped);
    ok(&o);
    assert!(text(&o.stderr).contains("run the same command again"), "{}", text(&o.stderr));
    assert!(!d.join("parts/pre").exists(), "stopped during the first variant");
    ok(&run(args("parts")));
    for v in ["tiny", "pre"] {
        let (a, b) = (losses(&d.join("whole").join(v).join("seed-0")), losses(&d.join("parts").join(v).join("seed-0")));
        assert_eq!(a.len(), 6);
        assert_eq!(a, b, "{v}: resumed losses equal the uninterrupted ones");
    }
    // A finished comparison run again trains nothing.
    let before = std::fs::read_to_string(d.join("parts/tiny/seed-0/metrics.jsonl")).unwrap_or_default();
    ok(&run(args("parts")));
    assert_eq!(before, std::fs::read_to_string(d.join("parts/tiny/seed-0/metrics.jsonl")).unwrap_or_default());
}

#[test]
fn a_sweep_trains_every_value_and_refuses_a_bad_one() {
    let d = scratch("compare-sweep");
    variants(&d);
    let o = blkc(&d, &["compare", "tiny.blk", "--sweep", "lr=1e-3,1e-2", "--steps", "3", "--out", "cmp"]);
    ok(&o);
    let run = |v: &str| d.join("cmp").join(v).join("seed-0");
    let info = |v: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run(v).join("run.json")).unwrap_or_default()).unwrap_or_default()
    };
    assert_eq!(info("tiny.lr=1e-3")["settings"]["lr"], 1e-3);
    assert_eq!(info("tiny.lr=1e-2")["settings"]["lr"], 1e-2);
    let (slow, fast) = (losses(&run("tiny.lr=1e-3")), losses(&run("tiny.lr=1e-2")));
    assert_eq!(slow[&1].0, fast[&1].0, "the same weights and batch before the first update");
    assert_ne!(slow[&3].0, fast[&3].0, "then the learning rates differ");
    // The final validation loss against the learning rate, drawn.
    let svg = std::fs::read_to_string(d.join("cmp/sweep-lr.svg")).unwrap_or_default();
    assert!(svg.contains("against lr") && svg.contains("tiny"), "sweep-lr.svg");
    assert!(d.join("cmp/sweep-lr.png").is_file());
    for bad in ["lr", "colour=red,blue", "lr=-1"] {
        let o = blkc(&d, &["compare", "tiny.blk", "--sweep", bad, "--steps", "3", "--out", "bad"]);
        assert_eq!(o.status.code(), Some(2), "--sweep {bad}: {}", text(&o.stderr));
        assert!(!d.join("bad").exists(), "--sweep {bad} created runs");
    }
    // Variants that would be one run, and no seed at all, are refused
    // before anything is trained.
    let twice: [&[&str]; 4] = [
        &["--sweep", "lr=1e-3,1e-3"],
        &["--sweep", "lr=1e-3", "--sweep", "lr=1e-2"],
        &["--sweep", "lr=1e-3,1e-2", "--set", "lr=1e-4"],
        &["--seeds", "0"],
    ];
    for extra in twice {
        let o = blkc(&d, &[&["compare", "tiny.blk", "--steps", "3", "--out", "bad"], extra].concat());
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(["twice", "both set", "0 is not in 1.."].iter().any(|w| err.contains(w)), "{extra:?}: {err}");
        assert!(!d.join("bad").exists(), "{extra:?} created runs");
    }
    // A setting out of range is the compiler's diagnostic, as in `train`.
    let o = blkc(&d, &["compare", "tiny.blk", "--steps", "0", "--out", "bad"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("variant `tiny`: error[E2015]"), "{}", text(&o.stderr));
    assert!(!d.join("bad").exists());
}

/// A sweep over a section's setting (`SECTION.KEY`): SAS-P's shaped
/// attention through a window of 2 tokens and of all 32. Its queries start
/// at zero, where the softmax equals the `centre` it is taken from, so the
/// two start as the same function (the same first loss) and part as the
/// queries learn; each run keeps its setting for a resume.
#[test]
fn a_sweep_over_a_sections_setting_trains_each_value() {
    let d = scratch("compare-section");
    variants(&d);
    let o = blkc(&d, &["compare", "tiny.blk", "--sweep", "shaped.window=2,32", "--steps", "4", "--out", "cmp"]);
    ok(&o);
    let run = |v: &str| d.join("cmp").join(v).join("seed-0");
    let (narrow, whole) = (losses(&run("tiny.shaped.window=2")), losses(&run("tiny.shaped.window=32")));
    assert!((narrow[&1].0 - whole[&1].0).abs() < 1e-5, "the same function at init: {narrow:?} {whole:?}");
    assert_ne!(narrow[&4].0, whole[&4].0, "then the windows differ");
    let sources = std::fs::read_to_string(run("tiny.shaped.window=2").join("source.json")).unwrap_or_default();
    assert!(sources.contains("shaped.window=2"), "{sources}");
    assert!(d.join("cmp/sweep-shaped.window.svg").is_file(), "the sweep is drawn");
    // A section that is not there is the compiler's located diagnostic.
    let o = blkc(&d, &["compare", "tiny.blk", "--sweep", "shapd.window=2,4", "--steps", "4", "--out", "bad"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("did you mean `shaped`?"), "{}", text(&o.stderr));
    assert!(!d.join("bad").exists());
}

/// Variants that read their text through different tokenizers are told
/// so before anything trains; a variant that cannot train is named, after
/// the runs before it have finished (and are kept); and a sweep says a
/// file's diagnostics once, not once per value.
#[test]
fn unlike_variants_are_named_and_a_failing_one_too() {
    let d = scratch("compare-unlike");
    variants(&d);
    // `pre.blk` with a vocabulary that the bytes tokenizer does not have.
    let pre = std::fs::read_to_string(d.join("pre.blk")).unwrap_or_default();
    std::fs::write(d.join("pre.blk"), pre.replace("vocab = 258", "vocab = 300")).unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(&d, &["compare", "tiny.blk", "pre.blk", "--steps", "2", "--out", "cmp", "-q"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let note = err.lines().find(|l| l.starts_with("note: the variants do not share their text")).unwrap_or_default();
    assert!(note.contains("tiny reads") && note.contains("of 258 tokens") && note.contains("of 300 tokens"), "{err}");
    assert!(err.contains("error: pre seed 0 did not train"), "named even with -q: {err}");
    assert!(err.contains("run the same command again"), "{err}");
    assert_eq!(losses(&d.join("cmp/tiny/seed-0")).len(), 2, "the run before it finished");
    // Alike variants: no note. A warning of the file, once for two values.
    let tiny = std::fs::read_to_string(d.join("tiny.blk")).unwrap_or_default();
    let spare = "use \"sas-p.blk\"\nblock spare {\n    param unused_gain = 0.5\n    out = x\n}";
    let unused = tiny.replace("use \"sas-p.blk\"", spare);
    std::fs::write(d.join("tiny.blk"), unused).unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(&d, &["compare", "tiny.blk", "twin.blk", "--sweep", "lr=1e-3,1e-2", "--steps", "1", "--out", "alike"]);
    ok(&o);
    let err = text(&o.stderr);
    assert!(!err.contains("do not share"), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning[")).collect();
    assert_eq!(warnings, ["warning[W2003]: param `unused_gain` is never used"], "{err}");
}
