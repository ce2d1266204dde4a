//! Softmax attention: `softmax(scale · (q + bq) · kᵀ (+ causal mask)) · v`
//! as one graph node whose mask is never built, its weights, and the
//! backward through them.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata};

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
pub use route::{Route, PRODUCTS_UP_TO};

/// The attention family.
pub trait AttentionOps: DenseOps {
    /// Softmax attention `softmax(scale · (q + bq) · kᵀ (+ causal mask)) ·
    /// v` for `q, k: [batch, heads, tokens, head_dim]` and `v: [batch,
    /// tokens, heads · head_dim]`, the heads merged the same way in the
    /// output (`bq` as in [`AttentionOps::attention_forward`]).
    fn softmax_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        (scale, causal): (f64, bool),
    ) -> FloatTensor<Self> {
        let v = split_heads::<Self>(v, q.shape()[1]);
        merge_heads::<Self>(Self::attention_forward(q, k, v, bq, (scale, causal)).0)
    }

    /// Softmax attention on heads: `(o, p)`, `p = softmax(scale · (q + bq)
    /// · kᵀ (+ causal mask))` and `o = p · v` stored token-major (see
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
        (scale, causal): (f64, bool),
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::attention_forward::<Self>(q, k, v, bq, (scale, causal))
    }

    /// The gradients `[dq, dk, dv, dbq]` of [`AttentionOps::attention_forward`]
    /// from `g` (`o`'s, `[batch, heads, tokens, head_dim]`), the first
    /// three where `wants` them, `dbq` with `bq`; stored token-major: `dv =
    /// pᵀ · g`, `ds = scale · p ⊙ (dp − Σ p ⊙ dp)` with `dp = g · vᵀ`, `dq
    /// = ds · k`, `dk = dsᵀ · (q + bq)`, `dbq = Σ dq` over the batch and
    /// tokens. `dv` is added into `acc` (`[batch, tokens, heads ·
    /// head_dim]`) when given. `p` is what the forward kept: the weights,
    /// or what a backend keeps in their place (the rows' log-sum-exp on
    /// the CubeCL backends), with the mask `causal` of the forward. `o`,
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
        (scale, causal, acc): (f64, bool, Option<FloatTensor<Self>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 4] {
        let _ = o;
        reference::attention_backward::<Self>(qkv, bq, p, g, (scale, causal, acc), wants)
    }

    /// Attention weights from scores `s: [batch, heads, t_q, t_k]`: the softmax over
    /// the last dimension of `scale · s`, with the future (`j > i`) weighted
    /// 0 when `causal`.
    fn softmax_scores(s: FloatTensor<Self>, scale: f64, causal: bool) -> FloatTensor<Self> {
        reference::softmax_scores::<Self>(s, scale, causal)
    }

    /// The gradient of the scores from that of the weights `p` (as made by
    /// [`AttentionOps::softmax_scores`]): `scale · p ⊙ (dp − Σⱼ p ⊙ dp)`.
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
    (scale, causal): (f64, bool),
) -> Tensor<B, 3> {
    tensor(B::softmax_attention(primitive(q), primitive(k), primitive(v), bq.map(primitive), (scale, causal)))
}
