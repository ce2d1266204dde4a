//! The gains family's loops: rows of a gained sum, gains per column, and
//! per group of columns with their gradients.

use std::mem::MaybeUninit;

use crate::kernels::cpu::raw::multiversion;
use crate::kernels::cpu::simd::dot;

multiversion! {
    /// One row of a gained sum: `out ← ga ⊙ a + gb ⊙ b` (gains per column;
    /// every element of `out` written).
    pub fn sum2_row(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], ga: &[f32], gb: &[f32]) {
        for ((y, (&a, &b)), (&p, &q)) in out.iter_mut().zip(a.iter().zip(b)).zip(ga.iter().zip(gb)) {
            y.write(p * a + q * b);
        }
    }
}

multiversion! {
    /// `out ← g ⊙ dy` (gains per column; every element of `out` written).
    pub fn scale_cols(out: &mut [MaybeUninit<f32>], dy: &[f32], g: &[f32]) {
        for ((o, &d), &g) in out.iter_mut().zip(dy).zip(g) {
            o.write(g * d);
        }
    }
}

multiversion! {
    /// Group `i` of `row` (groups of `inner`) times `gains[i]`, in place.
    pub fn scale_groups(row: &mut [f32], gains: &[f32], inner: usize) {
        for (part, &gain) in row.chunks_mut(inner.max(1)).zip(gains) {
            part.iter_mut().for_each(|v| *v *= gain);
        }
    }
}

multiversion! {
    /// `acc[i] += Σ a ⊙ b` over group `i` of every row (rows of `width`,
    /// groups of `inner`).
    pub fn group_dots(a: &[f32], b: &[f32], width: usize, inner: usize, acc: &mut [f64]) {
        for (ra, rb) in a.chunks(width.max(1)).zip(b.chunks(width.max(1))) {
            for (i, (pa, pb)) in ra.chunks(inner.max(1)).zip(rb.chunks(inner.max(1))).enumerate() {
                acc[i] += dot(pa, pb) as f64;
            }
        }
    }
}
