//! The embedding: rows of a table by token, plus a position's row, and
//! the gradient summed back by token (into a tied head's).

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor};

use super::tensor::{primitive, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
mod loops;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// The embedding family.
pub trait EmbedOps: Backend {
    /// The embedding of `tokens: [n]`: row `tokens[i]` of `table:
    /// [vocab, d]`, plus row `i mod t` of `positions: [t, d]` when given
    /// (the tokens of each sequence in order): `[n, d]`.
    fn embed(
        table: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        positions: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        reference::embed::<Self>(table, tokens, positions)
    }

    /// The gradients of [`EmbedOps::embed`] from `dy: [n, d]`: the table's
    /// (`[vocab, d]`, the rows of `dy` summed by token) and, with `t`
    /// positions, theirs (`[t, d]`, the rows summed by `i mod t`). With
    /// `acc` (the table's gradient from elsewhere: a tied head), the rows
    /// are added into it.
    fn embed_backward(
        dy: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        vocab: usize,
        t: Option<usize>,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        reference::embed_backward::<Self>(dy, tokens, vocab, t, acc)
    }
}

/// The token (and position) embedding (see [`EmbedOps::embed`]).
pub fn embed<B: EmbedOps>(
    table: Tensor<B, 2>,
    tokens: Tensor<B, 1, Int>,
    positions: Option<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    tensor(B::embed(primitive(table), tokens.into_primitive(), positions.map(primitive)))
}
