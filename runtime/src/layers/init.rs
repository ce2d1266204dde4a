//! Weight initialisation from the IR's [`Init`] (docs/language.md §7).

use blkc::eval::{eval_const, Env};
use blkc::graph::Init;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::rng::Rng;

/// A `[fan_in, fan_out]` weight drawn from `init`.
pub fn weight<B: Backend>(
    init: &Init,
    fan_in: usize,
    fan_out: usize,
    env: &Env,
    rng: &mut Rng,
    device: &B::Device,
) -> Tensor<B, 2> {
    let v = |s| eval_const(s, env).unwrap_or(0.0);
    let std = match init {
        Init::Zeros => return Tensor::zeros([fan_in, fan_out], device),
        Init::Identity => return identity(fan_in, fan_out, device),
        // The paper's absolute std (App. D.1: 0.02 for every weight).
        Init::Normal { std } => v(std),
        // N(0, gain²/fan_in): the fan-in convention of docs/theory.md §1.
        Init::FanIn { gain } => v(gain) / (fan_in as f64).sqrt(),
        Init::Orthogonal { gain } => return orthogonal(fan_in, fan_out, rng, device) * v(gain),
    };
    Tensor::from_data(TensorData::new(rng.normals(fan_in * fan_out, std), [fan_in, fan_out]), device)
}

/// Haar (semi-)orthogonal `[rows, cols]` with orthonormal rows or columns,
/// whichever are fewer (as torch's `orthogonal_`; Saxe et al. 2013): the
/// QR of a Gaussian, on the host in f64 — burn's own QR is a long chain of
/// small tensor ops, minutes at width 768.
pub fn orthogonal<B: Backend>(rows: usize, cols: usize, rng: &mut Rng, device: &B::Device) -> Tensor<B, 2> {
    let (tall, short) = (rows.max(cols), rows.min(cols));
    let data = rng.normals(tall * short, 1.0);
    let m = nalgebra::DMatrix::from_row_iterator(tall, short, data.into_iter().map(f64::from));
    let qr = m.qr();
    let (mut q, r) = (qr.q(), qr.r());
    // Sign correction makes the distribution Haar (Mezzadri 2007).
    for j in 0..short {
        if r[(j, j)] < 0.0 {
            q.column_mut(j).neg_mut();
        }
    }
    let q = if rows >= cols { q } else { q.transpose() };
    let out: Vec<f32> = q.transpose().iter().map(|x| *x as f32).collect();
    Tensor::from_data(TensorData::new(out, [rows, cols]), device)
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
