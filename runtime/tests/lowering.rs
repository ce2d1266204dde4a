//! The lowered modules compute what the block files say (tiny sizes, CPU):
//! shaped attention is the identity at init, SAS and SAS-P agree at init,
//! lowered blocks match forward passes written out by hand with the same
//! weights, parameter counts match `blkc params`, and masks mask.

use blkc::graph::{params::count, Program};
use blkc_runtime::backend::Cpu;
use blkc_runtime::layers::block::Block;
use blkc_runtime::layers::dropout::Noise;
use blkc_runtime::model::Model;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Bool, Distribution, Int, Tensor};

type B = Cpu;

fn program(text: &str) -> Program {
    let c = blkc::compile_str("t.blk", text);
    match c.program {
        Some(p) => p,
        None => panic!("{text}\n{:?}", c.diagnostics),
    }
}

fn file(path: &str) -> Program {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let c = blkc::compile(&root.join(path), &blkc::FsLoader).unwrap_or_else(|e| panic!("{path}: {e}"));
    c.program.unwrap_or_else(|| panic!("{path}: {:?}", c.diagnostics))
}

/// A tiny model around the block of `blocks/NAME.blk`.
fn tiny(name: &str, depth: u64, mask: &str) -> Program {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks");
    let text = std::fs::read_to_string(root.join(format!("{name}.blk"))).unwrap_or_default();
    let shaped = std::fs::read_to_string(root.join("shaped.blk")).unwrap_or_default();
    let block = name.replace('-', "_");
    let body = text.replace("use \"shaped.blk\"", &shaped);
    program(&format!("{body}\nmodel {{\n block = {block}\n depth = {depth}\n width = 16\n heads = 2\n context = 8\n vocab = 50\n mask = {mask}\n}}\n"))
}

fn block(p: &Program, layer: u64) -> Block<B> {
    let m = p.model.as_ref().expect("model");
    let env = blkc::eval::Env { depth: m.depth as f64, width: 16.0, heads: 2.0, layer: layer as f64, head: 0.0 };
    let mut rng = blkc_runtime::rng::Rng::new(layer);
    let device = Default::default();
    let rope = m.positions.rope();
    let alibi = m.positions == blkc::graph::Positions::Alibi;
    let mut b = blkc_runtime::layers::Build {
        width: 16,
        heads: 2,
        mask: m.mask,
        rope,
        alibi,
        env,
        rng: &mut rng,
        device: &device,
        tables: &Default::default(),
    };
    Block::build(p.blocks[m.block].graph_at(layer, m.depth), &mut b)
}

fn input() -> Tensor<B, 3> {
    Tensor::random([3, 8, 16], Distribution::Normal(0.0, 1.0), &Default::default())
}

fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn shaped_attention_is_the_identity_at_init() {
    for name in ["sas", "sas-p"] {
        let p = tiny(name, 3, "causal");
        for layer in 0..3 {
            let b = block(&p, layer);
            let x = input();
            let y = b.attention[0].forward(x.clone());
            assert!(max_diff(x, y) < 1e-5, "{name} layer {layer}");
        }
    }
    let p = tiny("sas-p", 2, "bidirectional");
    let b = block(&p, 1);
    let x = input();
    assert!(max_diff(x.clone(), b.attention[0].forward(x)) < 1e-5, "bidirectional");
}

#[test]
fn sas_and_sas_p_compute_the_same_function_at_init() {
    let (sas, sasp) = (tiny("sas", 2, "causal"), tiny("sas-p", 2, "causal"));
    for layer in 0..2 {
        let a = block(&sas, layer);
        let mut b = block(&sasp, layer);
        b.mlp[0] = a.mlp[0].clone();
        let x = input();
        // SAS normalises twice (norm(norm(x))) where SAS-P normalises once;
        // at init both are x/rms(x) up to ε.
        assert!(max_diff(a.forward(x.clone()), b.forward(x)) < 1e-4, "layer {layer}");
    }
}

fn rms(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let r = (x.clone().square().mean_dim(2) + 1e-5).sqrt();
    x / r
}

