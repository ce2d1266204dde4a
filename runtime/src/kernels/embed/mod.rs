//! The embedding: rows of a table by token, plus a position's row, and
//! the gradient summed back by token (into a tied head's).

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorData, TensorMetadata};

use super::tensor::{primitive, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
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

    /// What [`EmbedOps::embed_backward`] needs of `tokens` beyond the
    /// tokens, made when the forward runs (`None`: nothing; the default).
    /// A GPU's backward sums each token's rows in parallel, which needs the
    /// rows grouped by token ([`groups`]).
    fn embed_groups(tokens: &IntTensor<Self>, vocab: usize) -> Option<IntTensor<Self>> {
        let _ = (tokens, vocab);
        None
    }

    /// The gradients of [`EmbedOps::embed`] from `dy: [n, d]`: the table's
    /// (`[vocab, d]`, the rows of `dy` summed by token) and, with `t`
    /// positions, theirs (`[t, d]`, the rows summed by `i mod t`). With
    /// `acc` (the table's gradient from elsewhere: a tied head), the rows
    /// are added into it. `groups` is what [`EmbedOps::embed_groups`] made
    /// of `tokens`.
    fn embed_backward(
        dy: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        groups: Option<IntTensor<Self>>,
        vocab: usize,
        t: Option<usize>,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let _ = groups;
        reference::embed_backward::<Self>(dy, tokens, vocab, t, acc)
    }
}

/// The rows `0..n` of `tokens: [n]` grouped by token, for a backward that
/// sums each token's rows on its own: `[n + 2u + 1]` integers — the rows
/// ordered by token (each token's in their order: a stable sort, so the
/// sums are the same run to run), then where each of the `u` tokens'
/// groups starts in that order, and where the last ends (`n`), then the
/// `u` tokens (in `0..vocab`: a token outside is the nearest end, as the
/// forward's lookup reads it). Read from the device, so it waits for the
/// tokens: made as the forward starts, where the device has little else
/// queued.
pub fn groups<B: Backend>(tokens: &IntTensor<B>, vocab: usize) -> IntTensor<B> {
    let (device, dtype) = (B::int_device(tokens), tokens.dtype());
    let read = Tensor::<B, 1, Int>::from_primitive(tokens.clone()).into_data();
    let top = vocab.saturating_sub(1) as i64;
    let ids: Vec<i64> = read.iter::<i64>().map(|t| t.clamp(0, top)).collect();
    let n = ids.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ids[i]);
    let mut starts = Vec::new();
    let mut tokens_of = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if k == 0 || ids[order[k - 1]] != ids[i] {
            starts.push(k as i64);
            tokens_of.push(ids[i]);
        }
    }
    starts.push(n as i64);
    let packed: Vec<i64> = order.iter().map(|&i| i as i64).chain(starts).chain(tokens_of).collect();
    let len = packed.len();
    B::int_from_data(TensorData::new(packed, [len]).convert_dtype(dtype), &device)
}

/// The token (and position) embedding (see [`EmbedOps::embed`]).
pub fn embed<B: EmbedOps>(
    table: Tensor<B, 2>,
    tokens: Tensor<B, 1, Int>,
    positions: Option<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    tensor(B::embed(primitive(table), tokens.into_primitive(), positions.map(primitive)))
}
