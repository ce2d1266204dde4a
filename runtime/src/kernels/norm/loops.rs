//! The norm family's loops: a row normalised with its statistics in one
//! pass, and its backward.

use crate::kernels::cpu::raw::multiversion;
use crate::kernels::cpu::simd::{dot, fold_lanes, sum, sum_map, LANES};

multiversion! {
    /// RMSNorm (`centred = false`) or LayerNorm of one row `x` into `out`: `(x − mean?) · rstd ⊙ gamma (+ beta)`;
    /// returns `rstd`.
    pub fn norm(
        out: &mut [f32],
        x: &[f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32,
        centred: bool,
    ) -> f32 {
        let width = x.len().max(1) as f32;
        let mean = if centred { sum(x) / width } else { 0.0 };
        let r = 1.0 / (sum_map(x, |v| (v - mean) * (v - mean)) / width + eps).sqrt();
        match beta {
            Some(beta) => {
                for (((y, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
                    *y = (v - mean) * r * g + b;
                }
            }
            None => {
                for ((y, &v), &g) in out.iter_mut().zip(x).zip(gamma) {
                    *y = (v - mean) * r * g;
                }
            }
        }
        r
    }
}

multiversion! {
    /// The gradients of [`norm`] for one row, `dx` in place over `dy`: with
    /// `g = dy ⊙ gamma`, `dx = r · (g − mean(g)? − x̂ · mean(g ⊙ x̂))`, plus
    /// `acc` when given. First adds `dy ⊙ x̂` and `dy` into the column sums
    /// `ds` and `db` (the scale's and the shift's gradients), in the pass
    /// that reads the row for `Σ g ⊙ x̂`.
    pub fn norm_backward(
        dy: &mut [f32],
        x: &[f32],
        gamma: &[f32],
        r: f32,
        centred: bool,
        acc: Option<&[f32]>,
        sums: (&mut [f32], &mut [f32]),
    ) {
        let (ds, db) = sums;
        let width = x.len().max(1) as f32;
        let mean = if centred { sum(x) / width } else { 0.0 };
        let sum_g = if centred { dot(dy, gamma) } else { 0.0 };
        let n = dy.len().min(x.len()).min(gamma.len()).min(ds.len()).min(db.len());
        let (d, x, gamma, ds, db) = (&dy[..n], &x[..n], &gamma[..n], &mut ds[..n], &mut db[..n]);
        // Σ g ⊙ x̂ in [`LANES`] partial sums, the tail after them.
        let mut lanes = [0.0f32; LANES];
        let whole = n - n % LANES;
        let rows = d[..whole].chunks_exact(LANES).zip(x[..whole].chunks_exact(LANES)).zip(gamma[..whole].chunks_exact(LANES));
        for (((d, x), g), (s, b)) in rows.zip(ds[..whole].chunks_exact_mut(LANES).zip(db[..whole].chunks_exact_mut(LANES))) {
            for (k, a) in lanes.iter_mut().enumerate() {
                let xhat = (x[k] - mean) * r;
                *a += d[k] * g[k] * xhat;
                s[k] += d[k] * xhat;
                b[k] += d[k];
            }
        }
        let mut tail = 0.0f32;
        for j in whole..n {
            let xhat = (x[j] - mean) * r;
            tail += d[j] * gamma[j] * xhat;
            ds[j] += d[j] * xhat;
            db[j] += d[j];
        }
        let sum_gx = tail + fold_lanes(lanes, |a, b| a + b);
        let (mean_g, mean_gx) = (sum_g / width, sum_gx / width);
        match acc {
            Some(acc) => {
                for (((d, &g), &v), &a) in dy.iter_mut().zip(gamma).zip(x).zip(acc) {
                    let xhat = (v - mean) * r;
                    *d = r * (*d * g - mean_g - xhat * mean_gx) + a;
                }
            }
            None => {
                for ((d, &g), &v) in dy.iter_mut().zip(gamma).zip(x) {
                    let xhat = (v - mean) * r;
                    *d = r * (*d * g - mean_g - xhat * mean_gx);
                }
            }
        }
    }
}