/// Causal softmax attention written out: 2 heads of 8.
fn attention_by_hand(b: &Block<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let a = &b.attention[0];
    let w = |p: &Option<burn::module::Param<Tensor<B, 2>>>| p.as_ref().map(|p| p.val()).expect("weight");
    let bias = |p: &Option<burn::module::Param<Tensor<B, 1>>>| p.as_ref().map(|p| p.val()).expect("bias");
    let split = |t: Tensor<B, 3>| t.reshape([3, 8, 2, 8]).swap_dims(1, 2);
    let q = split(x.clone().matmul(w(&a.query).unsqueeze()) + bias(&a.query_bias).unsqueeze());
    let k = split(x.clone().matmul(w(&a.key).unsqueeze()) + bias(&a.key_bias).unsqueeze());
    let v = split(x.matmul(w(&a.value.weight).unsqueeze()));
    let scores = q.matmul(k.swap_dims(2, 3)) / 8f64.sqrt();
    let mask = Tensor::<B, 2, Bool>::tril_mask([8, 8], 0, &Default::default());
    let att = softmax(scores.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY), 3);
    let o = att.matmul(v).swap_dims(1, 2).reshape([3, 8, 16]);
    o.matmul(w(&a.proj.weight).unsqueeze())
}

fn mlp_by_hand(b: &Block<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let m = &b.mlp[0];
    relu(x.matmul(m.up.val().unsqueeze())).matmul(m.down.val().unsqueeze())
}

#[test]
fn lowered_blocks_match_hand_written_forward_passes() {
    let x = input();
    let b = block(&tiny("preln", 2, "causal"), 1);
    let h = x.clone() + attention_by_hand(&b, rms(x.clone()));
    let want = h.clone() + mlp_by_hand(&b, rms(h));
    assert!(max_diff(b.forward(x.clone()), want) < 1e-5, "pre-ln");

    let b = block(&tiny("parallel", 2, "causal"), 1);
    let n = rms(x.clone());
    let want = x.clone() + attention_by_hand(&b, n.clone()) + mlp_by_hand(&b, n);
    assert!(max_diff(b.forward(x.clone()), want) < 1e-5, "parallel");

    // SAS-P at init: A = I, identity V/P, β_SA = 1, β_FF = 0.1.
    let b = block(&tiny("sas-p", 2, "causal"), 1);
    let n = rms(x.clone());
    let want = n.clone() + mlp_by_hand(&b, n) * 0.1;
    assert!(max_diff(b.forward(x), want) < 1e-5, "sas-p");
}

#[test]
fn parameter_counts_match_blkc_params() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/small");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".blk") && n != "train.blk")
        .collect();
    names.sort();
    assert_eq!(names.len(), 14);
    for n in names {
        let p = file(&format!("examples/small/{n}"));
        let m = p.model.as_ref().expect("model");
        let built = Model::<B>::build(&p, m, 0, &Default::default());
        assert_eq!(built.trainable_params() as u128, count(m, &p.blocks[m.block]).total, "{n}");
    }
}

#[test]
fn causal_masking_hides_the_future_and_bidirectional_does_not() {
    for (mask, leaks) in [("causal", false), ("bidirectional", true)] {
        for name in ["preln", "sas-p"] {
            let p = tiny(name, 2, mask);
            let m = p.model.as_ref().expect("model");
            let mut model = Model::<B>::build(&p, m, 1, &Default::default());
            // At init shaped attention is the identity and mixes nothing;
            // give it random queries and β ≠ γ so the mask matters.
            for blk in &mut model.blocks {
                for a in &mut blk.attention {
                    if let Some(q) = &a.query {
                        let shape = q.val().dims();
                        a.query = Some(burn::module::Param::from_tensor(Tensor::random(
                            shape,
                            Distribution::Normal(0.0, 1.0),
                            &Default::default(),
                        )));
                    }
                    if a.gains.len() == 3 {
                        a.gains[1] = burn::module::Param::from_tensor(Tensor::full([2], 2.0, &Default::default()));
                    }
                }
            }
            let device = Default::default();
            let a = Tensor::<B, 2, Int>::from_ints([[1, 2, 3, 4, 5, 6, 7, 8]], &device);
            let b = Tensor::<B, 2, Int>::from_ints([[1, 2, 3, 4, 5, 6, 7, 40]], &device);
            let (ya, yb) = (model.forward(a), model.forward(b));
            let early = max_diff(ya.clone().slice([0..1, 0..7]), yb.clone().slice([0..1, 0..7]));
            if leaks {
                assert!(early > 1e-6, "{name} {mask}: earlier outputs must see the last token");
            } else {
                assert!(early == 0.0, "{name} {mask}: an earlier output changed by {early}");
            }
            assert!(
                max_diff(ya.slice([0..1, 7..8]), yb.slice([0..1, 7..8])) > 1e-6,
                "{name} {mask}: the changed position itself"
            );
        }
    }
}

