//! `blkc train`, `eval` and `sample` as a user runs them, on a tiny model
//! and a small corpus (the compiler's own sources): the loss falls; a run
//! stopped (by `--stop-at`, by Ctrl-C) and resumed logs exactly the losses
//! of an uninterrupted one; the same seed gives the same losses; a killed
//! run leaves a checkpoint that loads; bad data and a vocabulary that does
//! not fit the tokenizer are clear errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use blkc_runtime::backend::Cpu;
use blkc_runtime::model::Model;
use burn::tensor::{Int, Tensor};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scratch directory holding the tiny model, removed first if present.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blkc-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
    for f in ["sas-p.blk", "shaped.blk", "preln.blk", "skipless-naive.blk"] {
        std::fs::copy(repo().join("blocks").join(f), d.join(f)).unwrap_or_else(|e| panic!("{e}"));
    }
    d
}

/// A tiny model of `block`; `extra` lines (`key = value`) replace or add
/// train settings.
pub(crate) fn tiny(dir: &Path, block: &str, mask: &str, vocab: u32, extra: &str) -> PathBuf {
    let file = match block {
        "preln" => "preln.blk",
        "skipless_naive" => "skipless-naive.blk",
        "dropped" | "undropped" => "dropout.blk",
        _ => "sas-p.blk",
    };
    let data = format!("\"{}\"", repo().join("compiler/src").display());
    let mut settings: Vec<(String, String)> = [
        ("data", data.as_str()),
        ("tokenizer", "bytes"),
        ("batch", "8"),
        ("steps", "30"),
        ("lr", "3e-3"),
        ("eval_every", "10"),
        ("eval_batches", "4"),
        ("log_every", "1"),
        ("checkpoint_every", "10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in extra.lines().filter(|l| l.contains('=')) {
        let (k, v) = line.split_once('=').unwrap_or_default();
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        match settings.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => settings.push((k, v)),
        }
    }
    let depth = if block == "skipless_naive" { 12 } else { 2 };
    let train: String = settings.iter().map(|(k, v)| format!("    {k} = {v}\n")).collect();
    let text = format!(
        "use \"{file}\"\n\nmodel tiny {{\n    block = {block}\n    depth = {depth}\n    width = 64\n    heads = 2\n    context = 32\n    \
         vocab = {vocab}\n    mask = {mask}\n    positions = learned\n    final_norm = layernorm\n    tied_embeddings = true\n}}\n\n\
         train {{\n{train}}}\n"
    );
    let p = dir.join("tiny.blk");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p
}

pub(crate) fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blkc"));
    c.args(args).current_dir(dir).env("BLKC_CACHE", dir.join("cache"));
    c
}

pub(crate) fn blkc(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().unwrap_or_else(|e| panic!("cannot run blkc: {e}"))
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn ok(o: &Output) {
    assert!(o.status.success(), "blkc failed ({:?}):\n{}", o.status.code(), text(&o.stderr));
}

/// `step → (loss, eval_loss)` from a run's metrics.
pub(crate) fn losses(run: &Path) -> BTreeMap<u64, (f64, Option<f64>)> {
    let t = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    t.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("bad metrics line {l}: {e}")))
        .map(|v| {
            let step = v["step"].as_u64().unwrap_or_else(|| panic!("no step in {v}"));
            (step, (v["loss"].as_f64().unwrap_or(f64::NAN), v.get("eval_loss").and_then(|e| e.as_f64())))
        })
        .collect()
}

