//! The layers a block graph is lowered to, one file per kind: each has a
//! builder from the IR (`…::build`) and a `forward`. Weights use the layout
//! `y = x · W` with `W: [fan_in, fan_out]`.

pub mod attention;
pub mod block;
pub mod init;
pub mod map;
pub mod mlp;
pub mod norm;
pub mod scalar;

use crate::kernels::Kernels;
use burn::tensor::Tensor;

/// `x · w (+ b)` for `x: [batch, tokens, fan_in]`, `w: [fan_in, fan_out]`,
/// as one 2-D product over all `batch · tokens` rows: the weight gradient is
/// then a single `xᵀ · dy`, not one product per batch row summed afterwards
/// (what a broadcast `[1, fan_in, fan_out]` weight costs in the backward).
pub fn linear<B: Kernels>(x: Tensor<B, 3>, w: Tensor<B, 2>, b: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
    crate::kernels::linear(x, w, b, false)
}