/// The CodeParrot models built at full size (18 blocks, width 768, vocab
/// 50 000: 0.6 GB of f32 each, one at a time) have exactly the parameters
/// `blkc params` counts from the graph: the paper's 167M and 146M.
#[test]
fn codeparrot_models_built_have_the_counted_parameters() {
    for name in ["preln", "parallel", "sas", "sas-p", "sas-p-nonorm", "vskipinit"] {
        let p = file(&format!("examples/codeparrot/{name}.blk"));
        let m = p.model.as_ref().expect("model");
        let built = Model::<B>::build(&p, m, 0, &Default::default());
        assert_eq!(built.trainable_params() as u128, count(m, &p.blocks[m.block]).total, "{name}");
    }
}

#[test]
fn orthogonal_init_is_orthogonal() {
    let device = Default::default();
    let mut rng = blkc_runtime::rng::Rng::new(1);
    for (r, c) in [(16, 16), (8, 32), (32, 8)] {
        let w: Tensor<B, 2> = blkc_runtime::layers::init::orthogonal(r, c, &mut rng, &device);
        let (g, n) = if r <= c { (w.clone().matmul(w.transpose()), r) } else { (w.clone().transpose().matmul(w), c) };
        let eye = blkc_runtime::layers::init::identity::<B>(n, n, &device);
        let err: f32 = (g - eye).abs().max().into_scalar();
        assert!(err < 1e-5, "{r}x{c}: {err}");
    }
}

/// A gated MLP (SwiGLU, GeGLU, ReGLU) computes `down(act(x·gate) ⊙ x·up)`,
/// with the hidden width rounded up to `multiple_of`, and has the
/// parameters `blkc params` counts (three matrices and their biases).
#[test]
fn gated_mlps_match_a_hand_written_forward_pass_and_their_count() {
    use burn::tensor::activation::{gelu, gelu_approximate, silu};
    let x = input();
    let acts = [
        ("swiglu", silu::<3, B> as fn(Tensor<B, 3>) -> Tensor<B, 3>),
        ("geglu", gelu::<3, B>),
        ("geglu_tanh", gelu_approximate::<3, B>),
        ("reglu", relu::<3, B>),
    ];
    for (act, f) in acts {
        let text = format!(
            "mlp m {{\n activation = {act}\n width = 8/3\n multiple_of = 8\n bias = true\n}}\nblock b {{\n out = x + mlp(rmsnorm(x), m)\n}}\nmodel {{\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n}}\n"
        );
        let p = program(&text);
        let b = block(&p, 1);
        let m = &b.mlp[0];
        let gate = m.gate.as_ref().expect("a gate").val();
        // ⌊16 · 8/3⌋ = 42, rounded up to a multiple of 8: 48.
        assert_eq!(gate.dims(), [16, 48], "{act}");
        let bias = |p: &Option<burn::module::Param<Tensor<B, 1>>>| p.as_ref().expect("bias").val().unsqueeze::<3>();
        let n = rms(x.clone());
        let g = n.clone().matmul(gate.unsqueeze()) + bias(&m.gate_bias);
        let h = n.matmul(m.up.val().unsqueeze()) + bias(&m.up_bias);
        let want = x.clone() + (f(g) * h).matmul(m.down.val().unsqueeze()) + bias(&m.down_bias);
        assert!(max_diff(b.forward(x.clone()), want) < 1e-5, "{act}");
        let model = p.model.as_ref().expect("model");
        let built = Model::<B>::build(&p, model, 0, &Default::default());
        assert_eq!(built.trainable_params() as u128, count(model, &p.blocks[model.block]).total, "{act}");
    }
}