#[test]
fn a_tiny_model_learns_and_writes_a_complete_run_directory() {
    let d = scratch("learns");
    tiny(&d, "sas_p", "causal", 258, "");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "40"]);
    ok(&o);
    let run = d.join("run");
    let l = losses(&run);
    assert_eq!(l.len(), 40, "one line per step with log_every = 1");
    let first: f64 = l.range(1..=3).map(|(_, v)| v.0).sum::<f64>() / 3.0;
    let last: f64 = l.range(38..=40).map(|(_, v)| v.0).sum::<f64>() / 3.0;
    assert!(first > 5.0, "a fresh byte model starts near ln 258 = 5.55, not {first}");
    assert!(last < first - 1.5, "loss fell only from {first:.3} to {last:.3}");
    let evals: Vec<f64> = l.values().filter_map(|v| v.1).collect();
    assert_eq!(evals.len(), 4, "eval at 10, 20, 30, 40");
    assert!(evals[3] < evals[0], "validation loss did not fall: {evals:?}");
    // Every metrics line has the documented fields.
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default().lines().nth(9).unwrap_or_default(),
    )
    .unwrap_or_default();
    for key in ["step", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "tokens", "gains"] {
        assert!(line.get(key).is_some(), "metrics line lacks `{key}`: {line}");
    }
    assert!(line["gains"].get("0.beta_ff").is_some(), "SAS-P's MLP gain is logged: {line}");
    for f in [
        "run.json",
        "source.json",
        "tokenizer.json",
        "loss.png",
        "loss.svg",
        "training.png",
        "training.svg",
        "metrics.csv",
        "checkpoints/latest",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let png = std::fs::read(run.join("loss.png")).unwrap_or_default();
    assert_eq!(&png[..4], b"\x89PNG");
    let svg = std::fs::read_to_string(run.join("loss.svg")).unwrap_or_default();
    assert!(svg.contains("<svg") && svg.contains("polyline"), "SVG without a curve");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap_or_default()).unwrap_or_default();
    assert_eq!(info["settings"]["steps"], 40);
    assert_eq!(info["settings"]["weight_decay"], 0.1);
    assert_eq!(info["resolved_model"]["depth"], 2, "{info}");
    assert_eq!(info["resolved_model"]["mask"], "causal");
    assert!(info["started"].as_str().is_some_and(|t| t.ends_with('Z')), "{info}");
    let argv = info["commands"][0]["argv"].as_array().cloned().unwrap_or_default();
    assert!(argv.iter().any(|a| a == "train") && argv.iter().any(|a| a == "tiny.blk"), "{info}");
    assert!(info["git"].is_null(), "a scratch directory is no repository: {info}");
    // The same metrics as a table and as TensorBoard events.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap_or_default();
    assert_eq!(csv.lines().count(), 41, "a header and a row per logged step");
    assert!(csv.starts_with("step,loss,eval_loss,lr,grad_norm,"), "{csv:.80}");
    let events = std::fs::read_dir(run.join("tensorboard")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(events, 1, "one TensorBoard event file");

    // eval reproduces the last logged validation loss; sample continues text.
    let o = blkc(&d, &["eval", "run", "--json"]);
    ok(&o);
    let e: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap_or_default();
    let logged = l[&40].1.unwrap_or(f64::NAN);
    assert!((e["eval_loss"].as_f64().unwrap_or(0.0) - logged).abs() < 1e-5, "eval {e} vs logged {logged}");
    // Bytes tokenizer: about one token per byte, so bits/byte ≈ nats/token / ln 2.
    let bpb = e["bits_per_byte"].as_f64().unwrap_or(0.0);
    let per = e["bytes_per_token"].as_f64().unwrap_or(0.0);
    assert!((0.9..=1.0).contains(&per), "{e}");
    assert!((bpb - logged / std::f64::consts::LN_2 / per).abs() < 1e-9, "{e}");
    // Every token of the split: tiled, and sliding with more context.
    let all = |extra: &[&str]| {
        let o = blkc(&d, &[&["eval", "run", "--json"], extra].concat());
        ok(&o);
        serde_json::from_str::<serde_json::Value>(&text(&o.stdout)).unwrap_or_default()
    };
    let (tiled, sliding) = (all(&["--all"]), all(&["--stride", "8"]));
    let targets = tiled["tokens_scored"].as_u64().unwrap_or(0);
    assert!(targets > 0 && sliding["tokens_scored"] == targets, "{tiled} {sliding}");
    assert_eq!(tiled["stride"], 32, "--all tiles the text in windows of the context: {tiled}");
    let loss = |e: &serde_json::Value| e["eval_loss"].as_f64().unwrap_or(f64::NAN);
    assert!(loss(&tiled).is_finite() && loss(&sliding).is_finite() && loss(&sliding) != loss(&tiled), "{sliding}");
    assert_eq!(loss(&all(&["--stride", "32"])), loss(&tiled), "--all is a stride of the context");
    for (bad, says) in [("0", "1 to the model's context, 32"), ("33", "1 to the model's context")] {
        let o = blkc(&d, &["eval", "run", "--stride", bad]);
        assert_eq!(o.status.code(), Some(1), "--stride {bad}");
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
    }
    assert_eq!(blkc(&d, &["eval", "run", "--all", "--batches", "2"]).status.code(), Some(2), "an estimate or all");
    let o = blkc(&d, &["sample", "run", "--prompt", "fn ", "--tokens", "20", "--temperature", "0"]);
    ok(&o);
    let out = text(&o.stdout);
    assert!(out.starts_with("fn ") && out.len() > 3, "{out:?}");
    let again = blkc(&d, &["sample", "run", "--prompt", "fn ", "--tokens", "20", "--temperature", "0"]);
    assert_eq!(text(&again.stdout), out, "greedy sampling is deterministic");
    // A stop string ends the text before it; nucleus sampling runs.
    let stop = out[3..].chars().take(2).collect::<String>();
    let o = blkc(&d, &["sample", "run", "--prompt", "fn ", "--tokens", "20", "--temperature", "0", "--stop", &stop]);
    ok(&o);
    assert_eq!(text(&o.stdout), "fn \n", "stopped at {stop:?}, which greedy decoding writes first");
    ok(&blkc(&d, &["sample", "run", "--prompt", "fn ", "--tokens", "20", "--top-p", "0.9", "--seed", "3"]));
    assert_eq!(blkc(&d, &["fill", "run", "--text", "<mask>"]).status.code(), Some(1), "a causal model fills nothing");
    // Exported weights load back into a rebuilt model and give its logits.
    let o = blkc(&d, &["export", "run"]);
    ok(&o);
    let exported = d.join(text(&o.stdout).trim());
    let device = Default::default();
    let opened = blkc_runtime::train::open::open::<Cpu>(&run, &device).unwrap_or_else(|e| panic!("{e}"));
    let fresh = Model::<Cpu>::build(&opened.program, &opened.ir, 99, &device);
    let imported = blkc_runtime::checkpoint::import(fresh, &exported).unwrap_or_else(|e| panic!("{e}"));
    let tokens = || Tensor::<Cpu, 2, Int>::from_ints([[3, 1, 4, 1, 5, 9, 2, 6]], &device);
    let logits = |m: &Model<Cpu>| m.forward(tokens()).into_data().to_vec::<f32>().unwrap_or_default();
    assert_eq!(logits(&imported), logits(&opened.model), "the export round-trips");
    let bytes = std::fs::read(&exported).unwrap_or_default();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap_or_default();
    let meta = &header["__metadata__"];
    assert_eq!((meta["blkc_model"].as_str(), meta["blkc_step"].as_str()), (Some("tiny"), Some("40")), "{meta}");
    assert!(meta["blkc_source"].as_str().is_some_and(|s| s.contains("model tiny")), "{meta}");
    assert!(header.get("blocks.0.mlp.0.up").is_some(), "stable names: {header}");
    // `--out` naming a `.safetensors` file writes that file (a directory
    // of that name is not what was asked for); the PyTorch export needs a
    // directory and says so.
    let o = blkc(&d, &["export", "run", "--out", "weights/tiny.safetensors"]);
    ok(&o);
    assert_eq!(text(&o.stdout).trim(), "weights/tiny.safetensors");
    let fresh = Model::<Cpu>::build(&opened.program, &opened.ir, 99, &device);
    let named = blkc_runtime::checkpoint::import(fresh, &d.join("weights/tiny.safetensors"));
    let named = named.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits(&named), logits(&opened.model), "the same weights, in the file named");
    let o = blkc(&d, &["export", "run", "--format", "pytorch", "--out", "weights/tiny.safetensors"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("give --out a directory"), "{}", text(&o.stderr));
    // For PyTorch: the weights and a model.py that rebuilds the model from
    // its plan (bench/export-check.sh compares its logits with blkc's where
    // PyTorch is installed); here it must at least be valid Python.
    let o = blkc(&d, &["export", "run", "--format", "pytorch", "--out", "torch"]);
    ok(&o);
    let py = d.join("torch/model.py");
    assert!(d.join("torch/model.safetensors").is_file());
    let compiled = Command::new("python3").args(["-m", "py_compile"]).arg(&py).status();
    assert!(compiled.is_ok_and(|s| s.success()), "model.py does not compile");
    let source = std::fs::read_to_string(&py).unwrap_or_default();
    let plan = source.split("r'''").nth(1).and_then(|p| p.split("'''").next()).unwrap_or_default();
    let plan: serde_json::Value = serde_json::from_str(plan).unwrap_or_else(|e| panic!("the plan: {e}"));
    assert_eq!(plan["layers"].as_array().map(Vec::len), Some(2), "{plan}");
    // A second run into the same directory is refused, not overwritten.
    let o = blkc(&d, &["train", "tiny.blk", "--out", "run"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--resume"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stopped_and_resumed_runs_log_the_losses_of_an_uninterrupted_one() {
    let d = scratch("resume");
    tiny(&d, "sas_p", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "whole"]));
    let whole = losses(&d.join("whole"));
    assert_eq!(whole.len(), 30);

    // Same seed, same machine: the same losses, bit for bit.
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "again"]));
    assert_eq!(losses(&d.join("again")), whole);
    // Another seed: other losses.
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "seed1", "--set", "seed=1"]));
    assert_ne!(losses(&d.join("seed1")), whole);

    // Stopped off a checkpoint boundary, then resumed.
    let o = blkc(&d, &["train", "tiny.blk", "--out", "parts", "--stop-at", "13"]);
    ok(&o);
    assert_eq!(losses(&d.join("parts")).len(), 13);
    ok(&blkc(&d, &["train", "--resume", "parts"]));
    assert_eq!(losses(&d.join("parts")), whole, "resumed run differs from the uninterrupted one");
    let csv = std::fs::read_to_string(d.join("parts/metrics.csv")).unwrap_or_default();
    let steps: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap_or("")).collect();
    assert_eq!(steps, (1..=30).map(|s| s.to_string()).collect::<Vec<_>>(), "metrics.csv follows the resumed run");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("parts/run.json")).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(info["commands"].as_array().map(Vec::len), Some(2), "both commands are recorded: {info}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Waits until the run has logged `lines` metrics lines.
pub(crate) fn wait_for_lines(run: &Path, lines: usize, child: &mut std::process::Child) {
    let start = Instant::now();
    while std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0) < lines {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("blkc ended early: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_a_killed_run_leaves_a_loadable_checkpoint() {
    let d = scratch("signals");
    tiny(&d, "sas_p", "causal", 258, "    checkpoint_every = 4\n");
    let steps = ["--steps", "100000"];
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "whole", "--steps", "60", "--set", "eval_every=1000000"]));
    let whole = losses(&d.join("whole"));

    // Ctrl-C: exit 130 after a checkpoint of the step in progress.
    let run = d.join("int");
    let mut child = command(&d, &["train", "tiny.blk", "--out", "int", "--steps", "60", "--set", "eval_every=1000000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_lines(&run, 6, &mut child);
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(130), "Ctrl-C exits with 130");
    let stopped = losses(&run);
    assert!(stopped.len() < 60, "the run stopped early");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap_or_default();
    assert_eq!(latest.trim(), format!("step-{:08}", stopped.len()), "checkpoint of the last step");
    ok(&blkc(&d, &["train", "--resume", "int"]));
    assert_eq!(losses(&run), whole, "interrupted + resumed differs from uninterrupted");

    // kill -9 at an arbitrary moment: the newest checkpoint loads and resumes.
    let run = d.join("killed");
    let mut child = command(&d, &["train", "tiny.blk", "--out", "killed", steps[0], steps[1]])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_lines(&run, 11, &mut child);
    let _ = child.kill();
    let _ = child.wait();
    let o = blkc(&d, &["eval", "killed", "--json"]);
    ok(&o);
    let e: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap_or_default();
    assert!(e["step"].as_u64().unwrap_or(0) >= 8, "{e}");
    assert!(e["eval_loss"].as_f64().is_some_and(f64::is_finite));
    let o = blkc(&d, &["train", "--resume", "killed", "--steps", "24"]);
    assert_eq!(o.status.code(), Some(1), "a changed schedule needs --reschedule");
    assert!(text(&o.stderr).contains("--reschedule"), "{}", text(&o.stderr));
    ok(&blkc(&d, &["train", "--resume", "killed", "--steps", "24", "--reschedule"]));
    assert_eq!(losses(&run).len(), 24);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn gradient_accumulation_matches_the_whole_batch() {
    let d = scratch("accum");
    tiny(&d, "preln", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "whole", "--steps", "6"]));
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "micro", "--steps", "6", "--set", "micro_batch=2"]));
    let (a, b) = (losses(&d.join("whole")), losses(&d.join("micro")));
    for (step, (la, _)) in &a {
        let lb = b[step].0;
        assert!((la - lb).abs() < 2e-4, "step {step}: {la} (batch 8) vs {lb} (4 × 2)");
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("micro/run.json")).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(info["settings"]["micro_batch"], 2);
    let _ = std::fs::remove_dir_all(&d);
}

