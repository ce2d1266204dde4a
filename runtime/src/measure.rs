//! The measured init check: the lowered model at init, fed random token
//! sequences, against the infinite-width prediction made from the same
//! input Gram Σ (the signal analysis's token "kernel"; in this crate a
//! kernel is a compute kernel). Agreement is the proof that the theory and
//! the lowering describe the same network; finite width makes them differ by
//! O(1/√width) (docs/theory.md §5).

use blkc::graph::{Model as ModelIr, Program};
use blkc::signal::kernel::{effective_rank, mean_cosine, scale, Input};
use blkc::signal::{trace, Ablation, AttentionMode, Detail, Dims, Mat, Options};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Serialize;

use crate::kernels::Kernels;
use crate::model::Model;
use crate::rng::Rng;

/// Largest vocabulary built for a measurement: the statistics of the
/// blocks do not depend on it, the memory does.
pub const MAX_VOCAB: u64 = 4096;

/// The stated tolerance on the mean token cosine, for the mean over
/// several model draws (docs/theory.md §5: 3 seeds deviate from the prediction
/// by at most 0.046 at width 256 and 0.016 at 512–768, over 72 layers; one
/// draw alone fluctuates by up to ~0.07 at width 256).
pub fn tolerance(width: u64) -> f64 {
    if width >= 512 {
        0.03
    } else {
        0.05
    }
}

/// One layer, predicted and measured.
#[derive(Debug, Clone, Serialize)]
pub struct LayerComparison {
    pub layer: u64,
    pub cosine: f64,
    pub effective_rank: f64,
    pub scale: f64,
    pub measured_cosine: f64,
    pub measured_effective_rank: f64,
    pub measured_scale: f64,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub width: u64,
    pub heads: u64,
    pub depth: u64,
    pub context: usize,
    pub sequences: usize,
    /// Independently initialised models averaged over.
    pub models: usize,
    /// `random`, or the data the sequences came from.
    pub tokens: String,
    pub tolerance: f64,
    pub agreement: bool,
    pub max_difference: f64,
    pub layers: Vec<LayerComparison>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Token sequences to feed (real data); random tokens when `None`.
    pub data: Option<Vec<Vec<u32>>>,
    pub width: Option<u64>,
    pub depth: Option<u64>,
    pub context: usize,
    pub sequences: usize,
    pub models: usize,
    pub seed: u64,
}

/// The token Gram X·Xᵀ/d of one sequence's activations `[T, d]`.
fn gram<B: Backend>(x: Tensor<B, 2>) -> Mat {
    let [t, d] = x.dims();
    let k = x.clone().matmul(x.transpose()) / d as f64;
    let v: Vec<f32> = k.into_data().to_vec().unwrap_or_default();
    Mat::from_row_iterator(t, t, v.into_iter().map(f64::from))
}

/// Measured statistics of one model draw: per layer (cosine,
/// effective rank, scale), averaged over sequences; and the mean input
/// Gram.
fn draw<B: Kernels>(
    p: &Program,
    m: &ModelIr,
    t: usize,
    setup: &Setup,
    seed: u64,
    device: &B::Device,
) -> (Vec<[f64; 3]>, Mat) {
    let model = Model::<B>::build(p, m, seed, device);
    let sequences = setup.sequences;
    let tokens: Tensor<B, 2, Int> = match &setup.data {
        // Real text: byte tokens, folded into the vocabulary.
        Some(windows) => {
            let ids: Vec<i64> = windows
                .iter()
                .take(sequences)
                .flat_map(|w| w[..t].iter().map(|x| i64::from(*x) % m.vocab as i64))
                .collect();
            Tensor::<B, 1, Int>::from_ints(ids.as_slice(), device).reshape([sequences, t])
        }
        None => {
            let mut rng = Rng::new(seed.wrapping_add(0x5EED));
            let ids: Vec<i64> = (0..sequences * t).map(|_| (rng.uniform() * m.vocab as f64) as i64).collect();
            Tensor::<B, 1, Int>::from_ints(ids.as_slice(), device).reshape([sequences, t])
        }
    };
    let per_seq = |x: Tensor<B, 3>| -> Vec<Mat> {
        (0..sequences).map(|s| gram(x.clone().narrow(0, s, 1).reshape([t, m.width as usize]))).collect()
    };
    let avg = |ks: &[Mat], f: fn(&Mat) -> f64| ks.iter().map(f).sum::<f64>() / ks.len() as f64;
    let k0 = per_seq(model.embed(tokens.clone()));
    let mean0 = k0.iter().fold(Mat::zeros(t, t), |a, k| a + k) / sequences as f64;
    let stats = model
        .stream(tokens)
        .into_iter()
        .map(|x| {
            let ks = per_seq(x);
            [avg(&ks, mean_cosine), avg(&ks, effective_rank), avg(&ks, scale)]
        })
        .collect();
    (stats, mean0)
}

