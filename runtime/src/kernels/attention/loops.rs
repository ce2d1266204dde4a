//! The attention family's loops: a row's softmax (under the causal mask)
//! and its backward, a soft-cap's logits and slope, and ALiBi's bias.

use crate::kernels::cpu::raw::multiversion;
use crate::kernels::cpu::simd::{dot, exp, fold_lanes, tanh, LANES};

multiversion! {
    /// The softmax of `scale · row[..seen]` in place, and zeros after.
    /// The passes run over `seen` rounded up to [`LANES`], in whole chunks
    /// of [`LANES`] (a fixed-size loop each, so no scalar remainder), the
    /// columns past `seen` masked by a select; a row whose length is not a
    /// multiple of [`LANES`] ends in a short masked chunk.
    pub fn softmax(row: &mut [f32], seen: usize, scale: f32) {
        let (row, zeros) = row.split_at_mut(seen.div_ceil(LANES).saturating_mul(LANES).min(row.len()));
        zeros.fill(0.0);
        let mut acc = [f32::NEG_INFINITY; LANES];
        for (c, base) in row.chunks(LANES).zip((0..).step_by(LANES)) {
            for (i, (a, &x)) in acc.iter_mut().zip(c).enumerate() {
                *a = a.max(if base + i < seen { x } else { f32::NEG_INFINITY });
            }
        }
        let m = fold_lanes(acc, f32::max);
        let mut sums = [0.0f32; LANES];
        for (c, base) in row.chunks_mut(LANES).zip((0..).step_by(LANES)) {
            for (i, (s, x)) in sums.iter_mut().zip(c.iter_mut()).enumerate() {
                *x = if base + i < seen { exp((*x - m) * scale) } else { 0.0 };
                *s += *x;
            }
        }
        let inv = 1.0 / fold_lanes(sums, |a, b| a + b);
        for c in row.chunks_mut(LANES) {
            c.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

multiversion! {
    /// The gradient of softmax scores from the weights `p` and their
    /// gradient `dp` (in place): `scale · p ⊙ (dp − Σ p ⊙ dp)`.
    /// Returns `Σ p ⊙ dp`.
    pub fn softmax_backward(dp: &mut [f32], p: &[f32], scale: f32) -> f32 {
        let d = dot(p, dp);
        for (g, &w) in dp.iter_mut().zip(p) {
            *g = scale * w * (*g - d);
        }
        d
    }
}

multiversion! {
    /// Scores to soft-capped logits in place: `cap · tanh(scale · s / cap)`.
    pub fn soft_cap(row: &mut [f32], scale: f32, cap: f32) {
        let inner = scale / cap;
        for x in row.iter_mut() {
            *x = cap * tanh(*x * inner);
        }
    }
}

multiversion! {
    /// The soft-cap's slope applied to a row of logit gradients `dz` in
    /// place, from the scores `s` formed again: `dz · (1 − tanh²(scale · s
    /// / cap))`.
    pub fn cap_slope(dz: &mut [f32], s: &[f32], scale: f32, cap: f32) {
        let inner = scale / cap;
        for (g, &x) in dz.iter_mut().zip(s) {
            let th = tanh(x * inner);
            *g *= 1.0 - th * th;
        }
    }
}

multiversion! {
    /// Query `i`'s logits over keys `from..from + row.len()` in place,
    /// from scaled (or capped) scores: `row[c] = scale · row[c] − slope ·
    /// |i − (from + c)|` (ALiBi's distance bias; positions below 2³¹).
    pub fn distance_bias(row: &mut [f32], scale: f32, slope: f32, i: usize, from: usize) {
        let first = i as i32 - from as i32;
        for (c, x) in (0i32..).zip(row.iter_mut()) {
            *x = *x * scale - slope * (first - c).abs() as f32;
        }
    }
}
