//! The loss family's loops: a row's log-sum-exp, and its cross-entropy
//! gradient written over the logits.

use crate::kernels::cpu::raw::multiversion;
use crate::kernels::cpu::simd::{exp, fold_lanes, max, sum_map, tanh, LANES};

multiversion! {
    /// `log Σ exp(row)`, shifted by the row's maximum.
    pub fn log_sum_exp(row: &[f32]) -> f32 {
        let m = max(row);
        m + sum_map(row, |x| exp(x - m)).ln()
    }
}

multiversion! {
    /// The cross-entropy `log Σ exp(z) − z[target]` of the soft-capped row
    /// `z = cap · tanh(row / cap)`, formed in `z` (as long as the row).
    pub fn capped_cross_entropy(row: &[f32], target: usize, cap: f32, z: &mut [f32]) -> f32 {
        let inner = 1.0 / cap;
        for (z, &x) in z.iter_mut().zip(row) {
            *z = cap * tanh(x * inner);
        }
        log_sum_exp(z) - z[target]
    }
}

multiversion! {
    /// One row of the mean cross-entropy with its gradient, in place: the
    /// row becomes `(softmax(row) − onehot(target)) · inv_n`; returns the
    /// row's cross-entropy `log Σ exp(row) − row[target]`. One pass reads
    /// the row for its maximum; the others run in cache.
    pub fn cross_entropy_grad_row(row: &mut [f32], target: usize, inv_n: f32) -> f32 {
        let xt = row[target];
        let m = max(row);
        let mut sums = [0.0f32; LANES];
        for c in row.chunks_mut(LANES) {
            for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = exp(*x - m);
                *s += *x;
            }
        }
        let total = fold_lanes(sums, |a, b| a + b);
        let k = inv_n / total;
        row.iter_mut().for_each(|x| *x *= k);
        row[target] -= inv_n;
        m + total.ln() - xt
    }
}

multiversion! {
    /// [`cross_entropy_grad_row`] of the soft-capped row `z = cap ·
    /// tanh(row / cap)`, its gradient taken back through the cap: the row
    /// becomes `(softmax(z) − onehot(target)) · inv_n · (1 − (z / cap)²)`;
    /// returns `log Σ exp(z) − z[target]`. A pass writes `z` over the row
    /// and finds its maximum; one writes `exp(z − m)` times the slope and
    /// sums the exponentials; one scales (each exponential taken once).
    pub fn capped_cross_entropy_grad_row(row: &mut [f32], target: usize, inv_n: f32, cap: f32) -> f32 {
        let slope = |z: f32| 1.0 - (z / cap) * (z / cap);
        let mut m = f32::NEG_INFINITY;
        for x in row.iter_mut() {
            *x = cap * tanh(*x / cap);
            m = m.max(*x);
        }
        let zt = row[target];
        let mut sums = [0.0f32; LANES];
        for c in row.chunks_mut(LANES) {
            for (s, z) in sums.iter_mut().zip(c.iter_mut()) {
                let e = exp(*z - m);
                *s += e;
                *z = e * slope(*z);
            }
        }
        let total = fold_lanes(sums, |a, b| a + b);
        let k = inv_n / total;
        row.iter_mut().for_each(|x| *x *= k);
        row[target] -= inv_n * slope(zt);
        m + total.ln() - zt
    }
}

multiversion! {
    /// `row ← scale · exp(row − shift)` (softmax times `scale`, given the
    /// row's log-sum-exp as `shift`).
    pub fn scaled_exp(row: &mut [f32], shift: f32, scale: f32) {
        row.iter_mut().for_each(|a| *a = scale * exp(*a - shift));
    }
}
