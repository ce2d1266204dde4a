//! `blkc tokenize`: a text corpus as token files that train exactly as the
//! text does (same split, same packing, so the same batches and losses),
//! written in bounded memory.

use std::path::Path;

use super::train::{blkc, losses, ok, repo, scratch, text, tiny};

fn arg(p: &Path) -> &str {
    p.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

/// Trains the tiny model of `d` on `data` (a flag) into `out`, with `sets`.
fn trained(d: &Path, out: &str, data: &str, sets: &[&str]) {
    let mut args = vec!["train", "tiny.blk", "--out", out, "--data", data, "-q"];
    for s in sets {
        args.extend(["--set", s]);
    }
    ok(&blkc(d, &args));
}

#[test]
fn token_files_train_as_their_text() {
    let d = scratch("tokenize");
    tiny(&d, "sas_p", "causal", 258, "steps = 4\neval_every = 2");
    let src = repo().join("compiler/src");
    // A directory of text with the bytes tokenizer.
    trained(&d, "text", arg(&src), &[]);
    let o = blkc(&d, &["tokenize", arg(&src), "--tokenizer", "bytes", "--out", "toks"]);
    ok(&o);
    assert!(text(&o.stdout).contains("train.bin: ") && text(&o.stdout).contains("val.bin: "), "{}", text(&o.stdout));
    trained(&d, "ids", "toks", &[]);
    let (a, b) = (losses(&d.join("text")), losses(&d.join("ids")));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "the same batches, the same losses and validation losses");
    // A single file: its last tenth validates, cut where the text path cuts.
    let one = src.join("syntax/parse.rs");
    trained(&d, "one-text", arg(&one), &[]);
    ok(&blkc(&d, &["tokenize", arg(&one), "--tokenizer", "bytes", "--out", "one"]));
    trained(&d, "one-ids", "one", &[]);
    assert_eq!(losses(&d.join("one-text")), losses(&d.join("one-ids")));
    // Token files already there are never overwritten; nothing else is
    // tokenised.
    let again = blkc(&d, &["tokenize", arg(&src), "--tokenizer", "bytes", "--out", "toks"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("train.bin` exists"), "{}", text(&again.stderr));
    // A BPE cannot be trained on ids, and there is none beside them.
    let o = blkc(&d, &["train", "tiny.blk", "--out", "other", "--data", "toks", "--set", "tokenizer=bpe", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("name the tokenizer that made it"), "{}", text(&o.stderr));
    let ids = blkc(&d, &["tokenize", "toks", "--tokenizer", "bytes", "--out", "other"]);
    assert!(text(&ids.stderr).contains("tokenised"), "{}", text(&ids.stderr));
    assert!(!d.join("other").exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// JSON lines beside a text file, with a trained BPE: records are named
/// `file:LINE` and ordered by name (line 10 before line 2), as the text
/// path orders them.
#[test]
fn json_lines_and_a_bpe_tokenise_as_they_train() {
    let d = scratch("tokenize-jsonl");
    tiny(&d, "sas_p", "causal", 300, "tokenizer = bpe\nsteps = 1");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "bpe", "-q"]));
    let corpus = d.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap_or_else(|e| panic!("{e}"));
    let source = std::fs::read_to_string(repo().join("compiler/src/syntax/format.rs")).unwrap_or_default();
    let records: String = source
        .lines()
        .map(|l| format!("{}\n", serde_json::json!({ "content": l, "n": 1 })))
        .chain(["{\"other\": 1}\n".to_string(), "not json\n".to_string()])
        .collect();
    std::fs::write(corpus.join("lines.jsonl"), records).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(repo().join("compiler/src/syntax/parse.rs"), corpus.join("parse.rs"))
        .unwrap_or_else(|e| panic!("{e}"));
    tiny(&d, "sas_p", "causal", 300, "tokenizer = \"bpe/tokenizer.json\"\nsteps = 3\neval_every = 3");
    trained(&d, "text", "corpus", &["data_field=\"content\""]);
    let o = blkc(
        &d,
        &["tokenize", "corpus", "--tokenizer", "bpe/tokenizer.json", "--out", "toks", "--data-field", "content"],
    );
    ok(&o);
    assert!(text(&o.stderr).contains("JSON lines without their text field"), "{}", text(&o.stderr));
    trained(&d, "ids", "toks", &[]);
    let (a, b) = (losses(&d.join("text")), losses(&d.join("ids")));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&d);
}

