//! The attention matrix at init (docs/theory.md §2.2). With zero queries the
//! logits vanish, so `softmax` equals the mask's centre matrix C and a
//! shaped matrix αI + β·softmax − γC is a fixed T×T matrix. With random
//! queries and keys the matrix stays random even at infinite width; its
//! moments E\[A\] and E\[A Σ Aᵀ\] are then estimated by Monte Carlo over
//! Gaussian queries and keys with the input's kernel.

use rayon::prelude::*;

use super::kernel::Mat;
use super::rng::Rng;
use crate::graph::{Mask, MatrixTerm};

/// The keys each query sees: those the mask allows, narrowed to a
/// sliding window when the attention has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub mask: Mask,
    /// Causal: the `window` latest tokens, the query's own included;
    /// bidirectional: those less than `window` positions away.
    pub window: Option<usize>,
}

impl Seen {
    /// Every key the mask allows.
    pub fn all(mask: Mask) -> Seen {
        Seen { mask, window: None }
    }

    /// The keys `first..=last` that query `i` of `t` sees.
    pub fn keys(self, i: usize, t: usize) -> std::ops::RangeInclusive<usize> {
        let reach = self.window.map_or(usize::MAX, |w| w.max(1) - 1);
        let last = match self.mask {
            Mask::Causal => i,
            Mask::Bidirectional => i.saturating_add(reach).min(t - 1),
        };
        i.saturating_sub(reach)..=last
    }
}

/// C: the softmax of all-zero logits under the mask (causal: row i uniform
/// over j ≤ i; bidirectional: 1/T everywhere), each row uniform over the
/// keys it sees.
pub fn centre(t: usize, seen: Seen) -> Mat {
    let mut c = Mat::zeros(t, t);
    for i in 0..t {
        let keys = seen.keys(i, t);
        let share = 1.0 / keys.clone().count() as f64;
        for j in keys {
            c[(i, j)] = share;
        }
    }
    c
}

/// Σ coefficient · term with `softmax` replaced by `soft`.
pub fn combine(terms: &[(f64, MatrixTerm)], soft: &Mat, centre: &Mat) -> Mat {
    let t = centre.nrows();
    let mut a = Mat::zeros(t, t);
    for (c, term) in terms {
        match term {
            MatrixTerm::Identity => {
                for i in 0..t {
                    a[(i, i)] += c;
                }
            }
            MatrixTerm::Softmax => a += soft * *c,
            MatrixTerm::Centre => a += centre * *c,
        }
    }
    a
}

/// How the logits are drawn in the Monte Carlo estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Logits {
    /// σ_Q·σ_K: the product of the query and key weight scales (fan-in
    /// convention, so logits have variance (σ_Qσ_K)²·Σ_ik Σ_jl).
    pub sigma_qk: f64,
    pub head_dim: usize,
    /// Per-head RMS normalisation of queries and keys.
    pub qk_norm: bool,
    pub softcap: Option<f64>,
    /// Rotary positions, applied to the drawn queries and keys (token `i`
    /// at position `i`).
    pub rope: Option<crate::graph::Rope>,
}

/// Rotates each row `i` (a token at position `i`) of `x` (tokens × head
/// dims) by RoPE: pairs `(p, p + r/2)` of its first `r` dimensions.
pub fn rotate(x: &mut Mat, rope: crate::graph::Rope) {
    let r = rope.dims(x.ncols());
    let half = r / 2;
    for i in 0..x.nrows() {
        for p in 0..half {
            let (sin, cos) = rope.angle(i, p, r).sin_cos();
            let (a, b) = (x[(i, p)], x[(i, p + half)]);
            x[(i, p)] = a * cos - b * sin;
            x[(i, p + half)] = b * cos + a * sin;
        }
    }
}

