//! The loss: cross-entropy of logits against targets, per row and as the
//! mean whose gradient is formed in the forward pass (the logits
//! soft-capped on the way when the model caps them).

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor};

use super::tensor::{primitive, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
#[cfg(feature = "flex")]
pub(crate) mod loops;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// The loss family.
pub trait LossOps: Backend {
    /// Cross-entropy per row of `logits: [n, vocab]` against `targets: [n]`:
    /// `(nll, lse)`, `lse[i] = log Σⱼ exp(logits[i, j])` and
    /// `nll[i] = lse[i] − logits[i, targets[i]]`.
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::cross_entropy::<Self>(logits, targets)
    }

    /// The gradient of the logits from that of `nll`:
    /// `g[i] · (exp(logits[i] − lse[i]) − onehot(targets[i]))`.
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::cross_entropy_backward::<Self>(logits, lse, targets, g)
    }

    /// `nll` of [`LossOps::cross_entropy`] (one graph node on autodiff).
    fn nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        Self::cross_entropy(logits, targets).0
    }

    /// The mean cross-entropy `[1]` of `logits: [n, vocab]` against
    /// `targets: [n]`, the logits first soft-capped to `cap · tanh(logits /
    /// cap)` when `cap` is given (one graph node on autodiff, its gradient
    /// computed in the forward pass).
    fn nll_mean(logits: FloatTensor<Self>, targets: IntTensor<Self>, cap: Option<f64>) -> FloatTensor<Self> {
        reference::nll_mean::<Self>(logits, targets, cap)
    }

    /// The mean cross-entropy `[1]` (of the soft-capped logits `z`, with
    /// `cap`) and its gradient with respect to the logits, `(softmax(z) −
    /// onehot) / n`, times `1 − (z / cap)²` with a cap — into the logits'
    /// memory where the backend can.
    fn nll_mean_with_grad(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        cap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::nll_mean_with_grad::<Self>(logits, targets, cap)
    }

    /// Logits soft-capped, `cap · tanh(x / cap)` (Gemma 2's), where the
    /// mean's kernel does not cap them itself: a masked model's loss, a
    /// sliding evaluation, the logits of sampling. By default burn's
    /// operations (under autodiff, their gradient); in place where the
    /// backend can.
    fn soft_capped(x: FloatTensor<Self>, cap: f64) -> FloatTensor<Self> {
        reference::soft_capped::<Self>(x, cap)
    }

    /// The sum of every entry of `x`, `[1]`, in an order its shape fixes (a
    /// masked model's loss: the tokens' losses, weighted); burn's own sum
    /// on a GPU adds partial sums with atomics, in any order.
    fn total(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_sum(x)
    }

    /// `x` times the one-element `g` (a gradient scaled by its upstream
    /// gradient); where the backend can, in place, and nothing when `g` is 1.
    fn times_scalar(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::times_scalar::<Self>(x, g)
    }
}

/// The mean cross-entropy of the logits, soft-capped at `cap` when given
/// (see [`LossOps::nll_mean`]): `[1]`.
pub fn nll_mean<B: LossOps>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>, cap: Option<f64>) -> Tensor<B, 1> {
    tensor(B::nll_mean(primitive(logits), targets.into_primitive(), cap))
}

/// `cap · tanh(x / cap)`: logits soft-capped (Gemma 2; see
/// [`LossOps::soft_capped`]).
pub fn softcap<B: LossOps, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    tensor(B::soft_capped(primitive(x), cap))
}

/// The sum of every entry (see [`LossOps::total`]): `[1]`.
pub fn total<B: LossOps>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    tensor(B::total(primitive(x)))
}

/// Cross-entropy per row (see [`LossOps::cross_entropy`]): `[n]`.
pub fn nll<B: LossOps>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    tensor(B::nll(primitive(logits), targets.into_primitive()))
}
