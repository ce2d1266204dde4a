//! A run directory is safe against users, crashes, full disks and other
//! processes: each test below is one way a run used to end in a panic, a
//! hang, an out-of-memory kill, silently wrong numbers or a dead end
//! (docs/training.md, "What survives what").

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::train::{blkc, command, losses, ok, repo, scratch, text, tiny, wait_for_lines};

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write(p: &Path, s: &str) {
    std::fs::write(p, s).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{} → {}: {e}", from.display(), to.display()));
}

/// Asserts exit 1 with `what` in the message and no panic.
fn refused(o: &std::process::Output, what: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected a refusal with `{what}`:\n{err}");
    assert!(err.contains(what), "expected `{what}` in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn ckpt(run: &Path, step: u64) -> std::path::PathBuf {
    run.join(format!("checkpoints/step-{step:08}"))
}

/// Runs the shell `commands` in `d` with `d/mnt` a 2 MB tmpfs (in a mount
/// namespace of their own: no root needed) and the cache in `d/cache`.
#[cfg(target_os = "linux")]
fn on_a_small_disk(d: &Path, commands: &str) {
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap_or_else(|e| panic!("{e}"));
    let script = format!(
        "set -u\nmount -t tmpfs -o size=2m tmpfs {m}\nexport BLKC_CACHE={d}/cache\ncd {d}\n{commands}",
        m = mnt.display(),
        d = d.display(),
    );
    let status = Command::new("unshare").args(["-rm", "sh", "-c", &script]).status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "unshare -rm (util-linux) could not run the script: {status:?}"
    );
}

/// Edits a JSON file in place.
fn edit(p: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{e}"));
    f(&mut v);
    write(p, &v.to_string());
}

