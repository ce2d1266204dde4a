//! RMSNorm and LayerNorm over the last dimension, scale initialised to 1
//! (and LayerNorm's bias to 0).

use blkc::graph::{Norm as NormIr, NormKind};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::kernels::{self, Kernels};

#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    pub scale: Param<Tensor<B, 1>>,
    /// LayerNorm only.
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> Norm<B> {
    pub fn build(ir: &NormIr, width: usize, device: &B::Device) -> Self {
        let bias = (ir.kind == NormKind::LayerNorm).then(|| super::init::param(Tensor::zeros([width], device)));
        Norm { scale: super::init::param(Tensor::ones([width], device)), bias, eps: ir.eps }
    }

    /// `x / sqrt(mean(x²) + ε) · scale (+ bias)`, LayerNorm centring first
    /// (one kernel: `kernels::normalise`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: Kernels,
    {
        let bias = self.bias.as_ref().map(|b| b.val());
        kernels::normalise(x, self.scale.val(), bias, self.eps, self.bias.is_some())
    }
}
