//! The embedding's loop: a table row plus a position row.

use crate::kernels::cpu::raw::{multiversion, Out, Written};

multiversion! {
    /// `out ← row (+ pos)` (`row` and `pos` are at least as long).
    pub fn embed_row(out: Out<'_>, row: &[f32], pos: Option<&[f32]>) -> Written {
        let row = &row[..out.len()];
        match pos {
            Some(pos) => {
                let pos = &pos[..out.len()];
                out.each(|j| row[j] + pos[j])
            }
            None => out.copy(row),
        }
    }
}
