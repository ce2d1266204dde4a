//! The language must cost nothing: the small Pre-LN (examples/small/
//! preln.blk) lowered by blkc, against the same network written by hand —
//! once with blkc's kernels (what the lowering calls; the difference is the
//! cost of interpreting the graph) and once with burn's stock tensor ops (a
//! plain burn model). Same weights (taken from the lowered model), same
//! batch; forward + backward of the training loss, interleaved rounds,
//! median. `cargo bench -p blkc-runtime --bench handwritten`
//! (`RAYON_NUM_THREADS` sets the threads).

use std::time::Instant;

use blkc_runtime::backend::Cpu;
use blkc_runtime::kernels;
use blkc_runtime::layers::linear;
use blkc_runtime::model::Model;
use burn::backend::Autodiff;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};

type Ad = Autodiff<Cpu>;
const BATCH: usize = 16;
const ROUNDS: usize = 7;

/// Which hand-written forward.
#[derive(Clone, Copy, PartialEq)]
enum Ops {
    Kernels,
    Stock,
}

fn rms(x: Tensor<Ad, 3>, scale: Tensor<Ad, 1>, eps: f64, ops: Ops) -> Tensor<Ad, 3> {
    match ops {
        Ops::Kernels => kernels::normalise(x, scale, None, eps, false),
        Ops::Stock => {
            let r = (x.clone().square().mean_dim(2) + eps).sqrt();
            x / r * scale.unsqueeze()
        }
    }
}

fn dense(x: Tensor<Ad, 3>, w: Tensor<Ad, 2>, ops: Ops) -> Tensor<Ad, 3> {
    biased(x, w, None, ops)
}

/// `x · w (+ bias)`.
fn biased(x: Tensor<Ad, 3>, w: Tensor<Ad, 2>, bias: Option<Tensor<Ad, 1>>, ops: Ops) -> Tensor<Ad, 3> {
    match ops {
        Ops::Kernels => linear(x, w, bias),
        Ops::Stock => {
            let [b, t, k] = x.dims();
            let n = w.dims()[1];
            let y = x.reshape([b * t, k]).matmul(w);
            let y = bias.map_or(y.clone(), |bias| y + bias.unsqueeze());
            y.reshape([b, t, n])
        }
    }
}

/// `relu(x · up) · down`: blkc's MLP kernel, or burn's products and ReLU.
fn mlp(x: Tensor<Ad, 3>, up: Tensor<Ad, 2>, down: Tensor<Ad, 2>, ops: Ops) -> Tensor<Ad, 3> {
    match ops {
        Ops::Kernels => kernels::relu_mlp(x, (up, None), (down, None)),
        Ops::Stock => dense(relu(dense(x, up, ops)), down, ops),
    }
}

/// The Pre-LN network of `m`'s weights, written out: `h = x + attn(rms(x))`,
/// `out = h + mlp(rms(h))`, final LayerNorm, tied head; mean cross-entropy.
fn handwritten(m: &Model<Ad>, tokens: &Tensor<Ad, 2, Int>, targets: &Tensor<Ad, 1, Int>, ops: Ops) -> Tensor<Ad, 1> {
    let [b, t] = tokens.dims();
    let e = m.embedding.val();
    let (v, d) = (e.dims()[0], e.dims()[1]);
    let pos = m.positions.as_ref().map(|p| p.val().slice([0..t, 0..d]));
    let mut x = match ops {
        Ops::Kernels => kernels::embed(e.clone(), tokens.clone().reshape([b * t]), pos).reshape([b, t, d]),
        Ops::Stock => {
            let x = e.clone().select(0, tokens.clone().reshape([b * t])).reshape([b, t, d]);
            pos.map_or(x.clone(), |p| x + p.unsqueeze())
        }
    };
    for blk in &m.blocks {
        let a = &blk.attention[0];
        let (h, hd) = (a.plan.heads, a.plan.head_dim);
        let n = rms(x.clone(), blk.norms[0].scale.val(), blk.norms[0].eps, ops);
        let split = |y: Tensor<Ad, 3>| y.reshape([b, t, h, hd]).swap_dims(1, 2);
        let weight = |w: &Option<burn::module::Param<Tensor<Ad, 2>>>| w.as_ref().expect("dense").val();
        let bias = |b: &Option<burn::module::Param<Tensor<Ad, 1>>>| b.as_ref().map(|b| b.val());
        let vv = dense(n.clone(), weight(&a.value.weight), ops);
        let o = match ops {
            // The query's bias to the kernel, the key's left out (a
            // constant per row of scores).
            Ops::Kernels => {
                let q = split(dense(n.clone(), weight(&a.query), ops));
                let k = split(dense(n, weight(&a.key), ops));
                let scores = kernels::Scores::new(1.0 / (hd as f64).sqrt(), kernels::Keys::all(true));
                kernels::attention(q, k, vv, bias(&a.query_bias), scores)
            }
            Ops::Stock => {
                let q = split(biased(n.clone(), weight(&a.query), bias(&a.query_bias), ops));
                let k = split(biased(n, weight(&a.key), bias(&a.key_bias), ops));
                let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
                attention(q, k, split(vv), None, None, options).swap_dims(1, 2).reshape([b, t, h * hd])
            }
        };
        // Branch first: its fresh output is then updated in place.
        x = dense(o, weight(&a.proj.weight), ops) + x;
        let n = rms(x.clone(), blk.norms[1].scale.val(), blk.norms[1].eps, ops);
        x = mlp(n, blk.mlp[0].up.val(), blk.mlp[0].down.val(), ops) + x;
    }
    let f = m.final_norm.as_ref().expect("final norm");
    let bias = f.bias.as_ref().expect("layernorm").val();
    x = match ops {
        Ops::Kernels => kernels::normalise(x, f.scale.val(), Some(bias), f.eps, true),
        Ops::Stock => {
            let c = x.clone() - x.mean_dim(2);
            let r = (c.clone().square().mean_dim(2) + f.eps).sqrt();
            c / r * f.scale.val().unsqueeze() + bias.unsqueeze()
        }
    };
    let logits = dense(x, e.transpose(), ops).reshape([b * t, v]);
    match ops {
        Ops::Kernels => kernels::nll(logits, targets.clone()).mean(),
        Ops::Stock => log_softmax(logits, 1).gather(1, targets.clone().reshape([b * t, 1])).mean().neg(),
    }
}

