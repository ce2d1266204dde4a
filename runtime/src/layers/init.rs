//! Weight initialisation from the IR's [`Init`] (docs/language.md §7).

use blkc::eval::{eval_const, Env};
use blkc::graph::Init;
use burn::module::{Initializer, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A `[fan_in, fan_out]` weight drawn from `init`.
pub fn weight<B: Backend>(init: &Init, fan_in: usize, fan_out: usize, env: &Env, device: &B::Device) -> Tensor<B, 2> {
    let v = |s| eval_const(s, env).unwrap_or(0.0);
    let initializer = match init {
        Init::Zeros => return Tensor::zeros([fan_in, fan_out], device),
        Init::Identity => return identity(fan_in, fan_out, device),
        // The paper's absolute std (App. D.1: 0.02 for every weight).
        Init::Normal { std } => Initializer::Normal { mean: 0.0, std: v(std) },
        // N(0, gain²/fan_in): the fan-in convention of theory.md §1.
        Init::FanIn { gain } => Initializer::Normal { mean: 0.0, std: v(gain) / (fan_in as f64).sqrt() },
        // Haar (semi-)orthogonal as torch's orthogonal_ (Saxe et al. 2013).
        Init::Orthogonal { gain } => Initializer::Orthogonal { gain: v(gain) },
    };
    initializer.init::<B, 2, _>([fan_in, fan_out], device).val()
}

/// The (rectangular) identity.
pub fn identity<B: Backend>(rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    let data: Vec<f32> = (0..rows * cols).map(|k| if k / cols == k % cols { 1.0 } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

/// A trainable parameter.
pub fn param<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t)
}

/// A parameter saved with the model that never trains (a reparam's W_init).
pub fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t).set_require_grad(false)
}