/// The heads of a model of `heads` at `width` measured at `w`: as many as
/// keep the model's head dimension when that divides `w`, else the most
/// (at most `heads`) that divide `w` — the heads must split the width.
fn heads_at(width: u64, heads: u64, w: u64) -> u64 {
    let head_dim = (width / heads.max(1)).max(1);
    if w.is_multiple_of(heads.max(1)) {
        heads.max(1)
    } else if w.is_multiple_of(head_dim) {
        w / head_dim
    } else {
        (1..=heads.max(1)).rev().find(|h| w.is_multiple_of(*h)).unwrap_or(1)
    }
}

/// Measures `models` independent draws of `m` (width/depth possibly
/// overridden; at another width the heads follow, see `heads_at`),
/// averages, and compares with the prediction from the mean measured
/// input Gram.
pub fn compare<B: Kernels>(p: &Program, m: &ModelIr, setup: Setup, device: &B::Device) -> Comparison {
    let mut m = m.clone();
    if let Some(w) = setup.width {
        m.heads = heads_at(m.width, m.heads, w);
        m.width = w;
    }
    m.depth = setup.depth.unwrap_or(m.depth);
    m.vocab = m.vocab.min(MAX_VOCAB);
    let t = setup.context.min(m.context as usize).max(2);
    let mut setup = setup;
    if let Some(w) = &setup.data {
        setup.sequences = setup.sequences.min(w.iter().filter(|w| w.len() >= t).count()).max(1);
        setup.data = Some(w.iter().filter(|w| w.len() >= t).cloned().collect());
    }
    let n = setup.models.max(1);
    let mut stats = vec![[0.0; 3]; m.depth as usize];
    let mut mean0 = Mat::zeros(t, t);
    for k in 0..n {
        let (s, k0) = draw::<B>(p, &m, t, &setup, setup.seed.wrapping_add(k as u64 * 1000), device);
        for (acc, v) in stats.iter_mut().zip(s) {
            for i in 0..3 {
                acc[i] += v[i] / n as f64;
            }
        }
        mean0 += k0 / n as f64;
    }
    let mut opts = Options::new(m.depth, t);
    opts.mode = AttentionMode::MonteCarlo;
    opts.inputs = vec![Input::Kernel { name: "measured".into(), kernel: mean0 }];
    let pred = trace(&p.blocks[m.block], Dims::of(&m), &opts.inputs[0], &opts, Ablation::default(), Detail::Full);
    let tol = tolerance(m.width);
    let layers: Vec<LayerComparison> = stats
        .iter()
        .zip(&pred.layers)
        .map(|(s, p)| LayerComparison {
            layer: p.layer,
            cosine: p.cosine,
            effective_rank: p.effective_rank,
            scale: p.scale,
            measured_cosine: s[0],
            measured_effective_rank: s[1],
            measured_scale: s[2],
        })
        .collect();
    let max_difference = layers.iter().map(|l| (l.cosine - l.measured_cosine).abs()).fold(0.0, f64::max);
    Comparison {
        width: m.width,
        heads: m.heads,
        depth: m.depth,
        context: t,
        sequences: setup.sequences,
        models: n,
        tokens: if setup.data.is_some() { "data".into() } else { "random".into() },
        tolerance: tol,
        agreement: max_difference <= tol,
        max_difference,
        layers,
    }
}

/// The comparison as a table.
pub fn table(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "measured at init: width {} ({} heads), depth {}, T = {}, mean of {} models × {} {} sequences",
        c.width, c.heads, c.depth, c.context, c.models, c.sequences, c.tokens
    );
    let _ = writeln!(
        s,
        "  {:>5}  {:>9}  {:>9}  {:>7}  {:>9}  {:>9}",
        "layer", "cos pred", "cos meas", "diff", "rank pred", "rank meas"
    );
    for l in &c.layers {
        let _ = writeln!(
            s,
            "  {:>5}  {:>9.4}  {:>9.4}  {:>+7.4}  {:>9.2}  {:>9.2}",
            l.layer,
            l.cosine,
            l.measured_cosine,
            l.measured_cosine - l.cosine,
            l.effective_rank,
            l.measured_effective_rank
        );
    }
    let verdict = if c.agreement { "agree" } else { "DISAGREE" };
    let _ = writeln!(s, "  {verdict}: largest cosine difference {:.4} (tolerance {})", c.max_difference, c.tolerance);
    s
}
