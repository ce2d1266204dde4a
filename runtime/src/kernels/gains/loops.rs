//! The gains family's loops: rows of a gained sum, gains per column, and
//! per group of columns with their gradients.

use crate::kernels::cpu::raw::{multiversion, Out, Written};
use crate::kernels::cpu::simd::dot;

multiversion! {
    /// One row of a gained sum: `out ← ga ⊙ a + gb ⊙ b` (gains per column).
    pub fn sum2_row(out: Out<'_>, a: &[f32], b: &[f32], ga: &[f32], gb: &[f32]) -> Written {
        let n = out.len();
        let (a, b, ga, gb) = (&a[..n], &b[..n], &ga[..n], &gb[..n]);
        out.each(|j| ga[j] * a[j] + gb[j] * b[j])
    }
}

multiversion! {
    /// `out ← g ⊙ dy` (gains per column).
    pub fn scale_cols(out: Out<'_>, dy: &[f32], g: &[f32]) -> Written {
        let n = out.len();
        let (dy, g) = (&dy[..n], &g[..n]);
        out.each(|j| g[j] * dy[j])
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
