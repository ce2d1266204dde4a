//! The dense family's loops: ReLU in place (after a bias), its mask of
//! bits, and the gradients through it; the activations of gated units and
//! their gradients.

use super::Gate;
use crate::kernels::cpu::raw::multiversion;

multiversion! {
    /// `max(v + b, 0)` in place (`b` per column).
    pub fn bias_relu(row: &mut [f32], b: &[f32]) {
        for (v, &b) in row.iter_mut().zip(b) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// One word of a ReLU row (see [`relu_bits`]): up to 32 values, the bias
/// as `b(i)`; returns the mask's bits.
#[inline(always)]
fn relu_word(c: &mut [f32], b: impl Fn(usize) -> f32) -> u32 {
    let mut m = 0u32;
    for (i, v) in c.iter_mut().enumerate() {
        let x = *v + b(i);
        let on = x > 0.0;
        *v = if on { x } else { 0.0 };
        m |= u32::from(on) << i;
    }
    m
}

/// One ReLU row (see [`relu_bits`]), the bias as `b(column)`: whole words
/// as fixed-size loops, then the rest.
#[inline(always)]
fn relu_bits_with(row: &mut [f32], bits: &mut [u32], b: impl Fn(usize) -> f32) {
    let full = row.len() / 32;
    let mut words = row.chunks_exact_mut(32);
    for (w, (c, word)) in (&mut words).zip(bits.iter_mut()).enumerate() {
        let c: &mut [f32; 32] = c.try_into().expect("chunks of 32");
        *word = relu_word(c, |i| b(w * 32 + i));
    }
    if let Some(word) = bits.get_mut(full) {
        *word = relu_word(words.into_remainder(), |i| b(full * 32 + i));
    }
}

multiversion! {
    /// `max(v (+ b), 0)` in place (`b` per column), and bit `j % 32` of
    /// `bits[j / 32]` set where column `j`'s result is positive: the mask
    /// of its gradient (`bits` holds `row.len().div_ceil(32)` words).
    pub fn relu_bits(row: &mut [f32], b: Option<&[f32]>, bits: &mut [u32]) {
        match b {
            Some(b) => relu_bits_with(row, bits, |j| b[j]),
            None => relu_bits_with(row, bits, |_| 0.0),
        }
    }
}

/// Up to 32 values of a ReLU's gradient masked by the word `m`, each
/// result passed to `keep(i, value)`.
#[inline(always)]
fn grad_word(c: &mut [f32], m: u32, mut keep: impl FnMut(usize, f32)) {
    for (i, x) in c.iter_mut().enumerate() {
        *x = if (m >> i) & 1 != 0 { *x } else { 0.0 };
        keep(i, *x);
    }
}

/// One row of a ReLU's gradient from its mask (see [`relu_grad_bits`]),
/// each result passed to `keep(column, value)`: whole words as fixed-size
/// loops, then the rest.
#[inline(always)]
fn grad_bits_with(d: &mut [f32], bits: &[u32], mut keep: impl FnMut(usize, f32)) {
    let full = d.len() / 32;
    let mut words = d.chunks_exact_mut(32);
    for (w, (c, &m)) in (&mut words).zip(bits).enumerate() {
        let c: &mut [f32; 32] = c.try_into().expect("chunks of 32");
        grad_word(c, m, |i, x| keep(w * 32 + i, x));
    }
    if let Some(&m) = bits.get(full) {
        grad_word(words.into_remainder(), m, |i, x| keep(full * 32 + i, x));
    }
}

multiversion! {
    /// `d ← d` where the mask's bit is set (see [`relu_bits`]), else 0.
    pub fn relu_grad_bits(d: &mut [f32], bits: &[u32]) {
        grad_bits_with(d, bits, |_, _| {});
    }
}

multiversion! {
    /// [`relu_grad_bits`], the result also added into `sums` (per column).
    pub fn relu_grad_bits_sum(d: &mut [f32], bits: &[u32], sums: &mut [f32]) {
        let sums = &mut sums[..d.len()];
        grad_bits_with(d, bits, |j, x| sums[j] += x);
    }
}

multiversion! {
    /// `d ← d` where `y > 0`, else 0.
    pub fn relu_grad(d: &mut [f32], y: &[f32]) {
        for (d, &v) in d.iter_mut().zip(y) {
            *d = if v > 0.0 { *d } else { 0.0 };
        }
    }
}

multiversion! {
    /// [`relu_grad`], the result also added into `sums` (per column).
    pub fn relu_grad_sum(d: &mut [f32], y: &[f32], sums: &mut [f32]) {
        for ((d, &v), s) in d.iter_mut().zip(y).zip(sums) {
            *d = if v > 0.0 { *d } else { 0.0 };
            *s += *d;
        }
    }
}

/// `$body` with `$at` the slope of `$gate` fixed in each arm (so that each
/// loop is compiled for its gate, with no branch per entry).
macro_rules! per_gate {
    ($gate:expr, $at:ident => $body:block) => {
        per_gate!(@arms $gate, $at, $body, Silu, Gelu, GeluTanh, Tanh)
    };
    (@arms $gate:expr, $at:ident, $body:block, $($g:ident),*) => {
        match $gate {
            $(Gate::$g => {
                let $at = |x: f32| Gate::$g.at(x);
                $body
            })*
            other => {
                let $at = |x: f32| other.at(x);
                $body
            }
        }
    };
}

multiversion! {
    /// `out = act(x)`.
    pub fn activate(out: &mut [f32], x: &[f32], gate: Gate) {
        per_gate!(gate, at => {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = at(x).0;
            }
        })
    }
}

multiversion! {
    /// `out = dy · act'(x)`.
    pub fn activate_grad(out: &mut [f32], x: &[f32], dy: &[f32], gate: Gate) {
        per_gate!(gate, at => {
            for ((o, &x), &dy) in out.iter_mut().zip(x).zip(dy) {
                *o = dy * at(x).1;
            }
        })
    }
}

multiversion! {
    /// A gated unit: `out = act(g) ⊙ h`.
    pub fn gated(out: &mut [f32], g: &[f32], h: &[f32], gate: Gate) {
        per_gate!(gate, at => {
            for ((o, &g), &h) in out.iter_mut().zip(g).zip(h) {
                *o = at(g).0 * h;
            }
        })
    }
}

multiversion! {
    /// A gated unit's gradients from `dz`: `dg = dz ⊙ h ⊙ act'(g)`, `dh =
    /// dz ⊙ act(g)`.
    pub fn gated_grad(dg: &mut [f32], dh: &mut [f32], g: &[f32], h: &[f32], dz: &[f32], gate: Gate) {
        per_gate!(gate, at => {
            for ((((a, b), &g), &h), &dz) in dg.iter_mut().zip(dh.iter_mut()).zip(g).zip(h).zip(dz) {
                let (act, slope) = at(g);
                *a = dz * h * slope;
                *b = dz * act;
            }
        })
    }
}