/// Grouped-query attention: keys and values of `kv_heads` heads, each
/// serving `heads / kv_heads` query heads, written out by hand; and the
/// count of `blkc params`.
#[test]
fn grouped_query_attention_matches_a_hand_written_forward_pass_and_its_count() {
    let x = input();
    // 4 heads of 4 over width 16, keys and values in 2 (or 1) heads.
    for kv in [2usize, 1] {
        let text = format!(
            "attention g {{\n kv_heads = {kv}\n bias = false\n}}\nblock b {{\n out = x + attn(rmsnorm(x), g)\n}}\nmodel {{\n block = b\n depth = 2\n width = 16\n heads = 4\n context = 8\n vocab = 50\n}}\n"
        );
        let p = program(&text);
        let m = p.model.as_ref().expect("model");
        let env = blkc::eval::Env { depth: 2.0, width: 16.0, heads: 4.0, layer: 1.0, head: 0.0 };
        let mut rng = blkc_runtime::rng::Rng::new(1);
        let device = Default::default();
        let mut ctx = blkc_runtime::layers::Build {
            width: 16,
            heads: 4,
            mask: m.mask,
            rope: None,
            alibi: false,
            env,
            rng: &mut rng,
            device: &device,
            tables: &Default::default(),
        };
        let b = Block::<B>::build(p.blocks[m.block].graph_at(1, 2), &mut ctx);
        let a = &b.attention[0];
        let w = |p: &Option<burn::module::Param<Tensor<B, 2>>>| p.as_ref().expect("weight").val();
        assert_eq!(w(&a.key).dims(), [16, 4 * kv]);
        let n = rms(x.clone());
        let heads = |t: Tensor<B, 3>, h: usize| t.reshape([3, 8, h, 4]).swap_dims(1, 2);
        let q = heads(n.clone().matmul(w(&a.query).unsqueeze()), 4);
        // Each key/value head repeated for the query heads of its group.
        let group = |t: Tensor<B, 3>| heads(t, kv).unsqueeze_dim::<5>(2).repeat_dim(2, 4 / kv).reshape([3, 4, 8, 4]);
        let k = group(n.clone().matmul(w(&a.key).unsqueeze()));
        let v = group(n.matmul(a.value.weight.as_ref().expect("a value weight").val().unsqueeze()));
        let scores = q.matmul(k.swap_dims(2, 3)) / 2.0;
        let mask = Tensor::<B, 2, Bool>::tril_mask([8, 8], 0, &Default::default());
        let att = softmax(scores.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY), 3);
        let o = att.matmul(v).swap_dims(1, 2).reshape([3, 8, 16]);
        let proj = a.proj.weight.as_ref().expect("a projection weight").val();
        let want = x.clone() + o.matmul(proj.unsqueeze());
        assert!(max_diff(b.forward(x.clone()), want) < 1e-5, "kv_heads {kv}");
        let built = Model::<B>::build(&p, m, 0, &Default::default());
        assert_eq!(built.trainable_params() as u128, count(m, &p.blocks[m.block]).total, "kv_heads {kv}");
    }
}