/// Monte Carlo moments (E\[A\], E\[A Σ Aᵀ\]) of the attention matrix for input
/// kernel `sigma`, from `samples` draws seeded by `seed`.
pub fn mc_moments(
    terms: &[(f64, MatrixTerm)],
    logits: Logits,
    bias: Option<&Mat>,
    sigma: &Mat,
    seen: Seen,
    samples: usize,
    seed: u64,
) -> (Mat, Mat) {
    let t = sigma.nrows();
    let c = centre(t, seen);
    let l = cholesky(sigma);
    let dh = logits.head_dim.max(1);
    // Draw j takes normals 2·j·T·d_h onwards of the one seeded stream (its
    // queries, then its keys), wherever it runs; the sums are in draw
    // order: the same moments, bit for bit, on any number of threads.
    let per_draw = 2 * (t * dh) as u64;
    let draw = |z: Mat| {
        let mut q = &l * z;
        if logits.qk_norm {
            for mut row in q.row_iter_mut() {
                let rms = (row.norm_squared() / dh as f64).sqrt().max(1e-12);
                row /= rms;
            }
        }
        if let Some(rope) = logits.rope {
            rotate(&mut q, rope);
        }
        q
    };
    let scale = (if logits.qk_norm { 1.0 } else { logits.sigma_qk }) / (dh as f64).sqrt();
    let moments: Vec<(Mat, Mat)> = (0..samples.max(1) as u64)
        .into_par_iter()
        .map(|j| {
            let mut rng = Rng::at_normal(seed, j * per_draw);
            let zq = Mat::from_fn(t, dh, |_, _| rng.normal());
            let zk = Mat::from_fn(t, dh, |_, _| rng.normal());
            let (q, k) = (draw(zq), draw(zk));
            let mut g = (q * k.transpose()) * scale;
            if let Some(cap) = logits.softcap {
                g.apply(|x| *x = cap * (*x / cap).tanh());
            }
            if let Some(b) = bias {
                g += b;
            }
            let soft = masked_softmax(&g, seen);
            let a = combine(terms, &soft, &c);
            let second = &a * sigma * a.transpose();
            (a, second)
        })
        .collect();
    let mut mean = Mat::zeros(t, t);
    let mut second = Mat::zeros(t, t);
    for (a, s) in moments {
        second += s;
        mean += a;
    }
    let n = samples.max(1) as f64;
    (mean / n, second / n)
}

/// ALiBi's bias of one head: `−slope · (i − j)` (causal) or
/// `−slope · |i − j|` (bidirectional).
pub fn alibi(t: usize, slope: f64, mask: Mask) -> Mat {
    Mat::from_fn(t, t, |i, j| match mask {
        Mask::Causal => -slope * (i as f64 - j as f64),
        Mask::Bidirectional => -slope * (i as f64 - j as f64).abs(),
    })
}

/// The row softmax of scores `g` over the keys each query sees.
pub fn softmax_masked(g: &Mat, seen: Seen) -> Mat {
    masked_softmax(g, seen)
}

fn masked_softmax(g: &Mat, seen: Seen) -> Mat {
    let t = g.nrows();
    let mut out = Mat::zeros(t, t);
    for i in 0..t {
        let keys = seen.keys(i, t);
        let max = keys.clone().map(|j| g[(i, j)]).fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for j in keys.clone() {
            let e = (g[(i, j)] - max).exp();
            out[(i, j)] = e;
            sum += e;
        }
        for j in keys {
            out[(i, j)] /= sum;
        }
    }
    out
}

/// Lower Cholesky factor of Σ (with a little jitter for rank-deficient
/// kernels such as collapsed ones).
pub fn cholesky(sigma: &Mat) -> Mat {
    let t = sigma.nrows();
    let mut jitter = 1e-10 * sigma.diagonal().mean().max(1e-300);
    for _ in 0..12 {
        let k = sigma + Mat::identity(t, t) * jitter;
        if let Some(c) = k.cholesky() {
            return c.l();
        }
        jitter *= 10.0;
    }
    // A kernel that is not positive semi-definite is a bug upstream; fall
    // back to the diagonal so the analysis still completes.
    Mat::from_diagonal(&sigma.diagonal().map(|q| q.max(0.0).sqrt()))
}
