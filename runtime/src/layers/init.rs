//! Weight initialisation from the IR's [`Init`] (docs/language.md §7).

use blkc::eval::{eval_const, Env};
use blkc::graph::Init;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// The generator of every draw of a model's initialisation (xoshiro256++,
/// seeded by SplitMix64). It runs on the host and is owned by the build,
/// so a seed gives the same weights on every backend, whatever other
/// threads of the process draw.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// Elements drawn per independent stream (streams run in parallel).
const STREAM: usize = 1 << 16;

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut splitmix = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng { s: [splitmix(), splitmix(), splitmix(), splitmix()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform on [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Two independent standard normals (Box–Muller).
    fn normal_pair(&mut self) -> (f64, f64) {
        let radius = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * self.uniform()).sin_cos();
        (radius * cos, radius * sin)
    }

    /// `n` draws of N(0, std²): one stream per block of elements, each
    /// seeded from this generator, so the values do not depend on how many
    /// threads draw them.
    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        let base = self.next_u64();
        let mut out = vec![0.0f32; n];
        out.par_chunks_mut(STREAM).enumerate().for_each(|(i, block)| {
            let mut r = Rng::new(base.wrapping_add(i as u64));
            for pair in block.chunks_mut(2) {
                let (a, b) = r.normal_pair();
                pair[0] = (a * std) as f32;
                if let Some(second) = pair.get_mut(1) {
                    *second = (b * std) as f32;
                }
            }
        });
        out
    }
}

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