/// Pre-LN with nanoGPT's dropout, and the same block without it.
const DROPOUT: &str = "use \"preln.blk\"\n\
    attention drop { dropout = 0.1  resid_dropout = 0.1 }\n\
    mlp drop { dropout = 0.1  resid_dropout = 0.1 }\n\
    block dropped {\n h = x + attn(layernorm(x), drop)\n out = h + mlp(layernorm(h), drop)\n}\n\
    block undropped {\n h = x + attn(layernorm(x))\n out = h + mlp(layernorm(h))\n}\n";

/// Dropout acts in training (the first step's loss is another than the
/// same model's without it, from the same weights and batch), its masks
/// follow the rows (a batch split in micro-batches draws the same ones),
/// and a stopped and resumed run draws those of an uninterrupted one.
#[test]
fn dropout_trains_resumes_exactly_and_follows_the_rows() {
    let d = scratch("dropout");
    std::fs::write(d.join("dropout.blk"), DROPOUT).unwrap_or_else(|e| panic!("{e}"));
    tiny(&d, "undropped", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "plain", "--steps", "12"]));
    tiny(&d, "dropped", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "whole", "--steps", "12"]));
    let (plain, whole) = (losses(&d.join("plain")), losses(&d.join("whole")));
    // The same weights and batch: dropout alone parts the first step's
    // gradients (its loss moves less: by 4e-4 on this checkout's sources).
    let norm = |run: &str| {
        let t = std::fs::read_to_string(d.join(run).join("metrics.jsonl")).unwrap_or_default();
        let first: serde_json::Value = serde_json::from_str(t.lines().next().unwrap_or("{}")).unwrap_or_default();
        first["grad_norm"].as_f64().unwrap_or(f64::NAN)
    };
    let (gp, gw) = (norm("plain"), norm("whole"));
    assert!((gp - gw).abs() > 1e-2 * gp, "step 1: gradient norm {gp} without dropout, {gw} with");
    assert!(plain[&1].0 != whole[&1].0, "step 1: the loss {} with and without dropout", plain[&1].0);
    // Evaluation has no dropout: at step 10 the models differ by 10 steps
    // of training only, so their validation losses are close.
    let (pe, we) = (plain[&10].1.unwrap_or(f64::NAN), whole[&10].1.unwrap_or(f64::NAN));
    assert!((pe - we).abs() < 0.1, "validation at step 10: {pe} without dropout, {we} with");

    ok(&blkc(&d, &["train", "tiny.blk", "--out", "micro", "--steps", "12", "--set", "micro_batch=2"]));
    let micro = losses(&d.join("micro"));
    for (step, (la, _)) in &whole {
        let lb = micro[step].0;
        assert!((la - lb).abs() < 2e-4, "step {step}: {la} (batch 8) vs {lb} (4 × 2)");
    }

    ok(&blkc(&d, &["train", "tiny.blk", "--out", "parts", "--steps", "12", "--stop-at", "7"]));
    ok(&blkc(&d, &["train", "--resume", "parts"]));
    assert_eq!(losses(&d.join("parts")), whole, "resumed run differs from the uninterrupted one");
    let _ = std::fs::remove_dir_all(&d);
}

