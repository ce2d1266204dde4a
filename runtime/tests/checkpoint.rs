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

    let ckpt = dir.join("model.mpk");
    save(&a, &ckpt).expect("save");
    let b = load(Model::<B>::build(&p, m, 2, &device), &ckpt, &device).expect("load");
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
        std::path::Path::new("/no/such.mpk"),
        &Default::default(),
    );
    assert!(err.is_err_and(|e| e.contains("cannot read checkpoint")));
}