#[cfg(unix)]
#[test]
fn one_writer_per_run_and_sigterm_checkpoints_like_ctrl_c() {
    let d = scratch("writers");
    tiny(&d, "sas_p", "causal", 258, "");
    let run = d.join("run");
    let mut first =
        command(&d, &["train", "tiny.blk", "--out", "run", "--steps", "100000", "--set", "eval_every=100000"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
    wait_for_lines(&run, 4, &mut first);
    let holder = format!("process {}", first.id());
    refused(&blkc(&d, &["train", "--resume", "run", "--stop-at", "2"]), &holder);
    refused(&blkc(&d, &["train", "tiny.blk", "--out", "run"]), &holder);
    let _ = Command::new("kill").args(["-TERM", &first.id().to_string()]).status();
    let status = first.wait().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(143), "SIGTERM stops with 128 + 15 after its checkpoint");
    let done = losses(&run).len() as u64;
    assert_eq!(
        read(&run.join("checkpoints/latest")).trim(),
        format!("step-{done:08}"),
        "a checkpoint of the last step"
    );
    // The lock died with its holder: the run continues.
    ok(&blkc(&d, &["train", "--resume", "run", "--stop-at", &(done + 2).to_string()]));
    assert_eq!(losses(&run).len() as u64, done + 2);
    let _ = std::fs::remove_dir_all(&d);
}

/// A stop signal while the run is prepared (here: a BPE trained on the
/// repository's sources, then the corpus encoded) exits at once with 128 +
/// the signal and leaves no run directory, instead of announcing a
/// checkpoint and waiting for the preparation to end.
#[cfg(unix)]
#[test]
fn a_stop_signal_before_the_first_step_exits_at_once_and_leaves_nothing() {
    use std::io::BufRead;
    let d = scratch("prepare-stop");
    let data = format!("data = \"{}\"", repo().join("runtime/src").display());
    tiny(&d, "sas_p", "causal", 2048, &format!("{data}\ntokenizer = bpe\n"));
    let mut child = command(&d, &["train", "tiny.blk", "--out", "run"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        let training = line.starts_with("tokenizer: training");
        seen.push(line);
        if training {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.starts_with("tokenizer: training")), "{seen:?}");
    let signalled = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    let rest: Vec<String> = lines.map(Result::unwrap_or_default).collect();
    assert_eq!(status.code(), Some(143), "{rest:?}");
    assert!(signalled.elapsed() < Duration::from_secs(20), "exited {:?} after the signal", signalled.elapsed());
    assert!(rest.iter().any(|l| l.contains("stopping before the first step (nothing to save)")), "{rest:?}");
    assert!(!rest.iter().any(|l| l.starts_with("step ") || l.starts_with("model:")), "{rest:?}");
    assert!(!d.join("run").exists(), "the new run's directory is removed");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn weights_and_moments_of_another_run_are_refused_by_name() {
    let d = scratch("foreign");
    tiny(&d, "sas_p", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "a", "--steps", "10", "-q"]));
    tiny(&d, "preln", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "b", "--steps", "10", "-q"]));
    let (a, b) = (ckpt(&d.join("a"), 10), ckpt(&d.join("b"), 10));
    let own = d.join("own.safetensors");
    copy(&a.join("model.safetensors"), &own);
    // Another model's weights: the recorded checksum does not match.
    copy(&b.join("model.safetensors"), &a.join("model.safetensors"));
    refused(&blkc(&d, &["eval", "a"]), "is damaged");
    // Without checksums (an older checkpoint), the shapes still do not.
    edit(&a.join("state.json"), |v| v["checksums"] = serde_json::json!({}));
    for args in [vec!["eval", "a"], vec!["sample", "a", "--tokens", "2"], vec!["train", "--resume", "a"]] {
        refused(&blkc(&d, &args), "does not fit this model");
    }
    // Another model's optimiser state: the moments name its parameters.
    copy(&own, &a.join("model.safetensors"));
    copy(&b.join("optimizer.bin"), &a.join("optimizer.bin"));
    refused(&blkc(&d, &["train", "--resume", "a", "--steps", "12", "--reschedule"]), "belongs to another model");
    // An edited source: the rebuilt model no longer fits the weights.
    let source = d.join("b/source.json");
    write(&source, &read(&source).replace("width = 64", "width = 32"));
    refused(&blkc(&d, &["eval", "b"]), "does not fit this model");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stored_settings_and_states_are_validated() {
    let d = scratch("stored");
    tiny(&d, "sas_p", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "10", "-q"]));
    let info = d.join("run/run.json");
    let saved = read(&info);
    for (key, value) in [
        ("batch", serde_json::json!(0)),
        ("eval_every", serde_json::json!(0)),
        ("checkpoint_every", serde_json::json!(0)),
        ("lr", serde_json::json!(-0.01)),
        ("optimizer", serde_json::json!("lion")),
        ("device", serde_json::json!("tpu")),
    ] {
        edit(&info, |v| v["settings"][key] = value.clone());
        let o = blkc(&d, &["train", "--resume", "run", "--steps", "12", "--reschedule"]);
        refused(&o, "settings blkc refuses");
        assert!(text(&o.stderr).contains(key), "{key}: {}", text(&o.stderr));
        refused(&blkc(&d, &["eval", "run"]), key);
        write(&info, &saved);
    }
    let state = ckpt(&d.join("run"), 10).join("state.json");
    let saved = read(&state);
    edit(&state, |v| v["step"] = serde_json::json!(1_000_000));
    refused(&blkc(&d, &["train", "--resume", "run"]), "past the 10 steps");
    edit(&state, |v| v["step"] = serde_json::json!(5));
    refused(&blkc(&d, &["train", "--resume", "run"]), "belong to different runs");
    write(&state, &saved);
    ok(&blkc(&d, &["train", "--resume", "run", "--steps", "12", "--reschedule", "-q"]));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn recovery_has_no_dead_ends() {
    let d = scratch("recover");
    tiny(&d, "sas_p", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "20", "-q"]));
    let run = d.join("run");
    let latest = run.join("checkpoints/latest");
    for damaged in ["garbage\u{1}", "../../elsewhere", "step-00000099"] {
        write(&latest, damaged);
        let o = blkc(&d, &["eval", "run", "--json"]);
        ok(&o);
        assert!(text(&o.stderr).contains("using the newest complete checkpoint"), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        assert_eq!(v["step"], 20, "{v}");
    }
    // A newest checkpoint without its optimiser state: its weights are
    // evaluated, and a resume passes it over for the one before (below).
    let _ = std::fs::remove_file(ckpt(&run, 20).join("optimizer.bin"));
    let o = blkc(&d, &["eval", "run", "--json"]);
    ok(&o);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()["step"], 20);
    // Temporaries of killed writers are removed by the next one.
    let stale = [
        run.join("checkpoints/.step-00000030.tmp-1"),
        run.join(".run.json.tmp-7"),
        run.join("checkpoints/.latest.tmp-9"),
    ];
    let _ = std::fs::create_dir_all(&stale[0]);
    write(&stale[1], "{");
    write(&stale[2], "x");
    let o = blkc(&d, &["train", "--resume", "run", "--stop-at", "11", "-q"]);
    ok(&o);
    assert!(text(&o.stderr).contains("step-00000010"), "resumed from step 10: {}", text(&o.stderr));
    assert!(stale.iter().all(|p| !p.exists()), "stale temporaries left");
    // A run stopped before its first checkpoint resumes from step 0 …
    let _ = std::fs::remove_dir_all(run.join("checkpoints"));
    let o = blkc(&d, &["train", "--resume", "run", "--stop-at", "3"]);
    ok(&o);
    assert!(text(&o.stderr).contains("starting from step 0"), "{}", text(&o.stderr));
    assert_eq!(losses(&run).keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    // … or is taken over by a fresh run.
    let _ = std::fs::remove_dir_all(run.join("checkpoints"));
    let o = blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "2"]);
    ok(&o);
    assert!(text(&o.stderr).contains("stopped before its first checkpoint"), "{}", text(&o.stderr));
    // Its one checkpoint damaged: named by every command, and never
    // trained over (its weights may be all that is left of the run).
    let state = ckpt(&run, 2).join("state.json");
    let saved = read(&state);
    write(&state, "{\"step\": 2");
    refused(&blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "2"]), "cannot continue from");
    refused(&blkc(&d, &["train", "--resume", "run"]), "step-00000002/state.json` is damaged");
    refused(&blkc(&d, &["eval", "run"]), "step-00000002/state.json` is damaged");
    assert!(ckpt(&run, 2).join("model.safetensors").is_file());
    // Without its optimiser state: evaluated, and a new run can start
    // from its weights.
    write(&state, &saved);
    let _ = std::fs::remove_file(ckpt(&run, 2).join("optimizer.bin"));
    refused(&blkc(&d, &["train", "--resume", "run"]), "--init-from");
    ok(&blkc(&d, &["eval", "run"]));
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "run2", "--steps", "2", "--init-from", "run", "-q"]));
    // Checkpoints without run.json belong to something blkc cannot continue.
    let _ = std::fs::remove_file(run.join("run.json"));
    refused(&blkc(&d, &["train", "tiny.blk", "--out", "run"]), "no run.json");
    let _ = std::fs::remove_dir_all(&d);
}

