//! The shaped attention (He & Hofmann): `alpha ⊙ v + beta ⊙ softmax(·) · v +
//! gamma ⊙ centre(v)` — `alpha`, `beta`, `gamma` the coefficients of `I`,
//! `softmax` and `C` as the block gives them (the paper's α, β and −γ in
//! `αI + β softmax − γC`) — as one graph node that never writes the attention's
//! output on its own, summed with a block's other branch when it ends in
//! a gained sum; its mix (the three terms, given the softmax term) and the
//! `centre` term (the mean of the values each token sees: a running mean
//! under a causal mask, slid along the tokens under a window).

use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use super::attention::{AttentionOps, Keys, Scores};
use super::gains::GainOps;
use super::tensor::{primitive, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod backward;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
#[cfg(feature = "flex")]
mod loops;
#[cfg(feature = "flex")]
mod mix;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// A branch `b` that a block sums with the shaped mix: `beta_sa ⊙ mix + beta_ff ⊙ b`
/// (gains `[n]`, one per group of columns).
#[derive(Debug, Clone)]
pub struct MixAddend<T> {
    pub b: T,
    pub beta_sa: T,
    pub beta_ff: T,
}

/// A shaped attention that ends in its mix: `q`, `k` split into heads
/// (`[batch, heads, tokens, d]`), `v` with the heads merged (`[batch,
/// tokens, heads · d]`), the mix's gains (of `I`, `softmax`, `centre`), the
/// softmax scale and the keys each query sees (those its softmax
/// weighs and its `centre` averages); and the query's bias `bq` (`[heads · d]`),
/// added to `q` when given (see [`crate::kernels::AttentionOps::attention_forward`]).
#[derive(Debug, Clone)]
pub struct Shaped<T> {
    pub q: T,
    pub k: T,
    pub v: T,
    pub gains: [T; 3],
    pub scale: f64,
    pub keys: Keys,
    pub bq: Option<T>,
}

impl<T> Shaped<T> {
    /// How its softmax makes logits of the scores: times `scale`, never
    /// soft-capped nor biased by ALiBi (such a shaped matrix runs the
    /// softmax attention's kernel, then the mix), under its mask.
    pub fn scores(&self) -> Scores {
        Scores::new(self.scale, self.keys)
    }
}

/// The gradients of [`ShapedOps::shaped_attention`].
#[derive(Debug)]
pub struct ShapedGrads<T> {
    pub dq: T,
    pub dk: T,
    pub dv: T,
    pub dgains: [T; 3],
    /// `[db, dbeta_sa, dbeta_ff]`, with an addend.
    pub addend: Option<[T; 3]>,
    /// The query's bias's, with one.
    pub dbq: Option<T>,
}

/// The shaped family.
pub trait ShapedOps: AttentionOps + GainOps {
    /// A shaped attention through its mix, summed with another branch
    /// when `add` is given: `y = beta_sa ⊙ (alpha ⊙ v + beta ⊙ softmax(scale · q ·
    /// kᵀ (+ mask)) · v + gamma ⊙ centre(v)) + beta_ff ⊙ b` (`beta_sa` 1 without `add`),
    /// `[batch, tokens, heads · d]`.
    fn shaped_attention(a: Shaped<FloatTensor<Self>>, add: Option<MixAddend<FloatTensor<Self>>>) -> FloatTensor<Self> {
        Self::shaped_attention_forward(a, add).0
    }

    /// [`ShapedOps::shaped_attention`], its attention weights `p` (or what
    /// the backend keeps in their place) and, where this backend's backward
    /// would otherwise recompute it, the softmax term `o = softmax · v`
    /// made on the way (`[batch, heads, tokens, d]`): what
    /// [`ShapedOps::shaped_attention_backward`] reads. By default no `o`.
    fn shaped_attention_forward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (y, p, _) = reference::shaped_attention_forward::<Self>(a, add);
        (y, p, None)
    }

    /// The gradients of [`ShapedOps::shaped_attention`] from `dy`, given
    /// what [`ShapedOps::shaped_attention_forward`] kept: the weights `p`
    /// (or what the backend keeps in their place) and the softmax term `o`
    /// (by default not read); `dq`, `dk` stored token-major; `dv` added
    /// into `acc` when given.
    fn shaped_attention_backward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
        (p, o): (FloatTensor<Self>, Option<FloatTensor<Self>>),
        dy: FloatTensor<Self>,
        acc: Option<FloatTensor<Self>>,
    ) -> ShapedGrads<FloatTensor<Self>> {
        let _ = o;
        reference::shaped_attention_backward::<Self>(a, add, p, dy, acc)
    }

    /// The shaped attention's matrix applied to the values, as one pass:
    /// `alpha ⊙ v + beta ⊙ o + gamma ⊙ centre(v)` for `v`, `o` (the softmax term,
    /// `softmax · v`): `[batch, tokens, width]`, each gain `[n]` scaling
    /// `n` equal groups of the last dimension (heads; `n = 1` scales
    /// everything), `centre` as [`ShapedOps::centre`].
    fn mix(v: FloatTensor<Self>, o: FloatTensor<Self>, gains: [FloatTensor<Self>; 3], keys: Keys) -> FloatTensor<Self> {
        reference::mix::<Self>(v, o, gains, keys)
    }

    /// The gradients of [`ShapedOps::mix`] from `dy`: `(dv, do, [dalpha, dbeta,
    /// dgamma])`. With `acc` (a gradient of `v` from elsewhere), `dv` is added
    /// to it.
    fn mix_backward(
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        gains: [FloatTensor<Self>; 3],
        dy: FloatTensor<Self>,
        keys: Keys,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, [FloatTensor<Self>; 3]) {
        reference::mix_backward::<Self>(v, o, gains, dy, keys, acc)
    }

    /// The `centre` term of `x: [batch, tokens, width]` (the `C` matrix
    /// applied without a T×T matrix): token `i` of the output is the mean
    /// of the tokens `keys.range(i, tokens)` — `0..=i` under a causal
    /// mask without a window (the running mean), all of them without a
    /// mask.
    fn centre(x: FloatTensor<Self>, keys: Keys) -> FloatTensor<Self> {
        reference::centre::<Self>(x, keys)
    }

    /// The gradient of [`ShapedOps::centre`]: `dx[j] = Σ dy[i] / |keys(i)|`
    /// over the queries `i` that see `j` (`Σ_{i ≥ j} dy[i] / (i + 1)` for
    /// the running mean).
    fn centre_backward(dy: FloatTensor<Self>, keys: Keys) -> FloatTensor<Self> {
        reference::centre_backward::<Self>(dy, keys)
    }
}

