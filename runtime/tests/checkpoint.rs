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