/// The run directory on a 2 MiB file system: the second checkpoint does
/// not fit. Run in a private mount namespace (`unshare`), so no root and
/// no host mount is needed.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_keeps_the_last_checkpoint_and_leaves_a_way_on() {
    let d = scratch("full");
    tiny(&d, "sas_p", "causal", 258, "");
    let (m, b) = (d.join("mnt").display().to_string(), env!("CARGO_BIN_EXE_blkc"));
    on_a_small_disk(
        &d,
        &format!(
            "{b} train tiny.blk --out {m}/run --steps 40 -q 2> full.err; echo $? > full.code\n\
             ls -a {m}/run/checkpoints > full.ls\ncat {m}/run/checkpoints/latest > full.latest\n\
             {b} eval {m}/run --json > eval.out 2> eval.err; echo $? > eval.code\n\
             mount -o remount,size=64m {m}\n\
             {b} train --resume {m}/run -q 2> resume.err; echo $? > resume.code\n\
             wc -l < {m}/run/metrics.jsonl > resume.lines\n"
        ),
    );
    let code = |f: &str| read(&d.join(f)).trim().to_string();
    let err = read(&d.join("full.err"));
    assert_eq!(code("full.code"), "1", "{err}");
    assert!(err.contains("no space left on device") && err.contains("step-00000020"), "{err}");
    assert!(!read(&d.join("full.ls")).contains(".step-"), "a half-written checkpoint was left");
    assert_eq!(code("full.latest"), "step-00000010");
    assert_eq!(code("eval.code"), "0", "{}", read(&d.join("eval.err")));
    assert_eq!(code("resume.code"), "0", "{}", read(&d.join("resume.err")));
    assert_eq!(code("resume.lines"), "40");
    let _ = std::fs::remove_dir_all(&d);
}

