//! How much of a training step's forward + backward is spent outside matrix
//! products: the small CPU example (6 blocks, width 256, 4 heads, T = 128,
//! batch 16, vocab 4096). Two measures side by side:
//!
//! - in the step: the wall time inside `gemm` during the step, read from
//!   the flex kernels' product clock ([`blkc_runtime::kernels::product_time`]);
//! - alone: the same step's products (every forward product and the two
//!   backward products of each, at their shapes) on random operands, timed
//!   in alternation with the step. Isolated products read operands that are
//!   not in cache, so this one moves with the machine's memory traffic.
//!
//! `cargo bench -p blkc-runtime --bench step` (`RAYON_NUM_THREADS=N` for N
//! threads; `-- preln` for one model; `-- --steps-only` skips the products
//! alone, for a profile of the step by itself).

use std::time::Instant;

use blkc::graph::{MatrixTerm, Op};
use blkc_runtime::backend::Cpu;
use blkc_runtime::kernels::product_time;
use blkc_runtime::model::Model;
use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor};

type Ad = Autodiff<Cpu>;
const BATCH: usize = 16;
const STEPS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (batch, m, k, n) of every product of a forward + backward step.
fn products(p: &blkc::Program, m: &blkc::graph::Model) -> Vec<(usize, usize, usize, usize)> {
    let (d, h, t) = (m.width as usize, m.heads as usize, m.context as usize);
    let rows = BATCH * t;
    let mut fwd = Vec::new();
    for l in 0..m.depth {
        for n in &p.blocks[m.block].graph_at(l, m.depth).nodes {
            match &n.op {
                Op::Attention { spec, .. } => {
                    let hd = d / h;
                    if spec.uses(MatrixTerm::Softmax) {
                        fwd.push((1, rows, d, d));
                        fwd.push((1, rows, d, d));
                        fwd.push((BATCH * h, t, hd, t));
                        fwd.push((BATCH * h, t, t, hd));
                    }
                    for map in [&spec.value, &spec.proj] {
                        if !matches!(map, blkc::graph::Linear::Identity) {
                            fwd.push((1, rows, d, d));
                        }
                    }
                }
                Op::Mlp { spec, .. } => {
                    let hidden = blkc::graph::params::hidden(d as u128, spec.width) as usize;
                    fwd.push((1, rows, d, hidden));
                    fwd.push((1, rows, hidden, d));
                }
                _ => {}
            }
        }
    }
    fwd.push((1, rows, d, m.vocab as usize));
    // Y = X·W: dX = dY·Wᵀ is (m, n, k), dW = Xᵀ·dY is (k, m, n).
    let mut all = fwd.clone();
    for &(b, mm, k, n) in &fwd {
        all.push((b, mm, n, k));
        all.push((b, k, mm, n));
    }
    all
}

/// Random operands of every product of `shapes`.
fn operands(shapes: &[(usize, usize, usize, usize)]) -> Vec<(Tensor<Cpu, 3>, Tensor<Cpu, 3>)> {
    let device = Default::default();
    shapes
        .iter()
        .map(|&(b, m, k, n)| {
            (
                Tensor::random([b, m, k], Distribution::Default, &device),
                Tensor::random([b, k, n], Distribution::Default, &device),
            )
        })
        .collect()
}

/// The products alone (flex computes eagerly: each output is complete when
/// the call returns).
fn time_products(operands: &[(Tensor<Cpu, 3>, Tensor<Cpu, 3>)]) -> f64 {
    let t = Instant::now();
    for (a, b) in operands {
        std::hint::black_box(blkc_runtime::kernels::matmul(a.clone(), b.clone()));
    }
    t.elapsed().as_secs_f64()
}

/// One forward + backward of the training loss (`train::loss`, as
/// `blkc train` computes it) on a random batch: its seconds, and the
/// seconds of it spent inside products.
fn time_step(model: &Model<Ad>, batch: &blkc_runtime::train::batch::Batch, m: &blkc::graph::Model) -> (f64, f64) {
    let device = Default::default();
    let obj = blkc_runtime::train::objective_for_mask(m.mask, m.vocab as u32);
    let products = product_time();
    let start = Instant::now();
    let grads = blkc_runtime::train::loss(model, batch, obj, None, &device).backward();
    drop(std::hint::black_box(grads));
    let elapsed = start.elapsed().as_secs_f64();
    let in_products = (product_time() - products).as_secs_f64();
    (elapsed, in_products)
}

fn main() {
    blkc_runtime::alloc::keep_freed_memory();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!(
        "forward + backward, batch {BATCH} × 128 tokens, CPU ({}, {} threads), median of {STEPS}",
        blkc_runtime::backend::cpu_name(),
        rayon::current_num_threads()
    );
    println!(
        "{:<8} {:>8} | {:>11} {:>8} | {:>11} {:>8}",
        "model", "step ms", "in step ms", "outside", "alone ms", "outside"
    );
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let steps_only = std::env::args().any(|a| a == "--steps-only");
    for name in ["preln", "sas-p"].into_iter().filter(|n| only.is_empty() || only.iter().any(|o| o == n)) {
        let c = blkc::compile(&root.join(format!("examples/small/{name}.blk")), &blkc::FsLoader).expect("readable");
        let p = c.program.expect("compiles");
        let m = p.model.clone().expect("model");
        let model = Model::<Ad>::build(&p, &m, 0, &Default::default());
        let batch = blkc_runtime::bench::random_batch(&m, BATCH, 1);
        let ops = if steps_only { Vec::new() } else { operands(&products(&p, &m)) };
        // Warm up, then alternate the two so that the machine's drift
        // affects both alike.
        time_step(&model, &batch, &m);
        if !steps_only {
            time_products(&ops);
        }
        let (mut steps, mut outside, mut alone) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..STEPS {
            let (step, in_products) = time_step(&model, &batch, &m);
            steps.push(step);
            outside.push(1.0 - in_products / step);
            if !steps_only {
                alone.push(time_products(&ops));
            }
        }
        let (step, outside) = (median(steps), median(outside));
        print!("{name:<8} {:>8.1} | {:>11.1} {:>7.1}%", step * 1e3, step * (1.0 - outside) * 1e3, 100.0 * outside);
        if steps_only {
            println!();
            continue;
        }
        let alone = median(alone);
        println!(" | {:>11.1} {:>7.1}%", alone * 1e3, 100.0 * (1.0 - alone / step));
    }
}
