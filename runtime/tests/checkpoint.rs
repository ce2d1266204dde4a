//! Weights round-trip through a checkpoint (burn record) and through a
//! safetensors export, with stable tensor names.

use blkc_runtime::backend::Cpu;
use blkc_runtime::checkpoint::{export, import, load, names, save};
use blkc_runtime::model::Model;
use burn::tensor::{Int, Tensor};

type B = Cpu;

fn program() -> blkc::Program {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("blocks/sas.blk")).unwrap_or_default();
    let shaped = std::fs::read_to_string(root.join("blocks/shaped.blk")).unwrap_or_default();
    let body = text.replace("use \"shaped.blk\"", &shaped);
    let c = blkc::compile_str(
        "t.blk",
        &format!(
            "{body}\nmodel {{\n block = sas\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n}}\n"
        ),
    );
    c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
}

fn logits(m: &Model<B>) -> Vec<f32> {
    let t = Tensor::<B, 2, Int>::from_ints([[3, 1, 4, 1, 5, 9, 2, 6]], &Default::default());
    m.forward(t).into_data().to_vec().unwrap_or_default()
}

#[test]
fn checkpoints_and_safetensors_round_trip() {
    let p = program();
    let m = p.model.as_ref().expect("model");
    let device = Default::default();
    let a = Model::<B>::build(&p, m, 1, &device);
    let dir = std::env::temp_dir().join(format!("blkc-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let ckpt = dir.join("model.safetensors");
    let sum = save(&a, &ckpt).expect("save");
    let b = load(Model::<B>::build(&p, m, 2, &device), &ckpt, Some(sum), &device).expect("load");
    assert_ne!(logits(&Model::<B>::build(&p, m, 2, &device)), logits(&a), "different seeds, different weights");
    assert_eq!(logits(&a), logits(&b), "checkpoint round trip");

    let st = dir.join("model.safetensors");
    export(&a, &st).expect("export");
    let c = import(Model::<B>::build(&p, m, 3, &device), &st).expect("import");
    assert_eq!(logits(&a), logits(&c), "safetensors round trip");

    let n = names(&a);
    for expected in [
        "embedding",
        "positions",
        "blocks.0.attention.0.value.weight",
        "blocks.0.attention.0.gains.0",
        "blocks.0.attention.0.query",
        "blocks.0.mlp.0.up",
        "blocks.0.norms.0.scale",
        "blocks.1.gains.2",
        "final_norm.scale",
        "final_norm.bias",
    ] {
        assert!(n.iter().any(|x| x == expected), "{expected} not in {n:?}");
    }
    assert!(!n.iter().any(|x| x.starts_with("blocks.1.attention.0.value")), "identity values have no tensor: {n:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_checkpoint_is_a_clear_error() {
    let p = program();
    let m = p.model.as_ref().expect("model");
    let err = load(
        Model::<B>::build(&p, m, 1, &Default::default()),
        std::path::Path::new("/no/such.safetensors"),
        None,
        &Default::default(),
    );
    assert!(err.is_err_and(|e| e.contains("cannot read checkpoint")));
}

/// Weights of another architecture (another width, another depth) are a
/// clear error naming a tensor, never a panic or a partial load.
#[test]
fn weights_of_another_model_are_refused_by_name() {
    let device = Default::default();
    let dir = std::env::temp_dir().join(format!("blkc-foreign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ours = program();
    let m = ours.model.as_ref().expect("model");
    let base = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks/preln.blk"))
        .unwrap_or_default();
    for (what, model) in [
        ("width", "model {\n block = preln\n depth = 2\n width = 32\n heads = 2\n context = 8\n vocab = 50\n}\n"),
        ("depth", "model {\n block = preln\n depth = 3\n width = 16\n heads = 2\n context = 8\n vocab = 50\n}\n"),
    ] {
        let c = blkc::compile_str("o.blk", &format!("{base}\n{model}"));
        let other = c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let om = other.model.as_ref().expect("model");
        let path = dir.join(format!("{what}.safetensors"));
        save(&Model::<B>::build(&other, om, 1, &device), &path).expect("save");
        let err = load(Model::<B>::build(&ours, m, 1, &device), &path, None, &device).err().unwrap_or_default();
        assert!(err.contains("does not fit this model") && err.contains("`blocks."), "{what}: {err}");
    }
    // A flipped bit in the weights is caught by the recorded checksum.
    let path = dir.join("ours.safetensors");
    let sum = save(&Model::<B>::build(&ours, m, 1, &device), &path).expect("save");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    let err = load(Model::<B>::build(&ours, m, 1, &device), &path, Some(sum), &device).err().unwrap_or_default();
    assert!(err.contains("is damaged"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `blkc train --init-from RUN`: a new run starts from the weights of
/// RUN's newest checkpoint (fixed when it starts) and its tokenizer; with
/// a learning rate of 0 it scores what RUN scores. A resume from step 0
/// starts from them again. Another architecture, or a tokenizer that
/// reads ids otherwise, is refused with the checkpoint named.
#[test]
fn a_run_starts_from_another_runs_weights() {
    use crate::train::{blkc, ok, scratch, text, tiny};
    let d = scratch("init-from");
    tiny(&d, "sas_p", "causal", 258, "steps = 20");
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "base", "-q"]));
    let eval = |run: &str| {
        let o = blkc(&d, &["eval", run, "--json"]);
        ok(&o);
        let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        e["eval_loss"].as_f64().unwrap_or(f64::NAN)
    };
    let base = eval("base");
    // A rate far below a weight's last bit: no step changes one.
    let frozen = ["--set", "lr=1e-30", "--steps", "4"];
    ok(&blkc(&d, &[&["train", "tiny.blk", "--out", "same", "--init-from", "base", "-q"][..], &frozen].concat()));
    assert_eq!(eval("same"), base, "no step taken, so the weights are base's");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("same/run.json")).unwrap_or_default()).unwrap_or_default();
    assert_eq!(info["init_from"]["step"], 20, "{info}");
    assert!(info["init_from"]["checkpoint"].as_str().is_some_and(|c| c.ends_with("base/checkpoints/step-00000020")));
    // Training on from there: its first loss is base's, far below a fresh
    // run's.
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "on", "--init-from", "base/checkpoints/step-00000010", "-q"]));
    let first = |run: &str| crate::train::losses(&d.join(run))[&1].0;
    ok(&blkc(&d, &["train", "tiny.blk", "--out", "fresh", "--steps", "1", "-q"]));
    assert!(first("on") < first("fresh") - 1.0, "{} against {}", first("on"), first("fresh"));
    // Stopped before its first checkpoint: the resume starts from the
    // same weights, from the run's own copy of them (the checkpoint may
    // have gone: a run keeps its newest two).
    ok(&blkc(&d, &[&["train", "tiny.blk", "--out", "again", "--init-from", "base", "-q"][..], &frozen].concat()));
    std::fs::remove_dir_all(d.join("again/checkpoints")).unwrap_or_else(|e| panic!("{e}"));
    let moved = |from: &str, to: &str| std::fs::rename(d.join(from), d.join(to)).unwrap_or_else(|e| panic!("{e}"));
    moved("base/checkpoints", "gone");
    let o = blkc(&d, &["train", "--resume", "again"]);
    moved("gone", "base/checkpoints");
    ok(&o);
    assert!(text(&o.stderr).contains("init: the weights of"), "{}", text(&o.stderr));
    assert_eq!(eval("again"), base);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("again/run.json")).unwrap_or_default())
            .unwrap_or_default();
    assert!(info["init_from"]["copy"].is_u64() && d.join("again/init.safetensors").is_file(), "{info}");
    // Refused: another architecture, another tokenizer, no checkpoint.
    let deeper = std::fs::read_to_string(d.join("tiny.blk")).unwrap_or_default().replace("depth = 2", "depth = 3");
    std::fs::write(d.join("deeper.blk"), deeper).unwrap_or_else(|e| panic!("{e}"));
    let o = blkc(&d, &["train", "deeper.blk", "--out", "deeper", "--init-from", "base"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("--init-from") && err.contains("blocks.2") && err.contains("is missing"), "{err}");
    assert!(!d.join("deeper").exists(), "a run that could not start leaves nothing");
    let vocab: serde_json::Map<String, serde_json::Value> = (0..258).map(|i| (format!("t{i}"), i.into())).collect();
    let other = serde_json::json!({"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": null, "model": {"type": "BPE", "vocab": vocab, "merges": []}});
    std::fs::write(d.join("other.json"), other.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let o =
        blkc(&d, &["train", "tiny.blk", "--out", "tok", "--init-from", "base", "--set", "tokenizer=\"other.json\""]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("reads ids otherwise"), "{}", text(&o.stderr));
    let o = blkc(&d, &["train", "tiny.blk", "--out", "none", "--init-from", "nowhere"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("--init-from: `nowhere` is neither a run directory"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}
