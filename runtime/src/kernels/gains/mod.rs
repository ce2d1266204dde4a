//! Gains: a tensor scaled per group of its last dimension (one gain, or
//! one per head), and the gained sum `ga ⊙ a + gb ⊙ b` of a block's
//! branches — the trainable gains of the `.blk` files.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use super::tensor::{primitive, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod cube;
#[cfg(feature = "flex")]
mod loops;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// The gains family.
pub trait GainOps: Backend {
    /// `ga ⊙ a + gb ⊙ b` for `a`, `b` of one shape, each gain `[n]`
    /// scaling `n` equal groups of the last dimension (a sum node with
    /// trainable gains, a reparameterised map).
    fn scaled_sum(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::scaled_sum::<Self>(a, b, ga, gb)
    }

    /// The gradients `(da, db, dga, dgb)` of [`GainOps::scaled_sum`] from `dy`.
    fn scaled_sum_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        reference::scaled_sum_backward::<Self>(a, b, ga, gb, dy)
    }

    /// `x` scaled by `g: [n]`, the last dimension of `x` split into `n`
    /// equal groups (heads), group `i` multiplied by `g[i]`; `n = 1` scales
    /// everything by one gain.
    fn scale_groups(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::scale_groups::<Self>(x, g)
    }

    /// The gradient of the gains of [`GainOps::scale_groups`]:
    /// `dg[i] = Σ dy ⊙ x` over group `i`.
    fn scale_groups_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>, n: usize) -> FloatTensor<Self> {
        reference::scale_groups_grad::<Self>(x, dy, n)
    }
}

/// `x` scaled by `g` per group of its last dimension (see
/// [`GainOps::scale_groups`]).
pub fn scale_groups<B: GainOps, const D: usize>(x: Tensor<B, D>, g: Tensor<B, 1>) -> Tensor<B, D> {
    tensor(B::scale_groups(primitive(x), primitive(g)))
}

/// `ga ⊙ a + gb ⊙ b` (see [`GainOps::scaled_sum`]).
pub fn scaled_sum<B: GainOps, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    ga: Tensor<B, 1>,
    gb: Tensor<B, 1>,
) -> Tensor<B, D> {
    tensor(B::scaled_sum(primitive(a), primitive(b), primitive(ga), primitive(gb)))
}
