//! The MLP sub-block `down(act(up(x)))`, or gated (SwiGLU, GeGLU,
//! ReGLU): `down(act(gate(x)) ⊙ up(x))`.

use super::Build;
use blkc::graph::{Activation, Dropout, MlpSpec};
use burn::module::{Module, Param};
use burn::tensor::activation;
use burn::tensor::backend::Backend;

use crate::kernels::dense::Gate;
use crate::kernels::Kernels;
use burn::tensor::Tensor;

use super::dropout::Noise;
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
    /// Dropout in training.
    #[module(skip)]
    pub dropout: Dropout,
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
            dropout: spec.dropout,
        }
    }

    /// The MLP as at evaluation (no dropout).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, None)
    }

    /// The MLP, with the spec's dropout drawn from `noise` when it is given
    /// (a training forward).
    pub fn forward_with(&self, x: Tensor<B, 3>, noise: Option<Noise>) -> Tensor<B, 3> {
        let out = self.unit(x, noise.filter(|_| self.dropout.inner > 0.0).map(|n| n.at(0)));
        match noise {
            Some(n) => n.at(1).drop(out, self.dropout.branch),
            None => out,
        }
    }

    /// `down(act(up(x)))` or the gated unit, `hidden` dropping values of
    /// the hidden layer.
    fn unit(&self, x: Tensor<B, 3>, hidden: Option<Noise>) -> Tensor<B, 3> {
        let down_bias = self.down_bias.as_ref().map(Param::val);
        let drop = |h: Tensor<B, 3>| match hidden {
            Some(n) => n.drop(h, self.dropout.inner),
            None => h,
        };
        if let Some(gate) = &self.gate {
            let g = linear(x.clone(), gate.val(), self.gate_bias.as_ref().map(Param::val));
            let h = linear(x, self.up.val(), self.up_bias.as_ref().map(Param::val));
            // One pass forward and one backward where the family has the
            // activation's derivative; else burn's ops.
            let z = match Gate::of(self.activation) {
                Some(gate) => crate::kernels::dense::gated(g, h, gate),
                None => act(self.activation, g) * h,
            };
            return linear(drop(z), self.down.val(), down_bias);
        }
        if self.activation == Activation::Relu && hidden.is_none() {
            // One kernel: the ReLU applied, and its gradient masked, while
            // the product that forms each block of rows is in cache.
            let up = (self.up.val(), self.up_bias.as_ref().map(Param::val));
            return crate::kernels::relu_mlp(x, up, (self.down.val(), down_bias));
        }
        let h = linear(x, self.up.val(), self.up_bias.as_ref().map(Param::val));
        let a = match Gate::of(self.activation) {
            Some(gate) => crate::kernels::dense::activate(h, gate),
            None => act(self.activation, h),
        };
        linear(drop(a), self.down.val(), down_bias)
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
