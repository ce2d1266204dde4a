//! Value and projection maps: `identity` (no parameter, no matmul),
//! `linear(init)` (a trainable weight), or `reparam` (He & Hofmann Eq. 6:
//! `W = skip·W_init + resid·ΔW`, W_init fixed and saved, ΔW zero at init).

use super::Build;
use blkc::eval::eval_const;
use blkc::graph::{Init, Linear};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::kernels::Kernels;
use burn::tensor::Tensor;

use super::init::{frozen, param};
use super::linear;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Identity,
    Dense,
    /// `skip·x·W_init + resid·x·ΔW`; `W_init` absent means the identity.
    Reparam,
}

#[derive(Module, Debug)]
pub struct Map<B: Backend> {
    /// The dense weight, or ΔW of a reparam.
    pub weight: Option<Param<Tensor<B, 2>>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// A reparam's fixed W_init (none for an identity W_init).
    pub fixed: Option<Param<Tensor<B, 2>>>,
    /// Trainable reparam gains.
    pub skip: Option<Param<Tensor<B, 1>>>,
    pub resid: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub kind: Kind,
    /// Constant reparam gains (when not trainable).
    #[module(skip)]
    pub gains: (f64, f64),
}

impl<B: Kernels> Map<B> {
    pub fn build(l: &Linear, fan_in: usize, fan_out: usize, build: &mut Build<'_, B>) -> Self {
        let (env, device) = (build.env, build.device);
        let mut m = Map {
            weight: None,
            bias: None,
            fixed: None,
            skip: None,
            resid: None,
            kind: Kind::Identity,
            gains: (1.0, 0.0),
        };
        match l {
            Linear::Identity => {}
            Linear::Dense { init, bias } => {
                m.kind = Kind::Dense;
                m.weight = Some(param(build.weight(init, fan_in, fan_out)));
                m.bias = bias.then(|| param(Tensor::zeros([fan_out], device)));
            }
            Linear::Reparam { skip, resid, init, trainable } => {
                m.kind = Kind::Reparam;
                let (a, b) = (eval_const(skip, &env).unwrap_or(0.0), eval_const(resid, &env).unwrap_or(0.0));
                m.weight = Some(param(Tensor::zeros([fan_in, fan_out], device)));
                m.fixed = (*init != Init::Identity).then(|| frozen(build.weight(init, fan_in, fan_out)));
                if *trainable {
                    m.skip = Some(param(Tensor::full([1], a, device)));
                    m.resid = Some(param(Tensor::full([1], b, device)));
                }
                m.gains = (a, b);
            }
        }
        m
    }

    fn gain(&self, p: &Option<Param<Tensor<B, 1>>>, c: f64, device: &B::Device) -> Tensor<B, 1> {
        p.as_ref().map_or_else(|| Tensor::full([1], c, device), |p| p.val())
    }

    /// `x: [batch, tokens, fan_in]` → `[batch, tokens, fan_out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let device = x.device();
        match (self.kind, &self.weight) {
            (Kind::Dense, Some(w)) => linear(x, w.val(), self.bias.as_ref().map(Param::val)),
            (Kind::Reparam, Some(dw)) => {
                let skip = self.gain(&self.skip, self.gains.0, &device);
                let resid = self.gain(&self.resid, self.gains.1, &device);
                let base = match &self.fixed {
                    Some(w0) => linear(x.clone(), w0.val(), None),
                    None => x.clone(),
                };
                crate::kernels::scaled_sum(base, linear(x, dw.val(), None), skip, resid)
            }
            _ => x,
        }
    }
}
