//! A small seeded generator (SplitMix64 + Box–Muller) for the Monte Carlo
//! attention expectation and the finite-width simulations in tests:
//! deterministic across platforms, no dependency.

/// SplitMix64 (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed ^ 0x9E37_79B9_7F4A_7C15, spare: None }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// The generator seeded `seed` as it stands after `index` draws of
    /// [`normal`](Self::normal): what it draws next is what the sequential
    /// stream draws next (SplitMix64 jumps ahead in one addition; a pair
    /// of normals takes two steps).
    pub fn at_normal(seed: u64, index: u64) -> Rng {
        let mut r = Rng::new(seed);
        r.state = r.state.wrapping_add((index / 2).wrapping_mul(2).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if index % 2 == 1 {
            // The pair's first half was drawn; its second waits.
            r.normal();
        }
        r
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * v).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_placed_ahead_draws_what_the_stream_draws() {
        let mut stream = Rng::new(7);
        let all: Vec<f64> = (0..41).map(|_| stream.normal()).collect();
        for index in [0usize, 1, 2, 5, 16, 17, 40] {
            let mut r = Rng::at_normal(7, index as u64);
            let next: Vec<f64> = (index..41).map(|_| r.normal()).collect();
            assert_eq!(next, all[index..], "placed at {index}");
        }
    }
}
