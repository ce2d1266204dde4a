//! The embedding's loop: a table row plus a position row.

use std::mem::MaybeUninit;

use crate::kernels::cpu::raw::multiversion;

multiversion! {
    /// `out ← row (+ pos)`, every element of `out` written (`row` and
    /// `pos` are at least as long).
    pub fn embed_row(out: &mut [MaybeUninit<f32>], row: &[f32], pos: Option<&[f32]>) {
        match pos {
            Some(pos) => {
                for ((o, &a), &b) in out.iter_mut().zip(row).zip(pos) {
                    o.write(a + b);
                }
            }
            None => {
                for (o, &a) in out.iter_mut().zip(row) {
                    o.write(a);
                }
            }
        }
    }
}
