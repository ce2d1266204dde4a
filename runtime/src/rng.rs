//! The runtime's one random-number generator: model initialisation,
//! the training batches' order and masks, sampling, benchmark and
//! measurement tokens. It runs on the host, so a seed gives the same
//! numbers on every backend and whatever other threads draw.

use rayon::prelude::*;

/// xoshiro256++, seeded by SplitMix64.
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