/// `--tokenizer bpe`: the BPE that `tokenize` trains on a training split no
/// larger than `--sample-bytes` is, byte for byte, the one `blkc train`
/// trains on that text, and its token files train as the text does.
#[test]
fn tokenize_trains_the_bpe_train_trains() {
    let d = scratch("tokenize-bpe");
    let src = repo().join("compiler/src/syntax");
    tiny(&d, "sas_p", "causal", 300, "tokenizer = bpe\nsteps = 3\neval_every = 3");
    trained(&d, "text", arg(&src), &[]);
    let o = blkc(&d, &["tokenize", arg(&src), "--tokenizer", "bpe", "--vocab", "300", "--out", "toks"]);
    ok(&o);
    assert!(text(&o.stdout).contains("tokenizer.json: a byte-level BPE of 300 tokens"), "{}", text(&o.stdout));
    let read = |p: &str| std::fs::read(d.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(read("toks/tokenizer.json") == read("text/tokenizer.json"), "the same BPE as train's");
    // `tokenizer = bpe` on the ids takes the BPE beside them; naming it
    // does the same.
    trained(&d, "ids", "toks", &[]);
    trained(&d, "named", "toks", &["tokenizer=\"toks/tokenizer.json\""]);
    let a = losses(&d.join("text"));
    assert_eq!(a.len(), 3);
    assert_eq!(a, losses(&d.join("ids")));
    assert_eq!(a, losses(&d.join("named")));
    assert!(read("ids/tokenizer.json") == read("toks/tokenizer.json"), "the run keeps the BPE it used");
    // A sample: trained on part of the split, so another BPE.
    let o = blkc(
        &d,
        &["tokenize", arg(&src), "--tokenizer", "bpe", "--vocab", "300", "--out", "few", "--sample-bytes", "30K"],
    );
    ok(&o);
    assert!(text(&o.stderr).contains("an evenly spread sample of 0.0 MB"), "{}", text(&o.stderr));
    assert!(read("few/tokenizer.json") != read("toks/tokenizer.json"));
    // The ids say which tokenizer made them (`tokens.json`): another BPE
    // of the same size is refused, the runs' own copies of this one read
    // them.
    let record: serde_json::Value = serde_json::from_slice(&read("toks/tokens.json")).unwrap_or_default();
    assert_eq!(record["vocab"], 300, "{record}");
    let o = blkc(
        &d,
        &["train", "tiny.blk", "--out", "other", "--data", "toks", "--set", "tokenizer=\"few/tokenizer.json\""],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("holds the ids of") && err.contains("toks/tokens.json"), "{err}");
    for run in ["text", "ids"] {
        ok(&blkc(&d, &["eval", run, "--data", "toks", "--batches", "1"]));
    }
    // Refused before anything is read or written.
    for (args, why) in [
        (&["--tokenizer", "bpe", "--out", "no"][..], "needs --vocab"),
        (&["--tokenizer", "bpe", "--vocab", "100", "--out", "no"], "at least 258 tokens"),
        (&["--tokenizer", "bytes", "--vocab", "300", "--out", "no"], "--vocab is for a tokenizer to train"),
        (&["--tokenizer", "bpe", "--vocab", "300", "--out", "no", "--sample-bytes", "2X"], "K, M, G or T"),
    ] {
        let o = blkc(&d, &[&["tokenize", arg(&src)][..], args].concat());
        assert_eq!(o.status.code(), Some(if why.contains("K, M") { 2 } else { 1 }), "{args:?}");
        assert!(text(&o.stderr).contains(why), "{args:?}: {}", text(&o.stderr));
        assert!(!d.join("no").exists());
    }
    // A BPE that cannot reach the vocabulary asked is refused before the
    // ids are written, with the size it reached.
    let o = blkc(
        &d,
        &["tokenize", arg(&src), "--tokenizer", "bpe", "--vocab", "300", "--out", "tiny", "--sample-bytes", "200"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("a larger --sample-bytes"), "{}", text(&o.stderr));
    assert!(std::fs::read_dir(d.join("tiny")).map(|r| r.count()).unwrap_or(0) == 0, "nothing written");
    std::fs::remove_file(d.join("toks/train.bin")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(d.join("toks/val.bin")).unwrap_or_else(|e| panic!("{e}"));
    let again = blkc(&d, &["tokenize", arg(&src), "--tokenizer", "bpe", "--vocab", "300", "--out", "toks"]);
    assert!(text(&again.stderr).contains("tokenizer.json` exists"), "{}", text(&again.stderr));
    let _ = std::fs::remove_dir_all(&d);
}