fn main() {
    blkc_runtime::alloc::keep_freed_memory();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let c = blkc::compile(&root.join("examples/small/preln.blk"), &blkc::FsLoader).expect("readable");
    let p = c.program.expect("compiles");
    let ir = p.model.clone().expect("model");
    let device = Default::default();
    let model = Model::<Ad>::build(&p, &ir, 0, &device);
    let batch = blkc_runtime::bench::random_batch(&ir, BATCH, 1);
    let (rows, t) = (batch.rows, batch.context);
    let tokens = Tensor::<Ad, 2, Int>::from_data(TensorData::new(batch.inputs.clone(), [rows, t]), &device);
    let targets = Tensor::<Ad, 1, Int>::from_data(TensorData::new(batch.targets.clone(), [rows * t]), &device);
    let obj = blkc_runtime::train::objective_for_mask(ir.mask, ir.vocab as u32);

    // The three compute the same loss.
    let lowered = blkc_runtime::train::loss(&model, &batch, obj, None, &device).into_scalar();
    let by_kernels = handwritten(&model, &tokens, &targets, Ops::Kernels).into_scalar();
    let by_stock = handwritten(&model, &tokens, &targets, Ops::Stock).into_scalar();
    assert!(
        (lowered - by_kernels).abs() < 1e-4 && (lowered - by_stock).abs() < 1e-3,
        "{lowered} {by_kernels} {by_stock}"
    );

    let time = |f: &dyn Fn() -> Tensor<Ad, 1>| {
        let start = Instant::now();
        let grads = f().backward();
        std::hint::black_box(model.embedding.grad(&grads).map(|g| g.sum().into_scalar()));
        start.elapsed().as_secs_f64() * 1e3
    };
    let subjects: [(&str, &dyn Fn() -> Tensor<Ad, 1>); 3] = [
        ("blkc-lowered", &|| blkc_runtime::train::loss(&model, &batch, obj, None, &device)),
        ("hand-written, blkc kernels", &|| handwritten(&model, &tokens, &targets, Ops::Kernels)),
        ("hand-written, burn ops", &|| handwritten(&model, &tokens, &targets, Ops::Stock)),
    ];
    let mut times = vec![Vec::new(); subjects.len()];
    for round in 0..=ROUNDS {
        // Each round starts with another subject, so that none always runs
        // first (or after the same one).
        for k in 0..subjects.len() {
            let i = (round + k) % subjects.len();
            let ms = time(subjects[i].1);
            if round > 0 {
                times[i].push(ms);
            }
        }
    }
    println!(
        "Pre-LN small, forward + backward, batch {BATCH} × {t}, {} threads, median of {ROUNDS} interleaved rounds, order rotated (loss {lowered:.4})",
        rayon::current_num_threads()
    );
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    for ((name, _), ms) in subjects.iter().zip(&medians) {
        println!("{name:<28} {ms:>9.1} ms   blkc-lowered / this: {:.3}", medians[0] / ms);
    }
}
