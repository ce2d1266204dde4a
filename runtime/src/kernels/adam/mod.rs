//! Adam(W): one update of a parameter and its moments, in one pass; and
//! the global norm of the gradients that clipping reads.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
#[cfg(feature = "flex")]
mod loops;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// The constants of one Adam(W) update of one parameter.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub bc1: f64,
    pub bc2: f64,
    /// Multiplier of the gradient (clipping).
    pub grad_scale: f64,
    /// L2 term added to the gradient (Adam's weight decay).
    pub l2: f64,
    /// Decoupled decay: the parameter is multiplied by `1 − decay` (AdamW).
    pub decay: f64,
}

/// The Adam family.
pub trait AdamOps: Backend {
    /// One Adam(W) update of `p` (flat, `[n]`) with gradient `g` and
    /// moments `m`, `v`: returns the new `(p, m, v)`.
    fn adam(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::adam::<Self>(p, g, m, v, k)
    }

    /// [`adam`](Self::adam) of many parameters with the same constants,
    /// each `[p, g, m, v]`: their new `[p, m, v]`, in order. The CubeCL
    /// backends update several parameters per launch.
    fn adam_many(items: Vec<[FloatTensor<Self>; 4]>, k: AdamStep) -> Vec<[FloatTensor<Self>; 3]> {
        items
            .into_iter()
            .map(|[p, g, m, v]| {
                let (p, m, v) = Self::adam(p, g, m, v, k);
                [p, m, v]
            })
            .collect()
    }

    /// `Σ_t Σ x²` over every tensor `t` of `xs` (the squared global norm of
    /// the gradients, which clipping reads): `[1]`, 0 for none.
    fn squared_norm(xs: Vec<FloatTensor<Self>>, device: &Self::Device) -> FloatTensor<Self> {
        reference::squared_norm::<Self>(xs, device)
    }
}

/// Consecutive runs of tensors of `sizes` that one launch updates
/// together: at most `most` tensors and (unless one alone is larger) `cap`
/// entries each, in order.
pub fn groups(sizes: &[usize], most: usize, cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut first, mut held) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > first && (i - first == most || held + n > cap) {
            out.push(first..i);
            (first, held) = (i, 0);
        }
        held += n;
    }
    if first < sizes.len() {
        out.push(first..sizes.len());
    }
    out
}
