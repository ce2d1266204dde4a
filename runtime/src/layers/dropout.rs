//! Dropout's randomness. Each mask entry is a hash of the run's seed, the
//! site (layer, node, which tensor of it), the row of the run's batch
//! stream and the entry's place in that row. So the masks of a training
//! step depend neither on the order they are drawn in, nor on how the
//! batch is split into micro-batches (a row keeps its masks whatever batch
//! it falls in), nor on the backend (they are drawn on the host, like every
//! other draw of the runtime), nor on any generator's state: a resumed run
//! draws exactly the masks of an uninterrupted one.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// The randomness of one training forward over rows `first_row..` of the
/// run's batch stream, at one site of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noise {
    key: u64,
    first_row: u64,
}

/// Keeps dropout's keys apart from those of other draws of the same seed.
const DOMAIN: u64 = 0x6472_6f70_6f75_7421;

/// SplitMix64's step and output function: `z` is the state.
fn mix(z: u64) -> u64 {
    let mut x = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Noise {
    /// The noise of a forward whose first row is row `first_row` of the
    /// batch stream of a run seeded `seed`.
    pub fn new(seed: u64, first_row: u64) -> Self {
        Noise { key: mix(seed ^ DOMAIN), first_row }
    }

    /// The independent noise of site `site` within this one (a layer of
    /// the model, a node of the block, a tensor of the node).
    pub fn at(self, site: u64) -> Self {
        Noise { key: mix(self.key ^ mix(site)), ..self }
    }

    /// The factors of `rows` rows of `per_row` entries: 0 with probability
    /// `p`, else `1 / (1 − p)` (so that the expected value is unchanged).
    pub fn factors(self, rows: usize, per_row: usize, p: f64) -> Vec<f32> {
        let keep = (1.0 / (1.0 - p)) as f32;
        // An entry is dropped when its 64-bit hash falls below p · 2⁶⁴.
        let below = (p * 18_446_744_073_709_551_616.0) as u64;
        let mut out = vec![0.0f32; rows * per_row];
        if per_row == 0 {
            return out;
        }
        out.par_chunks_mut(per_row).enumerate().for_each(|(r, row)| {
            let mut state = mix(self.key ^ mix(self.first_row.wrapping_add(r as u64)));
            for f in row.iter_mut() {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                *f = if mix(state) < below { 0.0 } else { keep };
            }
        });
        out
    }

    /// `x` with each entry dropped with probability `p` and the rest scaled
    /// by `1 / (1 − p)`; rows are `x`'s first dimension. `p = 0` is `x`.
    pub fn drop<B: Backend, const D: usize>(self, x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
        if p <= 0.0 {
            return x;
        }
        let dims = x.dims();
        let rows = dims[0];
        let per_row = dims[1..].iter().product();
        let mask = Tensor::from_data(TensorData::new(self.factors(rows, per_row, p), dims), &x.device());
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use super::Noise;

    #[test]
    fn a_row_keeps_its_mask_whatever_batch_it_is_in() {
        let whole = Noise::new(7, 10).at(3).factors(4, 1000, 0.25);
        let tail = Noise::new(7, 12).at(3).factors(2, 1000, 0.25);
        assert_eq!(&whole[2000..], &tail[..]);
        // Another site, another seed: other masks.
        assert_ne!(whole, Noise::new(7, 10).at(4).factors(4, 1000, 0.25));
        assert_ne!(whole, Noise::new(8, 10).at(3).factors(4, 1000, 0.25));
    }

    #[test]
    fn the_rate_and_the_scale_are_what_was_asked() {
        for p in [0.1, 0.5, 0.9] {
            let n = 400_000;
            let f = Noise::new(1, 0).at(0).factors(4, n / 4, p);
            let dropped = f.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
            // Four standard deviations of a binomial share.
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((dropped - p).abs() < 4.0 * sd, "p {p}: dropped {dropped}");
            let mean = f.iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
            assert!((mean - 1.0).abs() < 4.0 * sd / (1.0 - p), "p {p}: mean {mean}");
            assert!(f.iter().all(|v| *v == 0.0 || (f64::from(*v) - 1.0 / (1.0 - p)).abs() < 1e-6));
        }
    }

    #[test]
    fn neighbouring_entries_are_independent() {
        // The share of dropped pairs (i, i+1) is p² when entries are
        // independent.
        let (p, n) = (0.5, 200_000);
        let f = Noise::new(3, 0).factors(1, n, p);
        let both = f.windows(2).filter(|w| w[0] == 0.0 && w[1] == 0.0).count() as f64 / (n - 1) as f64;
        assert!((both - p * p).abs() < 0.01, "pairs dropped together: {both}");
    }
}
