//! Norms: RMSNorm and LayerNorm over the last dimension, as one graph
//! node whose backward adds into the input's gradient from elsewhere.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata};

use super::tensor::{primitive, tensor};

mod autodiff;
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

/// The norm family.
pub trait NormOps: Backend {
    /// RMSNorm (`centred = false`) or LayerNorm (`centred = true`) over the
    /// last dimension of `x: [rows, width]`: `(y, rstd)`, with
    /// `y = x̂ ⊙ scale (+ bias)`, `x̂ = (x − mean?) · rstd` and
    /// `rstd[r] = 1 / sqrt(mean((x − mean?)²) + eps)` per row.
    fn norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::norm::<Self>(x, scale, bias, eps, centred)
    }

    /// The gradients `(dx, dscale, dbias)` of [`NormOps::norm`] from `dy`:
    /// with `g = dy ⊙ scale`, `dx = rstd · (g − mean(g)? − x̂ · mean(g ⊙ x̂))`,
    /// `dscale = Σ_rows dy ⊙ x̂`, `dbias = Σ_rows dy`. With `acc` (a
    /// gradient of `x` from elsewhere), `dx` is added to it.
    fn norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        centred: bool,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::norm_backward_adding::<Self>(x, scale, rstd, dy, centred, acc)
    }

    /// `y` of [`NormOps::norm`] over the last dimension of `x: [..., width]`
    /// (one graph node on autodiff).
    fn normalise(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let width = shape[shape.num_dims() - 1];
        let x = Self::float_reshape(x, [shape.num_elements() / width.max(1), width].into());
        Self::float_reshape(Self::norm(x, scale, bias, eps, centred).0, shape)
    }
}

/// RMSNorm or LayerNorm over the last dimension (see [`NormOps::norm`]).
pub fn normalise<B: NormOps, const D: usize>(
    x: Tensor<B, D>,
    scale: Tensor<B, 1>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
    centred: bool,
) -> Tensor<B, D> {
    tensor(B::normalise(primitive(x), primitive(scale), bias.map(primitive), eps, centred))
}