/// Rotary positions (`positions = rope(…)`): queries and keys of every
/// head turned pair by pair before the scores, written out by hand (half
/// of each head's 8 dimensions rotate, base 100); the weights have no
/// position table.
#[test]
fn rotary_positions_match_a_hand_written_forward_pass() {
    // Queries and keys large enough that the scores are far from uniform.
    let text = "attention a {\n query = fan_in(2)\n key = fan_in(2)\n}\nblock b {\n out = x + attn(rmsnorm(x), a)\n}\nmodel {\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n positions = rope(base = 100, fraction = 0.5)\n}\n";
    let p = program(text);
    let b = block(&p, 1);
    let a = &b.attention[0];
    let w = |p: &Option<burn::module::Param<Tensor<B, 2>>>| p.as_ref().map(|p| p.val()).expect("weight");
    let x = input();
    let n = rms(x.clone());
    let split = |t: Tensor<B, 3>| t.reshape([3, 8, 2, 8]).swap_dims(1, 2);
    // Token i, pair p of the first 4 dimensions: (p, p + 2) by i·100^(−p/2).
    let rotate = |t: Tensor<B, 4>| {
        let mut data = t.to_data().to_vec::<f32>().expect("floats");
        for (row, chunk) in data.chunks_mut(8).enumerate() {
            let i = row % 8;
            for p in 0..2 {
                let theta = i as f64 * 100f64.powf(-(p as f64) / 2.0);
                let (a, b) = (chunk[p] as f64, chunk[p + 2] as f64);
                chunk[p] = (a * theta.cos() - b * theta.sin()) as f32;
                chunk[p + 2] = (b * theta.cos() + a * theta.sin()) as f32;
            }
        }
        Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(data, [3, 2, 8, 8]), &Default::default())
    };
    let q = rotate(split(n.clone().matmul(w(&a.query).unsqueeze())));
    let k = rotate(split(n.clone().matmul(w(&a.key).unsqueeze())));
    let v = split(n.matmul(w(&a.value.weight).unsqueeze()));
    let scores = q.matmul(k.swap_dims(2, 3)) / 8f64.sqrt();
    let mask = Tensor::<B, 2, Bool>::tril_mask([8, 8], 0, &Default::default());
    let att = softmax(scores.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY), 3);
    let o = att.matmul(v).swap_dims(1, 2).reshape([3, 8, 16]);
    let want = x.clone() + o.matmul(w(&a.proj.weight).unsqueeze());
    assert!(max_diff(b.forward(x.clone()), want.clone()) < 1e-5, "rope");
    // Not the same function as without the rotation.
    let plain = block(&program(&text.replace(" positions = rope(base = 100, fraction = 0.5)\n", "")), 1);
    assert!(max_diff(plain.forward(x), want) > 1e-3, "the rotation changes the output");
    let m = p.model.as_ref().expect("model");
    assert!(Model::<B>::build(&p, m, 0, &Default::default()).positions.is_none(), "no position table");
}

