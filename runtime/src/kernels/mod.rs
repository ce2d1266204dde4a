//! Kernels: the operations of a training step that burn's generic tensor
//! API makes slow, as one trait over backends.
//!
//! [`Kernels`] has a default method for each operation, built from burn's
//! primitive ops, which every backend uses unless it overrides it; `flex`
//! (the CPU default) overrides them with fused loops (`flex/`), and
//! `Autodiff<B>` overrides them with one graph node per operation whose
//! backward calls `B`'s kernels (`autodiff.rs`). The defaults are in
//! `composed.rs`; the layers call the functions of `call.rs`, on `Tensor`s;
//! `tests.rs` holds every kernel against burn's own operations.
//!
//! The only module of the workspace where `unsafe` is allowed: the FFI call
//! that tunes the allocator, and the raw-pointer calls into `gemm`. Each use
//! carries its SAFETY argument.

#![allow(unsafe_code)]

pub mod alloc;
mod autodiff;
mod call;
mod composed;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod simd;

pub use call::*;
#[cfg(feature = "flex")]
pub use flex::product_time;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::TensorMetadata;

/// The constants of one Adam(W) update of one parameter.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    pub bc1: f64,
    pub bc2: f64,
    /// Multiplier of the gradient (clipping).
    pub grad_scale: f64,
    /// L2 term added to the gradient (Adam's weight decay).
    pub l2: f64,
    /// Decoupled decay: the parameter is multiplied by `1 − decay` (AdamW).
    pub decay: f64,
}

/// The operands of the shaped mix (see [`Kernels::mix`]).
#[derive(Debug, Clone)]
pub struct MixArgs<T> {
    pub v: T,
    pub o: T,
    pub gains: [T; 3],
    pub causal: bool,
}

/// A branch `b` that a block sums with the shaped mix: `ga ⊙ mix + gb ⊙ b`
/// (gains `[n]`, one per group of columns).
#[derive(Debug, Clone)]
pub struct MixAddend<T> {
    pub b: T,
    pub ga: T,
    pub gb: T,
}

/// The gradients of [`Kernels::mix_sum`].
#[derive(Debug)]
pub struct MixSumGrads<T> {
    pub dv: T,
    pub d_o: T,
    pub dgains: [T; 3],
    pub db: T,
    pub dga: T,
    pub dgb: T,
}

/// A shaped attention that ends in its mix: `q`, `k` split into heads
/// (`[batch, heads, tokens, d]`), `v` with the heads merged (`[batch,
/// tokens, heads · d]`), the mix's gains (of `I`, `softmax`, `centre`), the
/// softmax scale and the mask; and the query's bias `bq` (`[heads · d]`),
/// added to `q` when given (see [`Kernels::attention_forward`]).
#[derive(Debug, Clone)]
pub struct Shaped<T> {
    pub q: T,
    pub k: T,
    pub v: T,
    pub gains: [T; 3],
    pub scale: f64,
    pub causal: bool,
    pub bq: Option<T>,
}

/// The gradients of [`Kernels::shaped_attention`].
#[derive(Debug)]
pub struct ShapedGrads<T> {
    pub dq: T,
    pub dk: T,
    pub dv: T,
    pub dgains: [T; 3],
    /// `[db, dga, dgb]`, with an addend.
    pub addend: Option<[T; 3]>,
    /// The query's bias's, with one.
    pub dbq: Option<T>,
}

/// A projection's weight `[in, out]` and its bias `[out]`, if any.
pub type Projection<B> = (FloatTensor<B>, Option<FloatTensor<B>>);

/// A backend with blkc's kernels.
pub trait Kernels: Backend {
    /// One Adam(W) update of `p` (flat, `[n]`) with gradient `g` and
    /// moments `m`, `v`: returns the new `(p, m, v)`.
    fn adam(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed::adam::<Self>(p, g, m, v, k)
    }

