//! Softmax attention: `softmax(z (+ mask)) · v`, `z` the logits of the
//! scores `(q + bq) · kᵀ` (scaled, soft-capped or not, with ALiBi's bias or
//! not: [`Scores`]), as one graph node whose mask and bias are never
//! built, its weights, and the backward
//! through them. The mask is a [`Keys`]: causal or not, with a sliding
//! window or not.

use std::ops::Range;

use blkc::graph::{alibi_slopes, Mask};
use blkc::signal::attention::Seen;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata};

use super::dense::DenseOps;
use super::tensor::{merge_heads, primitive, split_heads, tensor};

mod autodiff;
#[cfg(feature = "flex")]
pub(crate) mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
#[cfg(feature = "flex")]
pub(crate) mod loops;
pub mod reference;
mod route;
#[cfg(all(test, feature = "flex"))]
mod tests;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) use route::as_products;
pub use route::{products_in, Route, PRODUCTS_UP_TO};

/// The keys each query of an attention sees: the earlier ones and its
/// own (`causal`) or every one, narrowed to a sliding window of `window`
/// when given (causal: the `window` latest; otherwise those less than
/// `window` positions away). Which keys those are is the signal check's
/// [`Seen::keys`], so that the model computes what the checker predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keys {
    pub causal: bool,
    pub window: Option<usize>,
}

impl Keys {
    /// Every key the mask allows.
    pub fn all(causal: bool) -> Keys {
        Keys { causal, window: None }
    }

    /// The keys `lo..hi` that query `i` sees of `t` (clamped to `t` for a
    /// query past the keys).
    pub fn range(self, i: usize, t: usize) -> Range<usize> {
        let mask = if self.causal { Mask::Causal } else { Mask::Bidirectional };
        let keys = Seen { mask, window: self.window }.keys(i, t.max(i + 1));
        (*keys.start()).min(t)..(*keys.end() + 1).min(t)
    }

    /// The queries `lo..hi` of `t` that see key `j` (those whose
    /// [`Keys::range`] holds it): the transpose of the mask, which the
    /// backward of an average over the keys walks.
    pub fn queries(self, j: usize, t: usize) -> Range<usize> {
        let reach = self.reach(t);
        let lo = if self.causal { j } else { j.saturating_sub(reach) };
        lo.min(t)..(j + reach + 1).min(t)
    }

    /// How many positions back (and, without a causal mask, ahead) a query
    /// sees among `t` keys: the window less one, or `t` (every key).
    pub fn reach(self, t: usize) -> usize {
        self.window.map_or(t, |w| (w.max(1) - 1).min(t))
    }

    /// Whether the window hides any key of `t` from some query.
    pub fn windowed(self, t: usize) -> bool {
        self.reach(t) + 1 < t
    }
}

/// How an attention's scores `s = (q + bq) · k` become the softmax's
/// logits, and which keys each query sees: `z = scale · s`, soft-capped to
/// `cap · tanh(z / cap)` when `cap` is given (Gemma 2's attention), then,
/// with `alibi`, less ALiBi's distance `m_h · |i − j|` (query `i`, key
/// `j`, `m_h` head `h`'s slope: [`alibi_slopes`]) — burn's attention's
/// order: scale, cap, mask, bias; the keys that `keys` hides weighted 0.
/// The distance is the positions' in one text, queries and keys from 0
/// (training's and evaluation's attention, not decoding's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub scale: f64,
    pub cap: Option<f64>,
    pub keys: Keys,
    pub alibi: bool,
}

impl Scores {
    /// Scores times `scale`, not capped, no distance bias, under the mask
    /// `keys`.
    pub fn new(scale: f64, keys: Keys) -> Scores {
        Scores { scale, cap: None, keys, alibi: false }
    }

    /// These scores soft-capped at `cap` (or not, `None`).
    pub fn capped(self, cap: Option<f64>) -> Scores {
        Scores { cap, ..self }
    }

    /// These scores with ALiBi's distance bias (or without, `false`).
    pub fn with_alibi(self, alibi: bool) -> Scores {
        Scores { alibi, ..self }
    }

    /// ALiBi's slope of each of `heads` heads, in f32, when the scores
    /// take its bias.
    pub fn slopes(self, heads: usize) -> Option<Vec<f32>> {
        self.alibi.then(|| alibi_slopes(heads).into_iter().map(|m| m as f32).collect())
    }
}

/// The heads of scores `[batch, heads, t_q, t_k]` (1 for fewer
/// dimensions), by which ALiBi's slope goes.
pub(crate) fn score_heads(shape: &burn::tensor::Shape) -> usize {
    let rank = shape.num_dims();
    if rank > 2 {
        shape[rank - 3]
    } else {
        1
    }
}