/// ALiBi (`positions = alibi`): each head's scores get `−m_h·(i − j)`
/// (slopes 2^-4 and 2^-8 for 2 heads), written out by hand; a shaped
/// attention under ALiBi runs its softmax term with the bias too.
#[test]
fn alibi_matches_a_hand_written_forward_pass() {
    let text = "attention a {\n query = fan_in(2)\n key = fan_in(2)\n}\nblock b {\n out = x + attn(rmsnorm(x), a)\n}\nmodel {\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n positions = alibi\n}\n";
    let p = program(text);
    let b = block(&p, 1);
    let a = &b.attention[0];
    let w = |p: &Option<burn::module::Param<Tensor<B, 2>>>| p.as_ref().map(|p| p.val()).expect("weight");
    let bias = |p: &Option<burn::module::Param<Tensor<B, 1>>>| p.as_ref().map(|p| p.val()).expect("bias");
    let x = input();
    let n = rms(x.clone());
    let split = |t: Tensor<B, 3>| t.reshape([3, 8, 2, 8]).swap_dims(1, 2);
    let q = split(n.clone().matmul(w(&a.query).unsqueeze()) + bias(&a.query_bias).unsqueeze());
    let k = split(n.clone().matmul(w(&a.key).unsqueeze()) + bias(&a.key_bias).unsqueeze());
    let v = split(n.matmul(w(&a.value.weight).unsqueeze()));
    let slopes = [2f32.powi(-4), 2f32.powi(-8)];
    let mut distance = Vec::new();
    for m in slopes {
        for i in 0..8 {
            for j in 0..8 {
                distance.push(-m * (i as f32 - j as f32));
            }
        }
    }
    let alibi = Tensor::<B, 4>::from_data(burn::tensor::TensorData::new(distance, [1, 2, 8, 8]), &Default::default());
    let scores = q.matmul(k.swap_dims(2, 3)) / 8f64.sqrt() + alibi;
    let mask = Tensor::<B, 2, Bool>::tril_mask([8, 8], 0, &Default::default());
    let att = softmax(scores.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY), 3);
    let o = att.matmul(v).swap_dims(1, 2).reshape([3, 8, 16]);
    let want = x.clone() + o.matmul(w(&a.proj.weight).unsqueeze());
    assert!(max_diff(b.forward(x.clone()), want) < 1e-5, "alibi");
    // SAS-P under ALiBi: its softmax sees the bias, so at init it is no
    // longer the identity it is without (tiny("sas-p") is).
    let sas = tiny("sas-p", 2, "causal");
    let text = format!("{:?}", sas.model.as_ref().map(|m| m.positions));
    assert!(text.contains("Learned"), "{text}");
    let with = {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks");
        let shaped = std::fs::read_to_string(root.join("shaped.blk")).unwrap_or_default();
        let body =
            std::fs::read_to_string(root.join("sas-p.blk")).unwrap_or_default().replace("use \"shaped.blk\"", &shaped);
        program(&format!("{body}\nmodel {{\n block = sas_p\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n positions = alibi\n}}\n"))
    };
    let (plain, biased) = (block(&sas, 1).forward(x.clone()), block(&with, 1).forward(x));
    assert!(max_diff(plain, biased) > 1e-3, "ALiBi changes SAS-P's attention at init");
}

/// `noise`'s factors at a site for a tensor of `dims` (rows first).
fn factors<const D: usize>(noise: Noise, dims: [usize; D], p: f64) -> Tensor<B, D> {
    let per_row = dims[1..].iter().product();
    Tensor::from_data(burn::tensor::TensorData::new(noise.factors(dims[0], per_row, p), dims), &Default::default())
}

/// Dropout on the softmax weights, the attention's output, the MLP's
/// hidden layer and its output, with the masks of the documented sites
/// (layer, node, then 0 for the weights or the hidden layer, 1 for the
/// output): a training forward equals the one written out with those masks,
/// and an evaluation forward has no dropout at all.
#[test]
fn dropout_drops_where_the_file_says_in_training_only() {
    use burn::tensor::activation::gelu;
    let text = "attention a { dropout = 0.2  resid_dropout = 0.3 }\nmlp m { activation = gelu  dropout = 0.25 }\n\
                block b {\n h = x + attn(rmsnorm(x), a)\n out = h + mlp(rmsnorm(h), m, resid_dropout = 0.1)\n}\n\
                model {\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n}\n";
    let b = block(&program(text), 1);
    let x = input();
    let noise = Noise::new(5, 40);
    let layer = noise.at(1);
    let (attn, mlp) = (layer.at(2), layer.at(5));

    let a = &b.attention[0];
    let w = |p: &Option<burn::module::Param<Tensor<B, 2>>>| p.as_ref().map(|p| p.val()).expect("weight");
    let bias = |p: &Option<burn::module::Param<Tensor<B, 1>>>| p.as_ref().map(|p| p.val()).expect("bias");
    let split = |t: Tensor<B, 3>| t.reshape([3, 8, 2, 8]).swap_dims(1, 2);
    let attention = |x: Tensor<B, 3>, drop: bool| {
        let q = split(x.clone().matmul(w(&a.query).unsqueeze()) + bias(&a.query_bias).unsqueeze());
        let k = split(x.clone().matmul(w(&a.key).unsqueeze()) + bias(&a.key_bias).unsqueeze());
        let v = split(x.matmul(w(&a.value.weight).unsqueeze()));
        let mask = Tensor::<B, 2, Bool>::tril_mask([8, 8], 0, &Default::default());
        let mut att =
            softmax((q.matmul(k.swap_dims(2, 3)) / 8f64.sqrt()).mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY), 3);
        if drop {
            att = att * factors(attn.at(0), [3, 2, 8, 8], 0.2);
        }
        let o = att.matmul(v).swap_dims(1, 2).reshape([3, 8, 16]).matmul(w(&a.proj.weight).unsqueeze());
        if drop {
            o * factors(attn.at(1), [3, 8, 16], 0.3)
        } else {
            o
        }
    };
    let m = &b.mlp[0];
    let feed = |x: Tensor<B, 3>, drop: bool| {
        let mut h = gelu(x.matmul(m.up.val().unsqueeze()));
        if drop {
            h = h * factors(mlp.at(0), [3, 8, 64], 0.25);
        }
        let o = h.matmul(m.down.val().unsqueeze());
        if drop {
            o * factors(mlp.at(1), [3, 8, 16], 0.1)
        } else {
            o
        }
    };
    let by_hand = |drop: bool| {
        let h = x.clone() + attention(rms(x.clone()), drop);
        h.clone() + feed(rms(h), drop)
    };
    assert!(max_diff(b.forward_with(x.clone(), Some(noise)), by_hand(true)) < 1e-5, "training");
    assert!(max_diff(b.forward(x.clone()), by_hand(false)) < 1e-5, "evaluation");
    // The branches are small at init (weights of std 0.02): compare what
    // the dropout changes with the branches themselves.
    let branches = max_diff(by_hand(false), x.clone());
    let dropped = max_diff(b.forward_with(x.clone(), Some(noise)), b.forward(x.clone()));
    assert!(dropped > 0.1 * branches, "the masks drop: {dropped} against branches of {branches}");
    // Other rows of the run, other masks.
    let other = max_diff(b.forward_with(x.clone(), Some(noise)), b.forward_with(x, Some(Noise::new(5, 41))));
    assert!(other > 0.1 * branches, "other rows, other masks: {other} against {branches}");
}