/// Data parallel on the CPU (peers sharing its one device): two and four
/// devices, each with its share of every batch, train as one device does
/// (the same batches and dropout masks; losses equal but for the order of
/// the sums); a run resumes on another number of devices; a masked model's
/// shares weigh their masked tokens; a batch that does not split is
/// refused before anything is written.
#[test]
fn data_parallel_trains_as_one_device_does() {
    let d = scratch("parallel");
    std::fs::write(d.join("dropout.blk"), DROPOUT).unwrap_or_else(|e| panic!("{e}"));
    tiny(&d, "dropped", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "one", "--steps", "12"]));
    let one = losses(&d.join("one"));
    let close = |a: &BTreeMap<u64, (f64, Option<f64>)>, what: &str| {
        assert_eq!(a.keys().collect::<Vec<_>>(), one.keys().collect::<Vec<_>>(), "{what}");
        for (step, (l1, e1)) in &one {
            let (l, e) = a[step];
            assert!((l - l1).abs() < 2e-4, "{what}, step {step}: loss {l}, on one device {l1}");
            assert_eq!(e.is_some(), e1.is_some(), "{what}, step {step}: an evaluation on one only");
            if let (Some(e), Some(e1)) = (e, e1) {
                assert!((e - e1).abs() < 2e-4, "{what}, step {step}: validation {e}, on one device {e1}");
            }
        }
    };
    let o = blkc(&d, &["train", "tiny.blk", "--out", "two", "--steps", "12", "--devices", "2"]);
    ok(&o);
    assert!(text(&o.stderr).contains("2 copies in data parallel sharing"), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("1 micro-batch of 4 per device"), "{}", text(&o.stderr));
    close(&losses(&d.join("two")), "two devices");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("two/run.json")).unwrap_or_default()).unwrap_or_default();
    assert_eq!(run["settings"]["devices"], 2);
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "four", "--steps", "12", "--set", "devices=4"]));
    close(&losses(&d.join("four")), "four devices");

    // Gradient accumulation on each device: two passes of 2 rows per
    // device are the passes of 4 rows on one.
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "acc1", "--steps", "12", "--set", "micro_batch=4"]));
    let args = ["train", "tiny.blk", "--out", "acc2", "--steps", "12", "--devices", "2", "--set", "micro_batch=2"];
    let o = blkc(&d, &args);
    ok(&o);
    assert!(text(&o.stderr).contains("2 micro-batches of 2 per device"), "{}", text(&o.stderr));
    let (acc1, acc2) = (losses(&d.join("acc1")), losses(&d.join("acc2")));
    for (step, (l1, _)) in &acc1 {
        let l2 = acc2[step].0;
        assert!((l1 - l2).abs() < 2e-4, "accumulated, step {step}: {l2} on two devices, {l1} on one");
    }

    // Stopped on two devices, resumed on one.
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "parts", "--steps", "12", "--devices", "2", "--stop-at", "7"]));
    ok(&blkc(&d, &["train", "--resume", "parts", "--devices", "1"]));
    close(&losses(&d.join("parts")), "two devices, then one");

    // A masked model: its shares hold different numbers of masked tokens.
    tiny(&d, "preln", "bidirectional", 258, "    mask_rate = 0.25\n");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "mlm1", "--steps", "6"]));
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "mlm2", "--steps", "6", "--devices", "2"]));
    let (m1, m2) = (losses(&d.join("mlm1")), losses(&d.join("mlm2")));
    for (step, (l1, _)) in &m1 {
        let l2 = m2[step].0;
        assert!((l1 - l2).abs() < 2e-4, "masked, step {step}: {l2} on two devices, {l1} on one");
    }

    let o = blkc(&d, &["train", "tiny.blk", "--out", "three", "--devices", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("batch 8 does not split over 3 devices"), "{}", text(&o.stderr));
    assert!(!d.join("three").exists(), "a refused run leaves no directory");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "none", "--devices", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("devices"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

/// Mixed precision: a bf16 run tracks the fp32 run of the same model, seed
/// and batches, writes fp32 checkpoints, records its precision, and
/// resumes exactly; `blkc eval` evaluates in the run's precision.
#[test]
fn a_bf16_run_tracks_fp32_keeps_fp32_weights_and_resumes_exactly() {
    let d = scratch("bf16");
    tiny(&d, "preln", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "fp32", "--precision", "fp32"]));
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "bf16", "--precision", "bf16"]));
    let (full, half) = (losses(&d.join("fp32")), losses(&d.join("bf16")));
    assert_ne!(full, half, "bf16 products round differently");
    for (step, (lf, ef)) in &full {
        let (lh, eh) = half[step];
        assert!(((lf - lh) / lf).abs() < 0.01, "step {step}: {lf} in fp32, {lh} in bf16");
        if let (Some(ef), Some(eh)) = (ef, eh) {
            assert!(((ef - eh) / ef).abs() < 0.01, "step {step}: validation {ef} in fp32, {eh} in bf16");
        }
    }
    let info = std::fs::read_to_string(d.join("bf16/run.json")).unwrap_or_default();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
    assert_eq!(info["settings"]["precision"], "bf16");
    // The checkpoint's tensors are fp32 (safetensors: a JSON header after
    // its 8-byte length).
    let ckpt = std::fs::read(d.join("bf16/checkpoints/step-00000030/model.safetensors")).unwrap_or_default();
    let n = u64::from_le_bytes(ckpt[..8].try_into().unwrap_or_default()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&ckpt[8..8 + n]).unwrap_or_default();
    let dtypes: Vec<&str> = header.as_object().into_iter().flatten().filter_map(|(_, t)| t["dtype"].as_str()).collect();
    assert!(!dtypes.is_empty() && dtypes.iter().all(|t| *t == "F32"), "{dtypes:?}");

    ok(&blkc(&d, &["train", "tiny.blk", "--out", "parts", "--precision", "bf16", "--stop-at", "13"]));
    ok(&blkc(&d, &["train", "--resume", "parts"]));
    assert_eq!(losses(&d.join("parts")), half, "the resumed bf16 run differs from the uninterrupted one");

    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "bf16", "--json"];
        args.extend(extra);
        let o = blkc(&d, &args);
        ok(&o);
        let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap_or_default();
        v["eval_loss"].as_f64().unwrap_or(f64::NAN)
    };
    assert_eq!(
        eval(&[]),
        half[&30].1.unwrap_or(f64::NAN),
        "eval in the run's precision gives its last validation loss"
    );
    assert_ne!(eval(&["--precision", "fp32"]), eval(&[]), "fp32 products give another loss");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_bidirectional_model_trains_as_a_masked_language_model() {
    let d = scratch("mlm");
    tiny(&d, "preln", "bidirectional", 258, "    mask_rate = 0.25\n");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "40"]);
    ok(&o);
    assert!(text(&o.stderr).contains("masked objective"), "{}", text(&o.stderr));
    let l = losses(&d.join("run"));
    let first: f64 = l.range(1..=3).map(|(_, v)| v.0).sum::<f64>() / 3.0;
    let last: f64 = l.range(38..=40).map(|(_, v)| v.0).sum::<f64>() / 3.0;
    assert!(last < first - 1.0, "masked loss fell only from {first:.3} to {last:.3}");
    let o = blkc(&d, &["sample", "run", "--prompt", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("bidirectional"));
    // It fills masks instead: candidates by falling probability.
    let o = blkc(&d, &["fill", "run", "--text", "fn main() { let <mask> = 1; }", "--top", "3", "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let c = v["masks"][0]["candidates"].as_array().cloned().unwrap_or_default();
    assert_eq!(c.len(), 3, "{v}");
    let p: Vec<f64> = c.iter().map(|c| c["probability"].as_f64().unwrap_or(-1.0)).collect();
    assert!(p.windows(2).all(|w| w[0] >= w[1]) && p[0] <= 1.0 && p.iter().sum::<f64>() <= 1.0 + 1e-9, "{p:?}");
    let filled = v["filled"].as_str().unwrap_or_default();
    assert!(filled.starts_with("fn main() { let ") && !filled.contains("mask"), "{filled}");
    let o = blkc(&d, &["fill", "run", "--text", "no mask here"]);
    assert_eq!(o.status.code(), Some(1));
    // Scored over all of its split in windows that tile it; no sliding.
    let o = blkc(&d, &["eval", "run", "--all", "--json"]);
    ok(&o);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert!(e["eval_loss"].as_f64().is_some_and(f64::is_finite) && e["stride"] == 32, "{e}");
    let o = blkc(&d, &["eval", "run", "--stride", "8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("masked model"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_data_and_a_mismatched_vocabulary_are_clear_errors() {
    let d = scratch("bad");
    tiny(&d, "sas_p", "causal", 258, "");
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("{e}"));
    let binary = d.join("binary");
    std::fs::create_dir_all(&binary).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(binary.join("a.bin"), [0u8, 159, 146, 150, 0, 255]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(binary.join("b.txt"), [0xffu8, 0xfe, 0x41]).unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (empty.display().to_string(), "empty directory"),
        (binary.display().to_string(), "2 not UTF-8"),
        (d.join("nowhere").display().to_string(), "does not exist"),
        (d.join("*.nothing").display().to_string(), "no file matches"),
    ];
    for (i, (data, why)) in cases.iter().enumerate() {
        let out = format!("run{i}");
        let o = blkc(&d, &["train", "tiny.blk", "--out", &out, "--data", data]);
        assert_eq!(o.status.code(), Some(1), "{data}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains(why), "{data}: expected `{why}` in\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Mixed good and bad files: the bad ones are skipped and counted.
    std::fs::write(binary.join("c.txt"), "def f(x):\n    return x\n".repeat(200)).unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(&d, &["train", "tiny.blk", "--out", "mixed", "--data", &binary.display().to_string(), "--steps", "2"]);
    ok(&o);
    assert!(text(&o.stderr).contains("skipped: 2 not UTF-8"), "{}", text(&o.stderr));

    // The bytes tokenizer has 258 tokens: vocab 300 is an error on that line.
    tiny(&d, "sas_p", "causal", 300, "");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "vocab"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("E5002") && err.contains("vocab = 300") && err.contains("258"), "{err}");
    assert!(err.contains("tiny.blk:9:"), "the diagnostic points at the vocab line: {err}");
    // A bad override is the compiler's diagnostic.
    let o = blkc(&d, &["train", "tiny.blk", "--set", "lr=-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("lr"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let d = scratch("nan");
    // Plain SGD at lr 10 without clipping diverges within a few steps.
    tiny(&d, "preln", "causal", 258, "    optimizer = sgd\n    warmup = 0\n    clip = 0\n    checkpoint_every = 1\n");
    // On one device, and on two (the other device halts with the first,
    // which reports it; nothing waits).
    for (run, devices) in [("run", "1"), ("run2", "2")] {
        let o =
            blkc(&d, &["train", "tiny.blk", "--out", run, "--steps", "400", "--set", "lr=10", "--devices", devices]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let at = err.split("at step ").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next());
        let at: u64 = at.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no step in {err}"));
        assert!(err.contains("became") && err.contains(&format!("last good checkpoint (step {})", at - 1)), "{err}");
        assert!(!err.contains("another device"), "{err}");
        let latest = std::fs::read_to_string(d.join(run).join("checkpoints/latest")).unwrap_or_default();
        assert_eq!(latest.trim(), format!("step-{:08}", at - 1));
        let o = blkc(&d, &["eval", run, "--json"]);
        ok(&o);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_model_the_signal_check_rejects_is_not_trained_unless_asked() {
    let d = scratch("collapse");
    tiny(&d, "skipless_naive", "causal", 258, "");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "2"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("E3001") && err.contains("--no-check"), "{err}");
    assert!(!d.join("run/run.json").exists(), "nothing was trained");
    let o = blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "2", "--no-check", "-q"]);
    ok(&o);
    assert_eq!(losses(&d.join("run")).len(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bench_measures_models_side_by_side() {
    let d = scratch("bench");
    tiny(&d, "sas_p", "causal", 258, "");
    let o = blkc(
        &d,
        &["bench", "tiny.blk", "preln.blk", "--steps", "2", "--warmup", "1", "--batch", "2", "--format", "json"],
    );
    ok(&o);
    let v: serde_json::Value =
        serde_json::from_str(&text(&o.stdout)).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    assert_eq!((v["schema_version"].as_u64(), v["command"].as_str()), (Some(1), Some("bench")), "{v}");
    assert_eq!(v["attention"], "auto", "the attention's route, as BLKC_ATTENTION leaves it");
    let records = v["records"].as_array().unwrap_or_else(|| panic!("no records: {v}"));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["params"], 105_106, "the tiny model's count, as `blkc params` gives it");
    assert_eq!(records[1]["bare"], true, "a bare block runs in the small model");
    for r in records {
        for key in ["file", "params", "tokens_per_s", "step_ms", "forward_ms", "flops_per_token", "speed_vs_first"] {
            assert!(r.get(key).is_some(), "record lacks {key}: {r}");
        }
        assert!(r["step_ms"].as_f64().is_some_and(|x| x > 0.0));
        // Timed, not compared: two steps of a loaded machine may time a
        // forward above a step.
        assert!(r["forward_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert_eq!(r["memory"], "host", "the CPU counts host bytes: {r}");
        let mfu = r["mfu"].as_f64().unwrap_or(-1.0);
        assert!(mfu > 0.0 && mfu < 2.0, "the step's rate over a large product's: {r}");
    }
    assert_eq!(records[0]["speed_vs_first"], 1.0);
    // `train`'s estimate of a step errs high, as it says, where the step's
    // tensors outweigh its fixed scratch (1024 tokens; 2048 under a
    // window, whose weights are kept on their band), on the threads asked
    // for (set before the estimate counts their scratch).
    for set in [&["--set", "context=1024"][..], &["--set", "context=2048", "--set", "shaped.window=64"]] {
        let mut args = vec!["bench", "tiny.blk", "--steps", "1", "--warmup", "1", "--batch", "2", "--threads", "2"];
        args.extend_from_slice(set);
        args.extend_from_slice(&["--format", "json"]);
        let o = blkc(&d, &args);
        ok(&o);
        let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap_or_default();
        let r = &v["records"][0];
        let (peak, estimate) = (r["peak_mib"].as_f64(), r["estimate_mib"].as_f64());
        assert!(peak.zip(estimate).is_some_and(|(p, e)| p > 10.0 && p <= e), "{set:?}: {r}");
    }
    let o = blkc(&d, &["bench", "shaped.blk"]);
    assert_eq!(o.status.code(), Some(2), "a file with no block: {}", text(&o.stderr));
    let o = blkc(&d, &["bench", "tiny.blk", "--steps", "0"]);
    assert_eq!(o.status.code(), Some(2), "no timed step: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--steps must be at least 1"), "{}", text(&o.stderr));
    // A batch no machine holds (terabytes of activations) is refused before
    // anything is allocated, with the batch that fits; it was an
    // out-of-memory kill.
    let o = blkc(&d, &["bench", "tiny.blk", "--batch", "100000000"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("needs about") && err.contains("GiB free"), "{err}");
    let fits = err.split("--batch ").nth(1).and_then(|t| t.split(' ').next()).and_then(|n| n.parse::<u64>().ok());
    assert!(fits.is_some_and(|n| (1..100_000_000).contains(&n)), "the batch that fits: {err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `blkc train FILE --resume DIR` continues the run when FILE is its own
/// source, and refuses, saying why, when FILE differs from it.
#[test]
fn resume_accepts_the_runs_own_file_and_refuses_another() {
    let d = scratch("resume-file");
    tiny(&d, "sas_p", "causal", 258, "");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "run", "--steps", "4", "--stop-at", "2"]));
    ok(&blkc(&d, &["train", "tiny.blk", "--resume", "run", "--stop-at", "3"]));
    assert_eq!(losses(&d.join("run")).len(), 3, "resumed with its own file");
    let text_now = std::fs::read_to_string(d.join("tiny.blk")).unwrap_or_default();
    std::fs::write(d.join("tiny.blk"), text_now.replace("lr = 3e-3", "lr = 1e-3")).unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(&d, &["train", "tiny.blk", "--resume", "run"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("differs from the source"), "{}", text(&o.stderr));
    assert_eq!(losses(&d.join("run")).len(), 3, "nothing trained");
}

#[test]
fn model_settings_and_params_set_on_the_command_line_are_the_runs() {
    let d = scratch("set");
    tiny(&d, "sas_p", "causal", 258, "steps = 4\ncheckpoint_every = 2\neval_every = 2");
    let args = ["train", "tiny.blk", "--out", "run", "--set", "depth=3", "--set", "beta_ff=0.3", "--stop-at", "2"];
    ok(&blkc(&d, &args));
    let first: serde_json::Value = std::fs::read_to_string(d.join("run/metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let gains = &first["gains"];
    assert!(gains.get("2.beta_ff").is_some() && gains.get("3.beta_ff").is_none(), "three layers: {gains}");
    let beta_ff = gains["0.beta_ff"].as_f64().unwrap_or(f64::NAN);
    assert!((beta_ff - 0.3).abs() < 0.02, "beta_ff starts at the value set: {beta_ff}");
    // A resume keeps the run's model and refuses to change it.
    let o = blkc(&d, &["train", "--resume", "run", "--set", "depth=4"]);
    assert!(
        !o.status.success() && text(&o.stderr).contains("resume continues the run's own model"),
        "{}",
        text(&o.stderr)
    );
    ok(&blkc(&d, &["train", "--resume", "run"]));
    let last = losses(&d.join("run"));
    assert_eq!(last.len(), 4, "the resumed run finished");
    // Values set are checked by the compiler's rules, located in the command line.
    let o = blkc(&d, &["train", "tiny.blk", "--out", "bad", "--set", "heads=3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("<command line>"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}