    /// `a · b` for `a: [..., m, k]`, `b: [..., k, n]` with equal leading
    /// dimensions (no broadcasting).
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }

    /// The embedding of `tokens: [n]`: row `tokens[i]` of `table:
    /// [vocab, d]`, plus row `i mod t` of `positions: [t, d]` when given
    /// (the tokens of each sequence in order): `[n, d]`.
    fn embed(
        table: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        positions: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed::embed::<Self>(table, tokens, positions)
    }

    /// The gradients of [`Kernels::embed`] from `dy: [n, d]`: the table's
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
        composed::embed_backward::<Self>(dy, tokens, vocab, t, acc)
    }

    /// `ga ⊙ a + gb ⊙ b` for `a`, `b` of one shape, each gain `[n]`
    /// scaling `n` equal groups of the last dimension (a sum node with
    /// trainable gains, a reparameterised map).
    fn scaled_sum(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::scaled_sum::<Self>(a, b, ga, gb)
    }

    /// The gradients `(da, db, dga, dgb)` of [`Kernels::scaled_sum`] from `dy`.
    fn scaled_sum_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        composed::scaled_sum_backward::<Self>(a, b, ga, gb, dy)
    }

    /// The shaped attention's matrix applied to the values, as one pass:
    /// `gi ⊙ v + gs ⊙ o + gc ⊙ centre(v)` for `v`, `o` (the softmax term,
    /// `softmax · v`): `[batch, tokens, width]`, each gain `[n]` scaling
    /// `n` equal groups of the last dimension (heads; `n = 1` scales
    /// everything), `centre` the running mean over tokens (`causal`) or
    /// their mean.
    fn mix(
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        gains: [FloatTensor<Self>; 3],
        causal: bool,
    ) -> FloatTensor<Self> {
        composed::mix::<Self>(v, o, gains, causal)
    }

    /// The gradients of [`Kernels::mix`] from `dy`: `(dv, do, [dgi, dgs,
    /// dgc])`. With `acc` (a gradient of `v` from elsewhere), `dv` is added
    /// to it.
    fn mix_backward(
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        gains: [FloatTensor<Self>; 3],
        dy: FloatTensor<Self>,
        causal: bool,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, [FloatTensor<Self>; 3]) {
        composed::mix_backward::<Self>(v, o, gains, dy, causal, acc)
    }

    /// `ga ⊙ mix(v, o) + gb ⊙ b`: a parallel block's sum of its shaped
    /// attention and another branch (one pass; the mix's output never
    /// written on its own).
    fn mix_sum(m: MixArgs<FloatTensor<Self>>, add: MixAddend<FloatTensor<Self>>) -> FloatTensor<Self> {
        composed::mix_sum::<Self>(m, add)
    }

    /// The gradients of [`Kernels::mix_sum`] from `dy`; with `acc` (a
    /// gradient of `v` from elsewhere), `dv` is added to it.
    fn mix_sum_backward(
        m: MixArgs<FloatTensor<Self>>,
        add: MixAddend<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
        acc: Option<FloatTensor<Self>>,
    ) -> MixSumGrads<FloatTensor<Self>> {
        composed::mix_sum_backward::<Self>(m, add, dy, acc)
    }

    /// A shaped attention through its mix, summed with another branch
    /// when `add` is given: `y = ga ⊙ (gi ⊙ v + gs ⊙ softmax(scale · q ·
    /// kᵀ (+ mask)) · v + gc ⊙ centre(v)) + gb ⊙ b` (`ga` 1 without `add`),
    /// `[batch, tokens, heads · d]`.
    fn shaped_attention(a: Shaped<FloatTensor<Self>>, add: Option<MixAddend<FloatTensor<Self>>>) -> FloatTensor<Self> {
        Self::shaped_attention_forward(a, add).0
    }

    /// [`Kernels::shaped_attention`] and its attention weights `p` (what
    /// its backward reads).
    fn shaped_attention_forward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::shaped_attention_forward::<Self>(a, add)
    }

    /// The gradients of [`Kernels::shaped_attention`] from `dy`, given the
    /// weights `p`; `dq`, `dk` stored token-major; `dv` added into `acc`
    /// when given.
    fn shaped_attention_backward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
        p: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        acc: Option<FloatTensor<Self>>,
    ) -> ShapedGrads<FloatTensor<Self>> {
        composed::shaped_attention_backward::<Self>(a, add, p, dy, acc)
    }

    /// `act(x · w (+ bias))` for `x: [..., k]`, `w: [k, n]`: `[..., n]`,
    /// `act` ReLU when `relu`, else the identity (a layer's linear map, as
    /// one 2-D product over the rows of `x`).
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        relu: bool,
    ) -> FloatTensor<Self> {
        composed::dense::<Self>(x, w, bias, relu)
    }

    /// [`Kernels::dense`] with ReLU, and the mask its backward reads
    /// ([`Kernels::relu_grad`]): `y` itself by default; a backend may keep
    /// a smaller one made in the pass that applies the ReLU (flex: a bit
    /// per element, so the backward does not read `y` again).
    fn dense_relu(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let y = Self::dense(x, w, bias, true);
        (y.clone(), y)
    }

    /// A ReLU MLP `relu(x · up (+ up_bias)) · down (+ down_bias)` over the
    /// last dimension of `x` (on autodiff one node, whose backward masks
    /// the hidden gradient as the product that forms it writes it, see
    /// [`Kernels::masked_product`]).
    fn relu_mlp(x: FloatTensor<Self>, up: Projection<Self>, down: Projection<Self>) -> FloatTensor<Self> {
        let h = Self::dense(x, up.0, up.1, true);
        Self::dense(h, down.0, down.1, false)
    }

    /// `mask ⊙ (dy · wᵀ)` for `dy: [rows, n]`, `w: [k, n]` and a ReLU's
    /// mask from [`Kernels::dense_relu`] (`[rows, k]` values): the
    /// gradient at the input of the ReLU whose output `w` multiplied; with
    /// `sums`, also its column sums (the gradient of a bias before the
    /// ReLU).
    fn masked_product(
        dy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        sums: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let g = Self::matmul(dy, Self::float_transpose(w));
        match sums {
            true => {
                let (dz, db) = Self::relu_grad_bias(mask, g);
                (dz, Some(db))
            }
            false => (Self::relu_grad(mask, g), None),
        }
    }

    /// `x · wᵀ` for `x: [..., k]`, `w: [n, k]` (a tied LM head: the
    /// embedding table is the graph's parent, not a transpose of it).
    fn dense_transposed(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::dense(x, Self::float_transpose(w), None, false)
    }

    /// `c + a · b`, into `c`'s memory where the backend can (a gradient
    /// accumulated by the product that adds to it).
    fn matmul_add(c: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_add(c, Self::matmul(a, b))
    }

    /// [`Kernels::matmul_token_major`] of `a: [batch, heads, tokens, k]`
    /// and `b: [batch, heads, k, n]` added to `c: [batch, tokens, heads ·
    /// n]` (seen as `[batch, heads, tokens, n]`), into `c`'s memory where
    /// the backend can.
    fn matmul_token_major_add(c: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let heads = a.shape()[1];
        Self::float_add(autodiff::split_heads::<Self>(c, heads), Self::matmul_token_major(a, b))
    }

    /// `a · b + bias` for 2-D `a`, `b` and `bias: [n]` added to every row.
    fn matmul_bias(a: FloatTensor<Self>, b: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::matmul_bias::<Self>(a, b, bias)
    }

    /// The sums of the columns of `x: [rows, n]`: `[n]` (a bias's gradient).
    fn column_sums(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::column_sums::<Self>(x)
    }

    /// `relu(a · b)` for 2-D `a`, `b` (an MLP's first product and its
    /// activation, one node on autodiff).
    fn matmul_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::matmul_relu::<Self>(a, b)
    }

    /// The gradient at the input of a ReLU from `dy`, that at its output
    /// `y`: `dy ⊙ (y > 0)`; `y` is the output or the mask
    /// [`Kernels::dense_relu`] returned.
    fn relu_grad(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::relu_backward(y, dy)
    }

    /// [`Kernels::relu_grad`] of 2-D `y`, `dy` and the sums of its columns
    /// (the gradient of a bias before the ReLU): `(dz, Σ_rows dz)`.
    fn relu_grad_bias(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dz = Self::relu_grad(y, dy);
        (dz.clone(), Self::column_sums(dz))
    }

    /// [`Kernels::matmul`] of `[batch, heads, tokens, n]` products whose
    /// output a backend may store token-major (`[batch, tokens, heads, n]`
    /// in memory), so that merging heads back is free; the values are those
    /// of `matmul`.
    fn matmul_token_major(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::matmul(a, b)
    }

    /// Attention weights from scores `s: [batch, heads, t_q, t_k]`: the softmax over
    /// the last dimension of `scale · s`, with the future (`j > i`) weighted
    /// 0 when `causal`.
    fn softmax_scores(s: FloatTensor<Self>, scale: f64, causal: bool) -> FloatTensor<Self> {
        composed::softmax_scores::<Self>(s, scale, causal)
    }

    /// The gradient of the scores from that of the weights `p` (as made by
    /// [`Kernels::softmax_scores`]): `scale · p ⊙ (dp − Σⱼ p ⊙ dp)`.
    fn softmax_scores_backward(p: FloatTensor<Self>, dp: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        composed::softmax_scores_backward::<Self>(p, dp, scale)
    }

    /// `x` scaled by `g: [n]`, the last dimension of `x` split into `n`
    /// equal groups (heads), group `i` multiplied by `g[i]`; `n = 1` scales
    /// everything by one gain.
    fn scale_groups(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::scale_groups::<Self>(x, g)
    }

    /// The gradient of the gains of [`Kernels::scale_groups`]:
    /// `dg[i] = Σ dy ⊙ x` over group `i`.
    fn scale_groups_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>, n: usize) -> FloatTensor<Self> {
        composed::scale_groups_grad::<Self>(x, dy, n)
    }

    /// The running mean over tokens of `x: [batch, tokens, width]`: token
    /// `i` of the output is the mean of tokens `0..=i` (the causal `centre`
    /// matrix applied without a T×T matrix).
    fn causal_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::causal_mean::<Self>(x)
    }

    /// The gradient of [`Kernels::causal_mean`]:
    /// `dx[s] = Σ_{i ≥ s} dy[i] / (i + 1)`.
    fn causal_mean_backward(dy: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::causal_mean_backward::<Self>(dy)
    }

    /// Cross-entropy per row of `logits: [n, vocab]` against `targets: [n]`:
    /// `(nll, lse)`, `lse[i] = log Σⱼ exp(logits[i, j])` and
    /// `nll[i] = lse[i] − logits[i, targets[i]]`.
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::cross_entropy::<Self>(logits, targets)
    }

    /// The gradient of the logits from that of `nll`:
    /// `g[i] · (exp(logits[i] − lse[i]) − onehot(targets[i]))`.
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::cross_entropy_backward::<Self>(logits, lse, targets, g)
    }

    /// `nll` of [`Kernels::cross_entropy`] (one graph node on autodiff).
    fn nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        Self::cross_entropy(logits, targets).0
    }

    /// The mean cross-entropy `[1]` of `logits: [n, vocab]` against
    /// `targets: [n]` (one graph node on autodiff, its gradient computed
    /// in the forward pass).
    fn nll_mean(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let nll = Self::cross_entropy(logits, targets).0;
        let n = nll.shape().num_elements();
        Self::float_div_scalar(Self::float_sum(nll), (n.max(1) as f64).into())
    }

    /// The mean cross-entropy `[1]` and its gradient with respect to the
    /// logits, `(softmax(logits) − onehot) / n` — into the logits' memory
    /// where the backend can.
    fn nll_mean_with_grad(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::nll_mean_with_grad::<Self>(logits, targets)
    }

    /// `x` times the one-element `g` (a gradient scaled by its upstream
    /// gradient); where the backend can, in place, and nothing when `g` is 1.
    fn times_scalar(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::times_scalar::<Self>(x, g)
    }

    /// RMSNorm (`centred = false`) or LayerNorm (`centred = true`) over the
    /// last dimension of `x: [rows, width]`: `(y, rstd)`, with
    /// `y = x̂ ⊙ scale (+ bias)`, `x̂ = (x − mean?) · rstd` and
    /// `rstd[r] = 1 / sqrt(mean((x − mean?)²) + eps)` per row.
    fn norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::norm::<Self>(x, scale, bias, eps, centred)
    }

    /// The gradients `(dx, dscale, dbias)` of [`Kernels::norm`] from `dy`:
    /// with `g = dy ⊙ scale`, `dx = rstd · (g − mean(g)? − x̂ · mean(g ⊙ x̂))`,
    /// `dscale = Σ_rows dy ⊙ x̂`, `dbias = Σ_rows dy`. With `acc` (a
    /// gradient of `x` from elsewhere), `dx` is added to it.
    fn norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        centred: bool,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dscale, dbias) = composed::norm_backward::<Self>(x, scale, rstd, dy, centred);
        (acc.map_or(dx.clone(), |a| Self::float_add(dx, a)), dscale, dbias)
    }

    /// `y` of [`Kernels::norm`] over the last dimension of `x: [..., width]`
    /// (one graph node on autodiff).
    fn normalise(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let width = shape[shape.num_dims() - 1];
        let x = Self::float_reshape(x, [shape.num_elements() / width.max(1), width].into());
        Self::float_reshape(Self::norm(x, scale, bias, eps, centred).0, shape)
    }

    /// Softmax attention `softmax(scale · (q + bq) · kᵀ (+ causal mask)) ·
    /// v` for `q, k: [batch, heads, tokens, head_dim]` and `v: [batch,
    /// tokens, heads · head_dim]`, the heads merged the same way in the
    /// output (`bq` as in [`Kernels::attention_forward`]).
    fn softmax_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        (scale, causal): (f64, bool),
    ) -> FloatTensor<Self> {
        let v = autodiff::split_heads::<Self>(v, q.shape()[1]);
        autodiff::merge_heads::<Self>(Self::attention_forward(q, k, v, bq, (scale, causal)).0)
    }

    /// Softmax attention on heads: `(o, p)`, `p = softmax(scale · (q + bq)
    /// · kᵀ (+ causal mask))` and `o = p · v` stored token-major (see
    /// [`Kernels::matmul_token_major`]), for `q, k, v: [batch, heads,
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
        composed::attention_forward::<Self>(q, k, v, bq, (scale, causal))
    }

    /// The gradients `[dq, dk, dv, dbq]` of [`Kernels::attention_forward`]
    /// from `g` (`o`'s, `[batch, heads, tokens, head_dim]`), the first
    /// three where `wants` them, `dbq` with `bq`; stored token-major: `dv =
    /// pᵀ · g`, `ds = scale · p ⊙ (dp − Σ p ⊙ dp)` with `dp = g · vᵀ`, `dq
    /// = ds · k`, `dk = dsᵀ · (q + bq)`, `dbq = Σ dq` over the batch and
    /// tokens. `dv` is added into `acc` (`[batch, tokens, heads ·
    /// head_dim]`) when given.
    fn attention_backward(
        qkv: [FloatTensor<Self>; 3],
        bq: Option<FloatTensor<Self>>,
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        (scale, acc): (f64, Option<FloatTensor<Self>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 4] {
        composed::attention_backward::<Self>(qkv, bq, p, g, (scale, acc), wants)
    }
}

/// An autodiff backend whose inner backend has the kernels too (what
/// training needs: the model runs on both).
pub trait TrainKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainKernels for B {}

#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests;