/// SAS-P with dropout on its shaped attention's softmax weights: the
/// training forward leaves the fused kernels for the written-out weights,
/// `α·v + β·drop(softmax)·v − γ·C·v`, which at init (zero queries, so a
/// uniform causal softmax) no longer cancels the centring term.
#[test]
fn dropout_on_a_shaped_attentions_weights_leaves_its_identity_at_init() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks");
    let shaped = std::fs::read_to_string(root.join("shaped.blk")).unwrap_or_default();
    let text = format!(
        "{shaped}\nblock b {{\n param beta_ff = 0.1 trainable\n n = rmsnorm(x)\n out = attn(n, shaped, dropout = 0.5) + beta_ff * mlp(n)\n}}\n\
         model {{\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n}}\n"
    );
    let b = block(&program(&text), 1);
    let x = input();
    let noise = Noise::new(9, 0);
    let n = rms(x.clone());
    // The uniform causal weights: 1/(i+1) for j ≤ i.
    let uniform: Vec<f32> = (0..64).map(|k| if k % 8 <= k / 8 { 1.0 / (k / 8 + 1) as f32 } else { 0.0 }).collect();
    let uniform = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(uniform, [8, 8]), &Default::default());
    let weights =
        uniform.clone().unsqueeze::<4>().expand([3, 2, 8, 8]) * factors(noise.at(1).at(2).at(0), [3, 2, 8, 8], 0.5);
    let heads = |t: Tensor<B, 3>| t.reshape([3, 8, 2, 8]).swap_dims(1, 2);
    let merge = |t: Tensor<B, 4>| t.swap_dims(1, 2).reshape([3, 8, 16]);
    let dropped = merge(weights.matmul(heads(n.clone())));
    let centre = merge(uniform.unsqueeze::<4>().expand([3, 2, 8, 8]).matmul(heads(n.clone())));
    let want = n.clone() + dropped - centre + mlp_by_hand(&b, n.clone()) * 0.1;
    assert!(max_diff(b.forward_with(x.clone(), Some(noise)), want) < 1e-5, "training");
    // Evaluation: the identity at init, through the fused kernels.
    assert!(max_diff(b.forward(x), n.clone() + mlp_by_hand(&b, n) * 0.1) < 1e-5, "evaluation");
}

