//! The layers a block graph is lowered to, one file per kind: each has a
//! builder from the IR (`…::build`) and a `forward`. Weights use the layout
//! `y = x · W` with `W: [fan_in, fan_out]`.

pub mod attention;
pub mod block;
pub mod dropout;
pub mod init;
pub mod map;
pub mod mlp;
pub mod norm;
pub mod scalar;
pub mod tables;
pub mod window;

use blkc::eval::Env;
use blkc::graph::{Init, Mask};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::kernels::Kernels;
use crate::rng::Rng;

/// What building one layer's modules reads: the model's width, heads and
/// mask, the layer's environment (`layer`, `depth`, …), the generator of
/// every draw, and the device.
#[derive(Debug)]
pub struct Build<'a, B: Backend> {
    pub width: usize,
    pub heads: usize,
    pub mask: Mask,
    /// Rotary positions for every attention's queries and keys.
    pub rope: Option<blkc::graph::Rope>,
    /// ALiBi's distance bias on every softmax's scores.
    pub alibi: bool,
    pub env: Env,
    pub rng: &'a mut Rng,
    pub device: &'a B::Device,
    /// The model's tables of positions, shared by its layers.
    pub tables: &'a tables::Tables,
}

impl<B: Backend> Build<'_, B> {
    /// A `[fan_in, fan_out]` weight drawn from `init` (see [`init::weight`]).
    pub fn weight(&mut self, init: &Init, fan_in: usize, fan_out: usize) -> Tensor<B, 2> {
        init::weight(init, fan_in, fan_out, &self.env, self.rng, self.device)
    }
}

/// `x · w (+ b)` for `x: [batch, tokens, fan_in]`, `w: [fan_in, fan_out]`,
/// as one 2-D product over all `batch · tokens` rows: the weight gradient is
/// then a single `xᵀ · dy`, not one product per batch row summed afterwards
/// (what a broadcast `[1, fan_in, fan_out]` weight costs in the backward).
pub fn linear<B: Kernels>(x: Tensor<B, 3>, w: Tensor<B, 2>, b: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
    crate::kernels::linear(x, w, b, false)
}