/// ALiBi's bias `[1, heads, n, t]` on the logits of queries at positions
/// `from..from + n` and keys at `0..t`: `−m_h · (i − j)`, or `· |i − j|`
/// without a causal mask (a causal mask hides the keys where the two
/// differ): what the composed weights add (dropout's, decoding's, the
/// reference's).
pub fn alibi_bias<B: Backend>(
    (from, n): (usize, usize),
    t: usize,
    heads: usize,
    causal: bool,
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut data = Vec::with_capacity(heads * n * t);
    for m in alibi_slopes(heads) {
        for i in from..from + n {
            for j in 0..t {
                let d = i as f64 - j as f64;
                data.push((-m * if causal { d } else { d.abs() }) as f32);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [1, heads, n, t]), device)
}

/// The attention family.
pub trait AttentionOps: DenseOps {
    /// Softmax attention `softmax(z (+ mask)) · v`, `z` the logits
    /// ([`Scores`]) of `(q + bq) · kᵀ` (the mask hides what
    /// `scores.keys` does not see) for `q, k: [batch, heads, tokens,
    /// head_dim]` and `v: [batch, tokens, heads · head_dim]`, the heads
    /// merged the same way in the output (`bq` as in
    /// [`AttentionOps::attention_forward`]).
    fn softmax_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        scores: Scores,
    ) -> FloatTensor<Self> {
        let v = split_heads::<Self>(v, q.shape()[1]);
        merge_heads::<Self>(Self::attention_forward(q, k, v, bq, scores).0)
    }

    /// Softmax attention on heads: `(o, p)`, `p = softmax(z (+ mask))`, `z`
    /// the logits of `(q + bq) · kᵀ`, and `o = p · v` stored token-major (see
    /// [`crate::kernels::DenseOps::matmul_token_major`]), for `q, k, v: [batch, heads,
    /// tokens, head_dim]` and the query's bias `bq: [heads · head_dim]`
    /// when given. There is no key bias: `bk` would add `(q_i + bq) · bk`
    /// to every score of row `i`, which the softmax does not see, so its
    /// gradient is zero; layers leave it out.
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        scores: Scores,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::attention_forward::<Self>(q, k, v, bq, scores)
    }

    /// The gradients `[dq, dk, dv, dbq]` of [`AttentionOps::attention_forward`]
    /// from `g` (`o`'s, `[batch, heads, tokens, head_dim]`), the first
    /// three where `wants` them, `dbq` with `bq`; stored token-major: `dv =
    /// pᵀ · g`, `ds = z′ ⊙ p ⊙ (dp − Σ p ⊙ dp)` with `dp = g · vᵀ` and `z′`
    /// the logit's slope (`scale`, or `scale · (1 − (z / cap)²)` under a
    /// soft-cap), `dq
    /// = ds · k`, `dk = dsᵀ · (q + bq)`, `dbq = Σ dq` over the batch and
    /// tokens. `dv` is added into `acc` (`[batch, tokens, heads ·
    /// head_dim]`) when given. `p` is what the forward kept: the weights,
    /// or what a backend keeps in their place (the rows' log-sum-exp on
    /// the CubeCL backends), with the forward's `scores`. `o`,
    /// when given, is the forward's output (as
    /// [`AttentionOps::attention_forward`] returned it), which the graph
    /// keeps anyway (the next product reads it): a backend that kept row
    /// statistics in `p` reads `D_i = g_i · o_i` from it instead of
    /// recomputing `o_i`. By default `o` is not read.
    fn attention_backward(
        qkv: [FloatTensor<Self>; 3],
        bq: Option<FloatTensor<Self>>,
        (p, o): (FloatTensor<Self>, Option<FloatTensor<Self>>),
        g: FloatTensor<Self>,
        (scores, acc): (Scores, Option<FloatTensor<Self>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 4] {
        let _ = o;
        reference::attention_backward::<Self>(qkv, bq, p, g, (scores, acc), wants)
    }

    /// Whether [`AttentionOps::attention_backward`] reads the forward's
    /// output beside what the forward kept (`kept`), so that the graph
    /// holds it for the backward: where the backend kept row statistics
    /// (rank 3) in place of the weights, by default.
    fn reads_output(kept: &FloatTensor<Self>) -> bool {
        kept.shape().num_dims() == 3
    }

    /// Attention weights from scores `s: [batch, heads, t_q, t_k]`: the
    /// softmax over the last dimension of their logits
    /// ([`Scores`]), the keys that query `i` does not see
    /// ([`Keys::range`]) weighted 0.
    fn softmax_scores(s: FloatTensor<Self>, scores: Scores) -> FloatTensor<Self> {
        reference::softmax_scores::<Self>(s, scores)
    }

    /// The gradient of the scores from that of the weights `p` (as made by
    /// [`AttentionOps::softmax_scores`] without a soft-cap): `scale · p ⊙
    /// (dp − Σⱼ p ⊙ dp)` (that of the logits times `scale`).
    fn softmax_scores_backward(p: FloatTensor<Self>, dp: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        reference::softmax_scores_backward::<Self>(p, dp, scale)
    }
}

/// Softmax attention (see [`AttentionOps::softmax_attention`]): `q`, `k` split
/// into heads (plus the query's bias `[heads · head_dim]` when given), `v`
/// and the output `[batch, tokens, heads · head_dim]`.
pub fn attention<B: AttentionOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 3>,
    bq: Option<Tensor<B, 1>>,
    scores: Scores,
) -> Tensor<B, 3> {
    tensor(B::softmax_attention(primitive(q), primitive(k), primitive(v), bq.map(primitive), scores))
}