/// `embed_scale` multiplies what enters the first block; `logit_softcap`
/// makes the logits `cap · tanh(z / cap)` of the head's `z`. Neither draws
/// a weight: the same seed builds the same weights with and without them.
#[test]
fn the_embedding_scale_and_the_logits_cap_are_applied() {
    let base = "block b {\n out = x + attn(rmsnorm(x)) + mlp(rmsnorm(x))\n}\n\
                model {\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n";
    let plain = program(&format!("{base}}}\n"));
    let set = program(&format!("{base} embed_scale = 4\n logit_softcap = 0.02\n}}\n"));
    let device = Default::default();
    let build = |p: &Program| Model::<B>::build(p, p.model.as_ref().expect("a model"), 7, &device);
    let (plain, set) = (build(&plain), build(&set));
    let ids = burn::tensor::TensorData::new(vec![1i64, 5, 9, 49, 0, 3], [1, 6]);
    let tokens = Tensor::<B, 2, Int>::from_data(ids, &device);
    let e = max_diff(plain.embed(tokens.clone()) * 4.0, set.embed(tokens.clone()));
    assert!(e < 1e-6, "the embedding times 4: {e}");
    let mut uncapped = set.clone();
    uncapped.logit_softcap = None;
    let (z, y) = (uncapped.forward(tokens.clone()), set.forward(tokens));
    let largest = |t: Tensor<B, 3>| t.abs().max().into_scalar();
    assert!(largest(z.clone()) > 0.04, "the cap bites: the head's logits reach past twice it");
    assert!(largest(y.clone()) <= 0.02, "capped at 0.02");
    let e = max_diff(y, (z / 0.02).tanh() * 0.02);
    assert!(e < 1e-6, "0.02 · tanh(z / 0.02): {e}");
}

/// An attention's `rope_base` turns its queries and keys by its own base:
/// the model's base written there changes nothing; another base is the
/// model that has it (same seed, same weights); a model whose layers turn
/// by two bases is neither.
#[test]
fn a_rope_base_replaces_the_models_base() {
    let text = |model_base: u32, attention: &str| {
        format!(
            "attention a {{\n {attention}\n}}\nblock b {{\n out = x + attn(rmsnorm(x), a) + mlp(rmsnorm(x))\n}}\n\
             model {{\n block = b\n depth = 2\n width = 16\n heads = 2\n context = 8\n vocab = 50\n \
             positions = rope(base = {model_base})\n}}\n"
        )
    };
    let device = Default::default();
    let logits = |t: String| {
        let p = program(&t);
        let m = Model::<B>::build(&p, p.model.as_ref().expect("a model"), 7, &device);
        let ids = burn::tensor::TensorData::new(vec![1i64, 5, 9, 49, 0, 3, 7, 2], [1, 8]);
        m.forward(Tensor::<B, 2, Int>::from_data(ids, &device))
    };
    let model_500 = logits(text(500, "rope_base = none"));
    let same = logits(text(500, "rope_base = 500"));
    let own_3 = logits(text(500, "rope_base = 3"));
    let model_3 = logits(text(3, "rope_base = none"));
    let mixed = logits(text(500, "rope_base = none\n layer 1 { rope_base = 3 }"));
    // The section's default (the model's base) replaced in one layer, not
    // written outside the override.
    let mixed_default = logits(text(500, "layer 1 { rope_base = 3 }"));
    assert!(max_diff(mixed.clone(), mixed_default) < 1e-6, "an override of the default is the same");
    assert!(max_diff(model_500.clone(), same) < 1e-6, "the model's base written in the attention");
    assert!(max_diff(own_3.clone(), model_3.clone()) < 1e-6, "the attention's base is the model's of that base");
    assert!(max_diff(model_500.clone(), model_3.clone()) > 1e-4, "the base turns the positions");
    for other in [model_500, model_3] {
        assert!(max_diff(mixed.clone(), other) > 1e-4, "one layer of each base is neither");
    }
}
