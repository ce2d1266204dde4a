//! The MLP sub-block `down(act(up(x)))`, or gated (SwiGLU, GeGLU,
//! ReGLU): `down(act(gate(x)) ⊙ up(x))`.

use super::Build;
use blkc::graph::{Activation, MlpSpec};
use burn::module::{Module, Param};
use burn::tensor::activation;
use burn::tensor::backend::Backend;

use crate::kernels::Kernels;
use burn::tensor::Tensor;

use super::init::param;
use super::linear;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub up: Param<Tensor<B, 2>>,
    pub up_bias: Option<Param<Tensor<B, 1>>>,
    /// The gate of a gated unit (its activation multiplies `up`'s output).
    pub gate: Option<Param<Tensor<B, 2>>>,
    pub gate_bias: Option<Param<Tensor<B, 1>>>,
    pub down: Param<Tensor<B, 2>>,
    pub down_bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Kernels> Mlp<B> {
    pub fn build(spec: &MlpSpec, b: &mut Build<'_, B>) -> Self {
        let width = b.width;
        let hidden = spec.hidden(width as u128) as usize;
        // Drawn in this order: up, down, then the gate (so models without
        // one draw what they always drew).
        let up = param(b.weight(&spec.up, width, hidden));
        let down = param(b.weight(&spec.down, hidden, width));
        let gate = spec.gated.then(|| param(b.weight(&spec.up, width, hidden)));
        Mlp {
            up,
            up_bias: spec.bias.then(|| param(Tensor::zeros([hidden], b.device))),
            gate_bias: (spec.gated && spec.bias).then(|| param(Tensor::zeros([hidden], b.device))),
            gate,
            down,
            down_bias: spec.bias.then(|| param(Tensor::zeros([width], b.device))),
            activation: spec.activation,
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let down_bias = self.down_bias.as_ref().map(Param::val);
        if let Some(gate) = &self.gate {
            let g = linear(x.clone(), gate.val(), self.gate_bias.as_ref().map(Param::val));
            let h = linear(x, self.up.val(), self.up_bias.as_ref().map(Param::val));
            return linear(act(self.activation, g) * h, self.down.val(), down_bias);
        }
        if self.activation == Activation::Relu {
            // One kernel: the ReLU applied, and its gradient masked, while
            // the product that forms each block of rows is in cache.
            let up = (self.up.val(), self.up_bias.as_ref().map(Param::val));
            return crate::kernels::relu_mlp(x, up, (self.down.val(), down_bias));
        }
        let h = linear(x, self.up.val(), self.up_bias.as_ref().map(Param::val));
        linear(act(self.activation, h), self.down.val(), down_bias)
    }
}

/// The activation of the IR.
pub fn act<B: Backend, const D: usize>(a: Activation, x: Tensor<B, D>) -> Tensor<B, D> {
    match a {
        Activation::Relu => activation::relu(x),
        Activation::LeakyRelu { slope } => activation::leaky_relu(x, slope),
        Activation::Gelu => activation::gelu(x),
        Activation::GeluTanh => activation::gelu_approximate(x),
        Activation::Silu => activation::silu(x),
        Activation::Tanh => activation::tanh(x),
        Activation::Erf => x.erf(),
        Activation::Identity => x,
    }
}