/// Data parallel (two copies on the CPU) stops as one device does: on
/// SIGTERM with a checkpoint of the last step, and on a full disk with the
/// leader's error — the other copy, waiting for the leader's next step or
/// in a sum with it, stops too instead of hanging the process.
#[cfg(target_os = "linux")]
#[test]
fn data_parallel_stops_cleanly_on_sigterm_and_a_full_disk() {
    let d = scratch("parallel-stops");
    tiny(&d, "sas_p", "causal", 258, "");
    let run = d.join("run");
    let mut first = command(
        &d,
        &["train", "tiny.blk", "--out", "run", "--steps", "100000", "--devices", "2", "--set", "eval_every=3"],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap_or_else(|e| panic!("{e}"));
    wait_for_lines(&run, 4, &mut first);
    let _ = Command::new("kill").args(["-TERM", &first.id().to_string()]).status();
    let status = first.wait().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(143), "SIGTERM stops with 128 + 15 after its checkpoint");
    let done = losses(&run).len() as u64;
    assert_eq!(read(&run.join("checkpoints/latest")).trim(), format!("step-{done:08}"));
    ok(&blkc(&d, &["train", "--resume", "run", "--stop-at", &(done + 2).to_string()]));
    assert_eq!(losses(&run).len() as u64, done + 2);

    let (m, b) = (d.join("mnt").display().to_string(), env!("CARGO_BIN_EXE_blkc"));
    on_a_small_disk(
        &d,
        &format!(
            "timeout 300 {b} train tiny.blk --out {m}/run --steps 40 --devices 2 -q 2> full.err; echo $? > full.code\n"
        ),
    );
    let err = read(&d.join("full.err"));
    assert_eq!(read(&d.join("full.code")).trim(), "1", "124 is a hang: {err}");
    assert!(err.contains("no space left on device") && !err.contains("another device stopped"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn data_and_tokens_that_would_hang_or_lie_are_refused() {
    let d = scratch("data");
    tiny(&d, "sas_p", "causal", 258, "");
    refused(&blkc(&d, &["train", "tiny.blk", "--out", "zero", "--data", "/dev/zero"]), "not a regular file");
    assert!(!d.join("zero").exists(), "a refused run leaves no directory");
    // A tokenizer "file" that is a device is not read (it was, until memory ran out).
    let o = blkc(&d, &["train", "tiny.blk", "--out", "zero", "--set", "tokenizer=\"/dev/zero\""]);
    refused(&o, "`/dev/zero` is not a tokenizer file (a device, a pipe or a socket)");
    assert!(!d.join("zero").exists());
    // An --out that is a file, or under one, is said in words.
    refused(&blkc(&d, &["train", "tiny.blk", "--out", "tiny.blk"]), "`tiny.blk`: it exists and is not a directory");
    refused(&blkc(&d, &["train", "tiny.blk", "--out", "tiny.blk/run"]), "a part of the path is a file");
    // One file: it trains, its last tenth validates.
    let single = d.join("parse.rs");
    copy(&repo().join("compiler/src/syntax/parse.rs"), &single);
    let o = blkc(&d, &["train", "tiny.blk", "--out", "single", "--data", "parse.rs", "--steps", "2"]);
    ok(&o);
    assert!(text(&o.stderr).contains("1 training and 1 validation documents"), "{}", text(&o.stderr));
    // A damaged token cache is encoded again, not trusted.
    let tokens = d.join("cache/tokens");
    let entry = std::fs::read_dir(&tokens).ok().and_then(|mut e| e.next()).and_then(Result::ok).map(|e| e.path());
    let entry = entry.unwrap_or_else(|| panic!("no token cache in {}", tokens.display()));
    let mut bytes = std::fs::read(&entry).unwrap_or_default();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    std::fs::write(&entry, bytes).unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(&d, &["train", "tiny.blk", "--out", "again", "--data", "parse.rs", "--steps", "2"]);
    ok(&o);
    assert!(text(&o.stderr).contains("(encoded,"), "{}", text(&o.stderr));
    // A tokenizer larger than the model's vocabulary: refused, not clamped.
    tiny(&d, "sas_p", "causal", 300, "    tokenizer = bpe\n");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "bpe", "--steps", "1", "-q"]));
    copy(&d.join("bpe/tokenizer.json"), &d.join("single/tokenizer.json"));
    refused(&blkc(&d, &["eval", "single"]), "more than the model's vocabulary of 258");
    // An existing tokenizer, named relative to the file that names it.
    tiny(&d, "sas_p", "causal", 300, "    tokenizer = \"bpe/tokenizer.json\"\n");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "external", "--steps", "2"]);
    ok(&o);
    assert!(text(&o.stderr).contains("tokenizer: 300 tokens from"), "{}", text(&o.stderr));
    let info: serde_json::Value = serde_json::from_str(&read(&d.join("external/run.json"))).unwrap_or_default();
    assert_eq!(info["settings"]["tokenizer"].as_str().map(Path::new), Some(d.join("bpe/tokenizer.json").as_path()));
    tiny(&d, "sas_p", "causal", 258, "    tokenizer = \"bpe/tokenizer.json\"\n");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "mismatch"]);
    refused(&o, "E5002");
    assert!(text(&o.stderr).contains("tokenizer.json` has 300 tokens"), "{}", text(&o.stderr));
    // JSON lines: one document per record, its text field.
    let records: String = read(&repo().join("compiler/src/syntax/parse.rs"))
        .lines()
        .map(|l| format!("{}\n", serde_json::json!({"source": "parse.rs", "content": l})))
        .collect();
    write(&d.join("corpus.jsonl"), &records);
    let o = blkc(
        &d,
        &[
            "train",
            "tiny.blk",
            "--out",
            "jsonl",
            "--data",
            "corpus.jsonl",
            "--steps",
            "2",
            "--set",
            "data_field=\"content\"",
            "--set",
            "tokenizer=bytes",
        ],
    );
    ok(&o);
    assert!(text(&o.stderr).contains("validation documents"), "{}", text(&o.stderr));
    // Pre-tokenised data: nanoGPT's train.bin / val.bin (16-bit ids).
    let toks = d.join("toks");
    std::fs::create_dir_all(&toks).unwrap_or_else(|e| panic!("{e}"));
    let ids = |text: String| -> Vec<u8> { text.bytes().flat_map(|b| u16::from(b).to_le_bytes()).collect() };
    std::fs::write(toks.join("train.bin"), ids(read(&repo().join("compiler/src/syntax/parse.rs"))))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(toks.join("val.bin"), ids(read(&repo().join("compiler/src/syntax/format.rs"))))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(
        &d,
        &["train", "tiny.blk", "--out", "pretok", "--data", "toks", "--steps", "2", "--set", "tokenizer=bytes"],
    );
    ok(&o);
    assert!(text(&o.stderr).contains("(pre-tokenised,"), "{}", text(&o.stderr));
    let e: serde_json::Value =
        serde_json::from_slice(&blkc(&d, &["eval", "pretok", "--json"]).stdout).unwrap_or_default();
    assert!(e["eval_loss"].as_f64().is_some_and(f64::is_finite) && e["bits_per_byte"].is_null(), "{e}");
    refused(
        &blkc(&d, &["train", "tiny.blk", "--out", "pretok-bpe", "--data", "toks", "--set", "tokenizer=bpe"]),
        "pre-tokenised",
    );
    // A flag wins over a --set of the same key.
    tiny(&d, "sas_p", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "flag", "--steps", "2", "--set", "steps=3", "-q"]));
    assert_eq!(losses(&d.join("flag")).len(), 2);
    // A batch that cannot fit in memory is refused before anything is allocated.
    let o = blkc(&d, &["train", "tiny.blk", "--out", "huge", "--set", "batch=1000000"]);
    refused(&o, "needs about");
    assert!(text(&o.stderr).contains("micro_batch"), "{}", text(&o.stderr));
    assert!(!d.join("huge").exists());
    // A text corpus larger than memory (held whole, as text and as ids) is
    // refused before a byte of it is read, where it was an out-of-memory
    // kill: sparse files of 64 MiB, as many as take the machine's free memory.
    if let Some(kib) = blkc_runtime::train::memory::available().map(|b| (b >> 10) as u64) {
        let big = d.join("big");
        std::fs::create_dir_all(&big).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..=kib / (64 << 10) / 5 {
            let f = std::fs::File::create(big.join(format!("part{i}.txt"))).unwrap_or_else(|e| panic!("{e}"));
            f.set_len(64 << 20).unwrap_or_else(|e| panic!("{e}"));
        }
        let start = std::time::Instant::now();
        let o = blkc(&d, &["train", "tiny.blk", "--out", "big-run", "--data", "big"]);
        refused(&o, "a text corpus is held whole");
        assert!(text(&o.stderr).contains("pre-tokenise"), "{}", text(&o.stderr));
        assert!(start.elapsed() < Duration::from_secs(30), "refused without reading it");
        assert!(!d.join("big-run").exists());
        // And evaluating on it, likewise.
        refused(&blkc(&d, &["eval", "flag", "--data", "big"]), "a text corpus is held whole");
        let _ = std::fs::remove_dir_all(&big);
    }
    // No CUDA in this build (or no driver): a clear error, exit 3, nothing on disk.
    if !cfg!(feature = "cuda") {
        let o = blkc(&d, &["train", "tiny.blk", "--out", "gpu", "--device", "cuda"]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("built without CUDA"), "{}", text(&o.stderr));
        assert!(!d.join("gpu").exists());
        for cmd in [vec!["eval", "flag", "--device", "cuda"], vec!["sample", "flag", "--device", "cuda"]] {
            assert_eq!(blkc(&d, &cmd).status.code(), Some(3), "{cmd:?}");
        }
    }
    // WebGPU: no bf16 product there, said before anything is on disk; and
    // no wgpu in this build, said as for CUDA.
    let o = blkc(&d, &["train", "tiny.blk", "--out", "webgpu", "--device", "wgpu", "--precision", "bf16"]);
    refused(&o, "WebGPU has no bf16");
    assert!(!d.join("webgpu").exists());
    refused(&blkc(&d, &["bench", "tiny.blk", "--device", "wgpu", "--precision", "bf16"]), "--precision fp32");
    refused(&blkc(&d, &["bench", "tiny.blk", "--profile"]), "give --device cuda or --device wgpu");
    if !cfg!(feature = "wgpu") {
        let o = blkc(&d, &["train", "tiny.blk", "--out", "webgpu", "--device", "wgpu"]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("built without wgpu"), "{}", text(&o.stderr));
        assert!(!d.join("webgpu").exists());
        assert_eq!(blkc(&d, &["eval", "flag", "--device", "wgpu"]).status.code(), Some(3));
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `data` in a file is relative to that file, and is stored resolved: the
/// run trains and evaluates from any working directory, and its directory
/// can be moved.
#[test]
fn data_paths_follow_the_file_and_hold_from_anywhere() {
    let d = scratch("relative");
    tiny(&d, "sas_p", "causal", 258, "    data = \"corpus\"\n");
    let corpus = d.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap_or_else(|e| panic!("{e}"));
    for f in ["parse.rs", "format.rs", "errors.rs"] {
        copy(&repo().join("compiler/src/syntax").join(f), &corpus.join(f));
    }
    let parent = d.parent().unwrap_or(Path::new("/"));
    let name = d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let run = d.join("run");
    let out = run.display().to_string();
    let from =
        |dir: &Path, args: &[&str]| command(&d, args).current_dir(dir).output().unwrap_or_else(|e| panic!("{e}"));
    ok(&from(parent, &["train", &format!("{name}/tiny.blk"), "--out", &out, "--steps", "2"]));
    let info: serde_json::Value = serde_json::from_str(&read(&run.join("run.json"))).unwrap_or_default();
    assert_eq!(info["settings"]["data"].as_str().map(Path::new), Some(corpus.as_path()));
    ok(&from(Path::new("/"), &["eval", &out]));
    // A run directory moved elsewhere evaluates and resumes where it is.
    let moved = d.join("moved");
    std::fs::rename(&run, &moved).unwrap_or_else(|e| panic!("{e}"));
    let moved = moved.display().to_string();
    ok(&from(Path::new("/"), &["eval", &moved]));
    ok(&from(Path::new("/"), &["train", "--resume", &moved, "--steps", "3", "--reschedule", "-q"]));
    assert_eq!(losses(Path::new(&moved)).len(), 3);
    let _ = std::fs::remove_dir_all(&d);
}

/// Token files are read window by window: a corpus of 6 GiB of ids (30
/// GiB when they were held as u32 beside the file read) trains in a
/// process allowed 4 GiB of address space.
#[cfg(target_os = "linux")]
/// `blkc ARGS` in `d` with 4 GiB of address space (`ulimit -v`).
fn in_4_gib(d: &Path, args: &str) -> std::process::Output {
    let blkc = env!("CARGO_BIN_EXE_blkc");
    Command::new("sh")
        .args(["-c", &format!("ulimit -v {}; exec {blkc} {args}", 4 << 20)])
        .current_dir(d)
        .env("BLKC_CACHE", d.join("cache"))
        // glibc reserves address space per thread for its arenas.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A split with more windows than a pass can order (its order is a
/// permutation of u32 window numbers) is refused before the order is made
/// (17 GB here), with what to do: 4 GiB of sparse 8-bit ids (a `.npy` of
/// `u1`) and the end of text, in windows of one token, are 2^32 + 1
/// windows. The memory check would refuse it first
/// where less than its 32 GiB is free; it is off here, so that the guard
/// behind it is what answers on any machine.
#[test]
fn a_split_with_more_windows_than_a_pass_can_order_is_refused() {
    let d = scratch("too-many-windows");
    let model = tiny(&d, "sas_p", "causal", 258, "");
    let blk = std::fs::read_to_string(&model).unwrap_or_default();
    write(&model, &blk.replace("context = 32", "context = 1"));
    let toks = d.join("toks");
    std::fs::create_dir_all(&toks).unwrap_or_else(|e| panic!("{e}"));
    let ids: u64 = (1 << 32) + 1;
    let npy = blkc_runtime::train::token_files::npy_header("|u1", ids);
    std::fs::write(toks.join("train.npy"), &npy).unwrap_or_else(|e| panic!("{e}"));
    let f = std::fs::OpenOptions::new().write(true).open(toks.join("train.npy")).unwrap_or_else(|e| panic!("{e}"));
    f.set_len(npy.len() as u64 + ids).unwrap_or_else(|e| panic!("{e}"));
    write(&toks.join("val.bin"), "\x05\x00\x06\x00".repeat(100).as_str());
    let o = in_4_gib(&d, "train tiny.blk --out run --data toks --steps 2 --no-memory-check");
    refused(&o, "4294967297 windows of 2 tokens, more than the 4294967295 a run can order");
    assert!(text(&o.stderr).contains("a longer context"), "{}", text(&o.stderr));
    assert!(!d.join("run").exists(), "nothing left of a run that never started");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn token_files_larger_than_the_memory_allowed_train() {
    let d = scratch("token-files-on-disk");
    tiny(&d, "sas_p", "causal", 258, "");
    let toks = d.join("toks");
    std::fs::create_dir_all(&toks).unwrap_or_else(|e| panic!("{e}"));
    // Sparse: zeros (id 0) that take no disk.
    let f = std::fs::File::create(toks.join("train.bin")).unwrap_or_else(|e| panic!("{e}"));
    f.set_len(6 << 30).unwrap_or_else(|e| panic!("{e}"));
    write(&toks.join("val.bin"), "\x05\x00\x06\x00".repeat(100).as_str());
    ok(&in_4_gib(&d, "train tiny.blk --out run --data toks --steps 2 -q"));
    assert_eq!(losses(&d.join("run")).len(), 2);
    let _ = std::fs::remove_dir_all(&d);
}