/// A shaped attention through its mix (see [`ShapedOps::shaped_attention`]):
/// `q`, `k` split into heads (plus the query's bias `[heads · d]` when
/// given), `v` and the output `[batch, tokens, heads · d]`, summed with
/// `(b, beta_sa, beta_ff)` when given.
pub fn shaped_attention<B: ShapedOps>(
    qk: [Tensor<B, 4>; 2],
    bq: Option<Tensor<B, 1>>,
    v: Tensor<B, 3>,
    gains: [Tensor<B, 1>; 3],
    (scale, keys): (f64, Keys),
    add: Option<(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)>,
) -> Tensor<B, 3> {
    let [q, k] = qk.map(primitive);
    let a = Shaped { q, k, v: primitive(v), gains: gains.map(primitive), scale, keys, bq: bq.map(primitive) };
    let add = add.map(|(b, beta_sa, beta_ff)| MixAddend {
        b: primitive(b),
        beta_sa: primitive(beta_sa),
        beta_ff: primitive(beta_ff),
    });
    tensor(B::shaped_attention(a, add))
}

/// The shaped attention's terms summed (see [`ShapedOps::mix`]).
pub fn mix<B: ShapedOps>(v: Tensor<B, 3>, o: Tensor<B, 3>, gains: [Tensor<B, 1>; 3], keys: Keys) -> Tensor<B, 3> {
    tensor(B::mix(primitive(v), primitive(o), gains.map(primitive), keys))
}

/// The `centre` term: the mean of the tokens each token sees (see
/// [`ShapedOps::centre`]).
pub fn centre<B: ShapedOps>(x: Tensor<B, 3>, keys: Keys) -> Tensor<B, 3> {
    tensor(B::centre(primitive(x), keys))
}
