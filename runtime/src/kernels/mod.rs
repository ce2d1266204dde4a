//! Kernels: the operations of a training step that burn's generic tensor
//! API makes slow, as one trait over backends.
//!
//! [`Kernels`] has a default method for each operation, built from burn's
//! primitive ops, which every backend uses unless it overrides it; `flex`
//! (the CPU default) overrides them with fused loops (`flex.rs`), and
//! `Autodiff<B>` overrides them with one graph node per operation whose
//! backward calls `B`'s kernels (`autodiff.rs`). The layers call the helper
//! functions at the bottom, on `Tensor`s.
//!
//! The only module of the workspace where `unsafe` is allowed: the FFI call
//! that tunes the allocator, and the raw-pointer calls into `gemm`. Each use
//! carries its SAFETY argument.

#![allow(unsafe_code)]

pub mod alloc;
mod autodiff;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod simd;

#[cfg(feature = "flex")]
pub use flex::product_time;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorMetadata, TensorPrimitive};

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

/// The kernels' definitions from burn's primitive ops: the default of every
/// backend, and the fallback of the fused ones for other dtypes.
mod composed {
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::{FloatTensor, IntTensor};
    use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorMetadata};

    use super::{primitive, tensor};

    pub fn embed<B: Backend>(
        table: FloatTensor<B>,
        tokens: IntTensor<B>,
        positions: Option<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        let x = B::float_select(table, 0, tokens);
        let Some(p) = positions else { return x };
        let (xs, ps) = (x.shape(), p.shape());
        let (n, t, d) = (xs[0], ps[0], ps[1]);
        let x = B::float_reshape(x, [n / t.max(1), t, d].into());
        let sum = B::float_add(x, B::float_reshape(p, [1, t, d].into()));
        B::float_reshape(sum, [n, d].into())
    }

    pub fn embed_backward<B: Backend>(
        dy: FloatTensor<B>,
        tokens: IntTensor<B>,
        vocab: usize,
        t: Option<usize>,
        acc: Option<FloatTensor<B>>,
    ) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
        let shape = dy.shape();
        let (n, d) = (shape[0], shape[1]);
        let base = match acc {
            Some(a) => B::float_reshape(a, [vocab, d].into()),
            None => primitive(Tensor::<B, 2>::zeros([vocab, d], &B::float_device(&dy))),
        };
        let dtable = B::float_select_add(base, 0, tokens, dy.clone());
        let dpos = t.map(|t| {
            let per_sequence = B::float_reshape(dy, [n / t.max(1), t, d].into());
            B::float_reshape(B::float_sum_dim(per_sequence, 0), [t, d].into())
        });
        (dtable, dpos)
    }

    /// The `centre` term: running mean over tokens, or the mean.
    fn centre<B: super::Kernels>(v: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
        if causal {
            B::causal_mean(v)
        } else {
            let shape = v.shape();
            B::float_expand(B::float_mean_dim(v, 1), shape)
        }
    }

    fn centre_backward<B: super::Kernels>(dy: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
        if causal {
            B::causal_mean_backward(dy)
        } else {
            let shape = dy.shape();
            B::float_expand(B::float_mean_dim(dy, 1), shape)
        }
    }

    pub fn scaled_sum<B: super::Kernels>(
        a: FloatTensor<B>,
        b: FloatTensor<B>,
        ga: FloatTensor<B>,
        gb: FloatTensor<B>,
    ) -> FloatTensor<B> {
        B::float_add(B::scale_groups(a, ga), B::scale_groups(b, gb))
    }

    pub fn scaled_sum_backward<B: super::Kernels>(
        a: FloatTensor<B>,
        b: FloatTensor<B>,
        ga: FloatTensor<B>,
        gb: FloatTensor<B>,
        dy: FloatTensor<B>,
    ) -> [FloatTensor<B>; 4] {
        let (na, nb) = (ga.shape().num_elements(), gb.shape().num_elements());
        let dga = B::scale_groups_grad(a, dy.clone(), na);
        let dgb = B::scale_groups_grad(b, dy.clone(), nb);
        [B::scale_groups(dy.clone(), ga), B::scale_groups(dy, gb), dga, dgb]
    }

    /// `q + bq` for `q: [batch, heads, tokens, d]`, `bq: [heads · d]`.
    fn biased<B: Backend>(q: FloatTensor<B>, bq: Option<FloatTensor<B>>) -> FloatTensor<B> {
        let Some(bq) = bq else {
            return q;
        };
        let [_, h, _, d] = q.shape().dims();
        super::primitive(super::tensor::<B, 4>(q) + super::tensor::<B, 1>(bq).reshape([1, h, 1, d]))
    }

    /// The gradient of a bias added to `x: [batch, heads, tokens, d]`
    /// from `x`'s: its sums over the batch and the tokens, `[heads · d]`.
    fn bias_grad<B: Backend>(dx: &FloatTensor<B>) -> FloatTensor<B> {
        let [_, h, _, d] = dx.shape().dims();
        super::primitive(super::tensor::<B, 4>(dx.clone()).sum_dim(0).sum_dim(2).reshape([h * d]))
    }

    pub fn attention_forward<B: super::Kernels>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        bq: Option<FloatTensor<B>>,
        (scale, causal): (f64, bool),
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let s = B::matmul(biased::<B>(q, bq), B::float_transpose(k));
        let p = B::softmax_scores(s, scale, causal);
        (B::matmul_token_major(p.clone(), v), p)
    }

    pub fn attention_backward<B: super::Kernels>(
        qkv: [FloatTensor<B>; 3],
        bq: Option<FloatTensor<B>>,
        p: FloatTensor<B>,
        g: FloatTensor<B>,
        (scale, acc): (f64, Option<FloatTensor<B>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<B>>; 4] {
        let [q, k, v] = qkv;
        let with_bias = bq.is_some();
        let q = biased::<B>(q, bq);
        let dv = wants[2].then(|| {
            let pt = B::float_transpose(p.clone());
            match acc {
                Some(c) => B::matmul_token_major_add(c, pt, g.clone()),
                None => B::matmul_token_major(pt, g.clone()),
            }
        });
        if !wants[0] && !wants[1] && !with_bias {
            return [None, None, dv, None];
        }
        let dp = B::matmul(g, B::float_transpose(v));
        let ds = B::softmax_scores_backward(p, dp, scale);
        let dq = (wants[0] || with_bias).then(|| B::matmul_token_major(ds.clone(), k));
        let dk = wants[1].then(|| B::matmul_token_major(B::float_transpose(ds), q));
        let dbq = dq.as_ref().filter(|_| with_bias).map(bias_grad::<B>);
        [dq.filter(|_| wants[0]), dk, dv, dbq]
    }

    pub fn nll_mean_with_grad<B: super::Kernels>(
        logits: FloatTensor<B>,
        targets: IntTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let n = logits.shape()[0];
        let (nll, lse) = B::cross_entropy(logits.clone(), targets.clone());
        let g = B::float_full([n].into(), (1.0 / n.max(1) as f64).into(), &B::float_device(&nll), nll.dtype().into());
        let grad = B::cross_entropy_backward(logits, lse, targets, g);
        (B::float_div_scalar(B::float_sum(nll), (n.max(1) as f64).into()), grad)
    }

    pub fn times_scalar<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
        let ones = vec![1usize; x.shape().num_dims()];
        B::float_mul(x, B::float_reshape(g, ones.into()))
    }

    pub fn shaped_attention_forward<B: super::Kernels>(
        a: super::Shaped<FloatTensor<B>>,
        add: Option<super::MixAddend<FloatTensor<B>>>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let heads = a.q.shape()[1];
        let v4 = super::autodiff::split_heads::<B>(a.v.clone(), heads);
        let (o, p) = B::attention_forward(a.q, a.k, v4, a.bq, (a.scale, a.causal));
        let m = super::MixArgs { v: a.v, o: super::autodiff::merge_heads::<B>(o), gains: a.gains, causal: a.causal };
        let y = match add {
            Some(add) => B::mix_sum(m, add),
            None => B::mix(m.v, m.o, m.gains, m.causal),
        };
        (y, p)
    }

    pub fn shaped_attention_backward<B: super::Kernels>(
        a: super::Shaped<FloatTensor<B>>,
        add: Option<super::MixAddend<FloatTensor<B>>>,
        p: FloatTensor<B>,
        dy: FloatTensor<B>,
        acc: Option<FloatTensor<B>>,
    ) -> super::ShapedGrads<FloatTensor<B>> {
        use super::autodiff::{merge_heads, split_heads};
        let heads = a.q.shape()[1];
        let v4 = split_heads::<B>(a.v.clone(), heads);
        let o = merge_heads::<B>(B::matmul_token_major(p.clone(), v4.clone()));
        let m = super::MixArgs { v: a.v, o, gains: a.gains, causal: a.causal };
        let (dv, d_o, dgains, addend) = match add {
            Some(add) => {
                let g = B::mix_sum_backward(m, add, dy, acc);
                (g.dv, g.d_o, g.dgains, Some([g.db, g.dga, g.dgb]))
            }
            None => {
                let (dv, d_o, dgains) = B::mix_backward(m.v, m.o, m.gains, dy, m.causal, acc);
                (dv, d_o, dgains, None)
            }
        };
        let d_o = split_heads::<B>(d_o, heads);
        let [dq, dk, dv, dbq] = B::attention_backward([a.q, a.k, v4], a.bq, p, d_o, (a.scale, Some(dv)), [true; 3]);
        let [dq, dk, dv] = [dq, dk, dv].map(|g| g.expect("every gradient was wanted"));
        super::ShapedGrads { dq, dk, dv: merge_heads::<B>(dv), dgains, addend, dbq }
    }

    pub fn mix_sum<B: super::Kernels>(
        m: super::MixArgs<FloatTensor<B>>,
        add: super::MixAddend<FloatTensor<B>>,
    ) -> FloatTensor<B> {
        B::scaled_sum(B::mix(m.v, m.o, m.gains, m.causal), add.b, add.ga, add.gb)
    }

    pub fn mix_sum_backward<B: super::Kernels>(
        m: super::MixArgs<FloatTensor<B>>,
        add: super::MixAddend<FloatTensor<B>>,
        dy: FloatTensor<B>,
        acc: Option<FloatTensor<B>>,
    ) -> super::MixSumGrads<FloatTensor<B>> {
        let a = B::mix(m.v.clone(), m.o.clone(), m.gains.clone(), m.causal);
        let [da, db, dga, dgb] = B::scaled_sum_backward(a, add.b, add.ga, add.gb, dy);
        let (dv, d_o, dgains) = B::mix_backward(m.v, m.o, m.gains, da, m.causal, acc);
        super::MixSumGrads { dv, d_o, dgains, db, dga, dgb }
    }

    pub fn dense<B: super::Kernels>(
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
        relu: bool,
    ) -> FloatTensor<B> {
        let shape = x.shape();
        let k = shape[shape.num_dims() - 1];
        let x = B::float_reshape(x, [shape.num_elements() / k.max(1), k].into());
        let y = match (bias, relu) {
            (Some(b), false) => B::matmul_bias(x, w, b),
            (Some(b), true) => B::relu(B::matmul_bias(x, w, b)),
            (None, false) => B::matmul(x, w),
            (None, true) => B::matmul_relu(x, w),
        };
        let mut out = shape;
        let last = out.num_dims() - 1;
        out[last] = y.shape()[1];
        B::float_reshape(y, out)
    }

    pub fn mix<B: super::Kernels>(
        v: FloatTensor<B>,
        o: FloatTensor<B>,
        gains: [FloatTensor<B>; 3],
        causal: bool,
    ) -> FloatTensor<B> {
        let [gi, gs, gc] = gains;
        let c = centre::<B>(v.clone(), causal);
        let sum = B::float_add(B::scale_groups(v, gi), B::scale_groups(o, gs));
        B::float_add(sum, B::scale_groups(c, gc))
    }

    pub fn mix_backward<B: super::Kernels>(
        v: FloatTensor<B>,
        o: FloatTensor<B>,
        gains: [FloatTensor<B>; 3],
        dy: FloatTensor<B>,
        causal: bool,
        acc: Option<FloatTensor<B>>,
    ) -> (FloatTensor<B>, FloatTensor<B>, [FloatTensor<B>; 3]) {
        let [gi, gs, gc] = gains;
        let n = |g: &FloatTensor<B>| g.shape().num_elements();
        let (ni, ns, nc) = (n(&gi), n(&gs), n(&gc));
        let c = centre::<B>(v.clone(), causal);
        let dgi = B::scale_groups_grad(v, dy.clone(), ni);
        let dgs = B::scale_groups_grad(o, dy.clone(), ns);
        let dgc = B::scale_groups_grad(c, dy.clone(), nc);
        let dv = B::float_add(
            B::scale_groups(dy.clone(), gi),
            centre_backward::<B>(B::scale_groups(dy.clone(), gc), causal),
        );
        let dv = match acc {
            Some(a) => B::float_add(a, dv),
            None => dv,
        };
        (dv, B::scale_groups(dy, gs), [dgi, dgs, dgc])
    }

    pub fn matmul_bias<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
        let n = bias.shape().num_elements();
        B::float_add(B::float_matmul(a, b), B::float_reshape(bias, [1, n].into()))
    }

    pub fn column_sums<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let n = x.shape()[1];
        B::float_reshape(B::float_sum_dim(x, 0), [n].into())
    }

    pub fn matmul_relu<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
        B::relu(B::float_matmul(a, b))
    }

    pub fn softmax_scores<B: Backend>(s: FloatTensor<B>, scale: f64, causal: bool) -> FloatTensor<B> {
        let s = B::float_mul_scalar(s, scale.into());
        let s = if causal {
            let shape = s.shape();
            let rank = shape.num_dims();
            let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
            let future = Tensor::<B, 2, Bool>::tril_mask([tq, tk], 0, &B::float_device(&s));
            let mut dims = vec![1; rank];
            dims[rank - 2] = tq;
            dims[rank - 1] = tk;
            let future = B::bool_expand(B::bool_reshape(future.into_primitive(), dims.into()), shape);
            B::float_mask_fill(s, future, f32::NEG_INFINITY.into())
        } else {
            s
        };
        primitive(burn::tensor::activation::softmax(tensor::<B, 4>(s), 3))
    }

    /// `x` as `[outer, n, inner]` (`n` groups of the last dimension).
    fn grouped<B: Backend>(x: FloatTensor<B>, n: usize) -> FloatTensor<B> {
        let shape = x.shape();
        let last = shape[shape.num_dims() - 1];
        let outer = shape.num_elements() / last.max(1);
        B::float_reshape(x, [outer, n, last / n].into())
    }

    pub fn scale_groups<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
        let shape = x.shape();
        let n = g.shape().num_elements();
        let g = B::float_reshape(g, [1, n, 1].into());
        B::float_reshape(B::float_mul(grouped::<B>(x, n), g), shape)
    }

    pub fn scale_groups_grad<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>, n: usize) -> FloatTensor<B> {
        let prod = grouped::<B>(B::float_mul(x, dy), n);
        let sums = B::float_sum_dim(B::float_sum_dim(prod, 2), 0);
        B::float_reshape(sums, [n].into())
    }

    /// `[1, tokens, 1]`: 1, 2, …, tokens.
    fn counts<B: Backend>(x: &FloatTensor<B>) -> FloatTensor<B> {
        let t = x.shape()[1];
        let c = Tensor::<B, 1, burn::tensor::Int>::arange(1..t as i64 + 1, &B::float_device(x)).float();
        B::float_reshape(primitive(c), [1, t, 1].into())
    }

    pub fn causal_mean<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        let c = counts::<B>(&x);
        B::float_div(B::float_cumsum(x, 1), c)
    }

    pub fn causal_mean_backward<B: Backend>(dy: FloatTensor<B>) -> FloatTensor<B> {
        // Σ_{i ≥ s} z[i] = Σ_i z[i] − Σ_{i < s} z[i], with z = dy / (i + 1).
        let c = counts::<B>(&dy);
        let z = B::float_div(dy, c);
        let total = B::float_sum_dim(z.clone(), 1);
        let before = B::float_sub(B::float_cumsum(z.clone(), 1), z);
        B::float_sub(total, before)
    }

    pub fn adam<B: Backend>(
        p: FloatTensor<B>,
        g: FloatTensor<B>,
        m: FloatTensor<B>,
        v: FloatTensor<B>,
        k: super::AdamStep,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let (p, g) = (tensor::<B, 1>(p), tensor::<B, 1>(g).mul_scalar(k.grad_scale));
        let g = if k.l2 > 0.0 { g + p.clone().mul_scalar(k.l2) } else { g };
        let m = tensor::<B, 1>(m).mul_scalar(k.beta1) + g.clone().mul_scalar(1.0 - k.beta1);
        let v = tensor::<B, 1>(v).mul_scalar(k.beta2) + (g.clone() * g).mul_scalar(1.0 - k.beta2);
        let step = m.clone().div(v.clone().div_scalar(k.bc2).sqrt().add_scalar(k.eps)).mul_scalar(k.lr / k.bc1);
        let p = if k.decay > 0.0 { p.mul_scalar(1.0 - k.decay) } else { p };
        (primitive(p - step), primitive(m), primitive(v))
    }

    /// `x − mean` over the last dimension when `centred`.
    fn centre_rows<B: Backend>(x: Tensor<B, 2>, centred: bool) -> Tensor<B, 2> {
        if centred {
            x.clone() - x.mean_dim(1)
        } else {
            x
        }
    }

    pub fn norm<B: Backend>(
        x: FloatTensor<B>,
        scale: FloatTensor<B>,
        bias: Option<FloatTensor<B>>,
        eps: f64,
        centred: bool,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let x = centre_rows::<B>(tensor(x), centred);
        let rstd = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
        let mut y = x * rstd.clone() * tensor::<B, 1>(scale).unsqueeze();
        if let Some(b) = bias {
            y = y + tensor::<B, 1>(b).unsqueeze();
        }
        let n = rstd.dims()[0];
        (primitive(y), primitive(rstd.reshape([n])))
    }

    pub fn norm_backward<B: Backend>(
        x: FloatTensor<B>,
        scale: FloatTensor<B>,
        rstd: FloatTensor<B>,
        dy: FloatTensor<B>,
        centred: bool,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let x = centre_rows::<B>(tensor(x), centred);
        let n = x.dims()[0];
        let rstd = tensor::<B, 1>(rstd).reshape([n, 1]);
        let dy = tensor::<B, 2>(dy);
        let xhat = x * rstd.clone();
        let g = dy.clone() * tensor::<B, 1>(scale).unsqueeze();
        let g = if centred { g.clone() - g.mean_dim(1) } else { g };
        // mean(g ⊙ x̂) is unchanged by centring g, since Σ x̂ = 0 then.
        let dx = (g.clone() - xhat.clone() * (g * xhat.clone()).mean_dim(1)) * rstd;
        let dscale = (dy.clone() * xhat).sum_dim(0).squeeze_dim(0);
        let dbias = dy.sum_dim(0).squeeze_dim(0);
        (primitive(dx), primitive::<B, 1>(dscale), primitive::<B, 1>(dbias))
    }

    pub fn cross_entropy<B: Backend>(
        logits: FloatTensor<B>,
        targets: IntTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let x = tensor::<B, 2>(logits);
        let n = x.dims()[0];
        let max = x.clone().max_dim(1).detach();
        let lse = (x.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let targets = Tensor::<B, 1, Int>::from_primitive(targets).reshape([n, 1]);
        let nll = (lse.clone() - x.gather(1, targets)).reshape([n]);
        (primitive(nll), primitive(lse.reshape([n])))
    }

    pub fn cross_entropy_backward<B: Backend>(
        logits: FloatTensor<B>,
        lse: FloatTensor<B>,
        targets: IntTensor<B>,
        g: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let x = tensor::<B, 2>(logits);
        let n = x.dims()[0];
        let p = (x - tensor::<B, 1>(lse).reshape([n, 1])).exp();
        let targets = Tensor::<B, 1, Int>::from_primitive(targets).reshape([n, 1]);
        let minus_one = Tensor::<B, 2>::full([n, 1], -1.0, &p.device());
        let d = p.scatter(1, targets, minus_one, IndexingUpdateOp::Add);
        primitive(d * tensor::<B, 1>(g).reshape([n, 1]))
    }

    pub fn softmax_scores_backward<B: Backend>(p: FloatTensor<B>, dp: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
        let rank = p.shape().num_dims();
        let dot = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), rank - 1);
        let ds = B::float_mul(p, B::float_sub(dp, dot));
        B::float_mul_scalar(ds, scale.into())
    }
}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Softmax attention (see [`Kernels::softmax_attention`]): `q`, `k` split
/// into heads (plus the query's bias `[heads · head_dim]` when given), `v`
/// and the output `[batch, tokens, heads · head_dim]`.
pub fn attention<B: Kernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 3>,
    bq: Option<Tensor<B, 1>>,
    (scale, causal): (f64, bool),
) -> Tensor<B, 3> {
    tensor(B::softmax_attention(primitive(q), primitive(k), primitive(v), bq.map(primitive), (scale, causal)))
}

/// `x` scaled by `g` per group of its last dimension (see
/// [`Kernels::scale_groups`]).
pub fn scale_groups<B: Kernels, const D: usize>(x: Tensor<B, D>, g: Tensor<B, 1>) -> Tensor<B, D> {
    tensor(B::scale_groups(primitive(x), primitive(g)))
}

/// The running mean over tokens (see [`Kernels::causal_mean`]).
pub fn causal_mean<B: Kernels>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    tensor(B::causal_mean(primitive(x)))
}

/// RMSNorm or LayerNorm over the last dimension (see [`Kernels::norm`]).
pub fn normalise<B: Kernels, const D: usize>(
    x: Tensor<B, D>,
    scale: Tensor<B, 1>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
    centred: bool,
) -> Tensor<B, D> {
    tensor(B::normalise(primitive(x), primitive(scale), bias.map(primitive), eps, centred))
}

/// The mean cross-entropy (see [`Kernels::nll_mean`]): `[1]`.
pub fn nll_mean<B: Kernels>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    tensor(B::nll_mean(primitive(logits), targets.into_primitive()))
}

/// Cross-entropy per row (see [`Kernels::cross_entropy`]): `[n]`.
pub fn nll<B: Kernels>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    tensor(B::nll(primitive(logits), targets.into_primitive()))
}

/// The token (and position) embedding (see [`Kernels::embed`]).
pub fn embed<B: Kernels>(
    table: Tensor<B, 2>,
    tokens: Tensor<B, 1, Int>,
    positions: Option<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    tensor(B::embed(primitive(table), tokens.into_primitive(), positions.map(primitive)))
}

/// `ga ⊙ a + gb ⊙ b` (see [`Kernels::scaled_sum`]).
pub fn scaled_sum<B: Kernels, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    ga: Tensor<B, 1>,
    gb: Tensor<B, 1>,
) -> Tensor<B, D> {
    tensor(B::scaled_sum(primitive(a), primitive(b), primitive(ga), primitive(gb)))
}

/// The shaped attention's terms summed (see [`Kernels::mix`]).
pub fn mix<B: Kernels>(v: Tensor<B, 3>, o: Tensor<B, 3>, gains: [Tensor<B, 1>; 3], causal: bool) -> Tensor<B, 3> {
    tensor(B::mix(primitive(v), primitive(o), gains.map(primitive), causal))
}

/// A shaped attention through its mix (see [`Kernels::shaped_attention`]):
/// `q`, `k` split into heads (plus the query's bias `[heads · d]` when
/// given), `v` and the output `[batch, tokens, heads · d]`, summed with
/// `(b, ga, gb)` when given.
pub fn shaped_attention<B: Kernels>(
    qk: [Tensor<B, 4>; 2],
    bq: Option<Tensor<B, 1>>,
    v: Tensor<B, 3>,
    gains: [Tensor<B, 1>; 3],
    (scale, causal): (f64, bool),
    add: Option<(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)>,
) -> Tensor<B, 3> {
    let [q, k] = qk.map(primitive);
    let a = Shaped { q, k, v: primitive(v), gains: gains.map(primitive), scale, causal, bq: bq.map(primitive) };
    let add = add.map(|(b, ga, gb)| MixAddend { b: primitive(b), ga: primitive(ga), gb: primitive(gb) });
    tensor(B::shaped_attention(a, add))
}

/// `ga ⊙ mix(v, o) + gb ⊙ b` (see [`Kernels::mix_sum`]).
pub fn mix_sum<B: Kernels>(
    v: Tensor<B, 3>,
    o: Tensor<B, 3>,
    gains: [Tensor<B, 1>; 3],
    causal: bool,
    b: Tensor<B, 3>,
    ga: Tensor<B, 1>,
    gb: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let m = MixArgs { v: primitive(v), o: primitive(o), gains: gains.map(primitive), causal };
    tensor(B::mix_sum(m, MixAddend { b: primitive(b), ga: primitive(ga), gb: primitive(gb) }))
}

/// `act(x · w (+ bias))` over the last dimension of `x` (see
/// [`Kernels::dense`]).
pub fn linear<B: Kernels, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    relu: bool,
) -> Tensor<B, D> {
    tensor(B::dense(primitive(x), primitive(w), bias.map(primitive), relu))
}

/// A ReLU MLP over the last dimension of `x` (see
/// [`Kernels::relu_mlp`]): `relu(x · up (+ up_bias)) · down (+ down_bias)`.
pub fn relu_mlp<B: Kernels, const D: usize>(
    x: Tensor<B, D>,
    (up, up_bias): (Tensor<B, 2>, Option<Tensor<B, 1>>),
    (down, down_bias): (Tensor<B, 2>, Option<Tensor<B, 1>>),
) -> Tensor<B, D> {
    let up = (primitive(up), up_bias.map(primitive));
    let down = (primitive(down), down_bias.map(primitive));
    tensor(B::relu_mlp(primitive(x), up, down))
}

/// `x · wᵀ` over the last dimension of `x`, for `w: [n, k]` (see
/// [`Kernels::dense_transposed`]).
pub fn linear_transposed<B: Kernels, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    tensor(B::dense_transposed(primitive(x), primitive(w)))
}

/// `a · b + bias` (see [`Kernels::matmul_bias`]).
pub fn matmul_bias<B: Kernels>(a: Tensor<B, 2>, b: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 2> {
    tensor(B::dense(primitive(a), primitive(b), Some(primitive(bias)), false))
}

/// `relu(a · b)` (see [`Kernels::matmul_relu`]).
pub fn matmul_relu<B: Kernels>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    tensor(B::dense(primitive(a), primitive(b), None, true))
}

/// `a · b` (see [`Kernels::matmul`]).
pub fn matmul<B: Kernels, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::matmul(primitive(a), primitive(b)))
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::backend::Cpu;

    type Ad = Autodiff<Cpu>;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Ad, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
    }

    /// The kernel and burn's `matmul` agree on value and both gradients,
    /// for the leaves `a`, `b` seen through `view` (contiguous or strided).
    fn same_as_burn<const D: usize>(
        a: Tensor<Ad, D>,
        b: Tensor<Ad, D>,
        view: fn(Tensor<Ad, D>, bool) -> Tensor<Ad, D>,
    ) {
        let ours = super::matmul(view(a.clone(), false), view(b.clone(), true));
        let theirs = view(a.clone(), false).matmul(view(b.clone(), true));
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        // A weighting that is not symmetric, so that a transposed gradient
        // would show.
        let w = Tensor::<Ad, D>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
        let g1 = (ours * w.clone()).sum().backward();
        let g2 = (theirs * w).sum().backward();
        let tol = Tolerance::absolute(1e-3);
        for x in [&a, &b] {
            let (ours, theirs) = (x.grad(&g1).expect("gradient"), x.grad(&g2).expect("gradient"));
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), tol);
        }
    }

    #[test]
    fn matmul_matches_burn_on_contiguous_and_strided_operands() {
        same_as_burn(random([37, 19]), random([19, 23]), |x, _| x);
        // Transposed views: column-major operands.
        same_as_burn(random([19, 37]), random([23, 19]), |x, _| x.transpose());
        // Batched, as attention uses it: [b, t, h, d] seen as [b, h, t, d]
        // (and the keys as [b, h, d, t]).
        same_as_burn(random([2, 5, 3, 4]), random([2, 5, 3, 4]), |x, key| {
            let x = x.swap_dims(1, 2);
            if key {
                x.swap_dims(2, 3)
            } else {
                x
            }
        });
        // Large enough to run on several threads.
        same_as_burn(random([256, 200]), random([200, 300]), |x, _| x);
    }

    /// The embedding kernel is burn's `select` plus the positions, value and
    /// gradients of the table (a token repeated) and of the positions.
    #[test]
    fn embed_matches_select_and_add() {
        let device = Default::default();
        let (table, pos) = (random([11, 6]), random([4, 6]));
        let tokens = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([3, 0, 10, 3, 7, 7, 2, 3], &device);
        let ours = super::embed(table.clone(), tokens.clone(), Some(pos.clone()));
        let theirs =
            (table.clone().select(0, tokens.clone()).reshape([2, 4, 6]) + pos.clone().unsqueeze::<3>()).reshape([8, 6]);
        same_gradients(&[table.clone(), pos], ours, theirs);
        let ours = super::embed(table.clone(), tokens.clone(), None);
        same_gradients(std::slice::from_ref(&table), ours, table.clone().select(0, tokens));
    }

    /// The gained sum of two tensors is its composition, value and the
    /// gradients of both tensors and both gains (per head and single).
    #[test]
    fn scaled_sum_matches_its_composition() {
        let (a, b, ga, gb) = (random::<3>([2, 70, 12]), random::<3>([2, 70, 12]), random::<1>([4]), random::<1>([1]));
        let ours = super::scaled_sum(a.clone(), b.clone(), ga.clone(), gb.clone());
        let theirs = (a.clone().reshape([2, 70, 4, 3]) * ga.clone().reshape([1, 1, 4, 1])).reshape([2, 70, 12])
            + b.clone() * gb.clone().reshape([1, 1, 1]);
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[a, b], &g1, &g2);
        grads_agree(&[ga, gb], &g1, &g2);
    }

    /// The fused shaped mix is its composition from burn's ops, causal or
    /// not, with per-head, single and negated gains: value and the
    /// gradients of v, o and all three gains.
    #[test]
    fn mix_matches_its_composition() {
        for causal in [true, false] {
            let (v, o) = (random([2, 5, 12]), random([2, 5, 12]));
            let (gi, gs, gc) = (random([3]), random([1]), random([3]));
            let centre = |v: Tensor<Ad, 3>| {
                if causal {
                    let counts = Tensor::<Ad, 1, burn::tensor::Int>::arange(1..6, &Default::default()).float();
                    v.cumsum(1) / counts.reshape([1, 5, 1])
                } else {
                    v.mean_dim(1).expand([2, 5, 12])
                }
            };
            let heads = |x: Tensor<Ad, 3>, g: Tensor<Ad, 1>| {
                let n = g.dims()[0];
                (x.reshape([2, 5, n, 12 / n]) * g.reshape([1, 1, n, 1])).reshape([2, 5, 12])
            };
            let theirs = heads(v.clone(), gi.clone())
                + heads(o.clone(), gs.clone())
                + heads(centre(v.clone()), gc.clone().neg());
            let ours = super::mix(v.clone(), o.clone(), [gi.clone(), gs.clone(), gc.clone().neg()], causal);
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            // `v` also read by a product made after the mix: its gradient
            // is registered first, and the mix's `dv` is added into it.
            let w = random([12, 12]);
            let ours = ours + super::linear(v.clone(), w.clone(), None, false);
            let theirs = theirs + v.clone().matmul(w.clone().unsqueeze());
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[v, o], &g1, &g2);
            grads_agree(&[gi, gs, gc], &g1, &g2);
            grads_agree(&[w], &g1, &g2);
        }
    }

    /// The mix summed with another branch in one kernel is the mix, then
    /// the gained sum: value and the gradients of all eight operands
    /// (per-head, single and per-column-group gains; `v` also read by a
    /// later product, and alone).
    #[test]
    fn mix_sum_matches_the_mix_then_the_sum() {
        for causal in [true, false] {
            for shared in [true, false] {
                let (v, o, b) = (random([2, 5, 12]), random([2, 5, 12]), random([2, 5, 12]));
                let gains = [random([3]), random([1]), random([3])];
                let (ga, gb) = (random([1]), random([3]));
                let w = random([12, 12]);
                let ours =
                    super::mix_sum(v.clone(), o.clone(), gains.clone(), causal, b.clone(), ga.clone(), gb.clone());
                let mixed = super::mix(v.clone(), o.clone(), gains.clone(), causal);
                let theirs = super::scaled_sum(mixed, b.clone(), ga.clone(), gb.clone());
                ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
                let (ours, theirs) = if shared {
                    // `v` also read by a product (its gradient added into), or not.
                    let extra = |v: Tensor<Ad, 3>| match shared {
                        true => super::linear(v, w.clone(), None, false),
                        false => v.zeros_like(),
                    };
                    (ours + extra(v.clone()), theirs + extra(v.clone()))
                } else {
                    (ours, theirs)
                };
                let (g1, g2) = backward_both(ours, theirs);
                grads_agree(&[v, o, b], &g1, &g2);
                grads_agree(&gains, &g1, &g2);
                grads_agree(&[ga, gb], &g1, &g2);
            }
        }
    }

    /// The shaped attention through its mix in one kernel (and summed with
    /// another branch) is the attention, then the mix (then the gained
    /// sum): value and every gradient, causal or not, `v` also read by a
    /// product made after it, with the query's bias or without (and, with
    /// it, theirs with a key bias, which changes nothing).
    #[test]
    fn shaped_attention_matches_attention_then_mix() {
        for i in 0..16 {
            let (causal, addend, shared, biased) = (i & 1 == 0, i & 2 == 0, i & 4 == 0, i & 8 == 0);
            let (q, k, v) = (random([2, 3, 5, 4]), random([2, 3, 5, 4]), random([2, 5, 12]));
            let gains = [random([3]), random([1]), random([3])];
            let (b, ga, gb, w) = (random([2, 5, 12]), random([1]), random([3]), random([12, 12]));
            let (bq, bk) = (random([12]), random([12]));
            let add = addend.then(|| (b.clone(), ga.clone(), gb.clone()));
            // `v` also read by a product (its gradient added into), or not.
            let extra = |v: Tensor<Ad, 3>| match shared {
                true => super::linear(v, w.clone(), None, false),
                false => v.zeros_like(),
            };
            let bias = biased.then(|| bq.clone());
            let ours =
                super::shaped_attention([q.clone(), k.clone()], bias, v.clone(), gains.clone(), (0.5, causal), add)
                    + extra(v.clone());
            let (q1, k1) = match biased {
                true => (q.clone() + bq.clone().reshape([1, 3, 1, 4]), k.clone() + bk.clone().reshape([1, 3, 1, 4])),
                false => (q.clone(), k.clone()),
            };
            let o = super::attention(q1, k1, v.clone(), None, (0.5, causal));
            let mixed = super::mix(v.clone(), o, gains.clone(), causal);
            let theirs = match addend {
                true => super::scaled_sum(mixed, b.clone(), ga.clone(), gb.clone()),
                false => mixed,
            } + extra(v.clone());
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[q, k], &g1, &g2);
            grads_agree(&[v], &g1, &g2);
            grads_agree(&gains, &g1, &g2);
            if addend {
                grads_agree(&[b], &g1, &g2);
                grads_agree(&[ga, gb], &g1, &g2);
            }
            if biased {
                // The key's bias (theirs only) changes nothing and has a
                // zero gradient.
                grads_agree(&[bq], &g1, &g2);
                let dbk = bk.grad(&g2).expect("burn gradient");
                dbk.to_data().assert_approx_eq::<f32>(&dbk.zeros_like().to_data(), Tolerance::absolute(1e-4));
            }
        }
    }

    /// The mix alone (its `dv` written fresh) has burn's gradients.
    #[test]
    fn mix_alone_has_the_composed_gradients() {
        let (v, o) = (random([2, 6, 8]), random([2, 6, 8]));
        let gains = [random([2]), random([2]), random([2])];
        for causal in [true, false] {
            let ours = super::mix(v.clone(), o.clone(), gains.clone(), causal);
            let p = |t: &Tensor<Ad, 3>| t.clone().into_primitive().tensor();
            let theirs =
                Tensor::<Ad, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(super::composed::mix::<Ad>(
                    p(&v),
                    p(&o),
                    gains.clone().map(|g| g.into_primitive().tensor()),
                    causal,
                )));
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[v.clone(), o.clone()], &g1, &g2);
            grads_agree(&gains, &g1, &g2);
        }
    }

    /// A layer's product, bias and ReLU (bias added in the ReLU's pass,
    /// its gradient summed in the ReLU's backward pass) is burn's
    /// `relu(x · w + bias)`: value and the gradients of all three, with a
    /// zero row where ReLU is flat.
    #[test]
    fn dense_with_bias_and_relu_matches_burn() {
        // 210 rows (blocks of 64 and a rest), 40 columns (a mask word and
        // part of one); with a bias and without.
        for with_bias in [true, false] {
            let (x, w, bias) = (random([3, 70, 9]), random([9, 40]), random([40]));
            let x = (x * Tensor::<Ad, 3>::ones([3, 70, 9], &Default::default()).slice_fill([1..2, 4..5, 0..9], 0.0))
                .detach()
                .require_grad();
            let b = with_bias.then(|| bias.clone());
            let ours = super::linear(x.clone(), w.clone(), b, true);
            let product = x.clone().matmul(w.clone().unsqueeze());
            let theirs = match with_bias {
                true => burn::tensor::activation::relu(product + bias.clone().unsqueeze()),
                false => burn::tensor::activation::relu(product),
            };
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[x], &g1, &g2);
            grads_agree(&[w], &g1, &g2);
            if with_bias {
                grads_agree(&[bias], &g1, &g2);
            }
        }
    }

    /// The ReLU MLP (one node, the hidden gradient masked in the product
    /// that forms it) is burn's `relu(x · up + b1) · down + b2`: value and
    /// every gradient, with biases or without, over rows past a block of
    /// 128, `x` also read by a product made after it.
    #[test]
    fn relu_mlp_matches_burn() {
        for (b1, b2) in [(true, true), (true, false), (false, true), (false, false)] {
            let (x, up, down, w) = (random([3, 50, 9]), random([9, 40]), random([40, 7]), random([9, 7]));
            let (bu, bd) = (random([40]), random([7]));
            let ours = super::relu_mlp(
                x.clone(),
                (up.clone(), b1.then(|| bu.clone())),
                (down.clone(), b2.then(|| bd.clone())),
            ) + super::linear(x.clone(), w.clone(), None, false);
            let mut h = x.clone().matmul(up.clone().unsqueeze());
            if b1 {
                h = h + bu.clone().unsqueeze();
            }
            let mut theirs = burn::tensor::activation::relu(h).matmul(down.clone().unsqueeze());
            if b2 {
                theirs = theirs + bd.clone().unsqueeze();
            }
            let theirs = theirs + x.clone().matmul(w.clone().unsqueeze());
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[x], &g1, &g2);
            grads_agree(&[up, down, w], &g1, &g2);
            let biases: Vec<_> = [(b1, bu), (b2, bd)].into_iter().filter(|(on, _)| *on).map(|(_, b)| b).collect();
            grads_agree(&biases, &g1, &g2);
        }
    }

    /// A tensor read by several kernels gets the sum of their gradients,
    /// which the kernels add into one another (`matmul_add`, the norm's
    /// `acc`) instead of `Gradients::register` adding them.
    #[test]
    fn gradients_added_into_by_the_kernels_match_burn() {
        let (x, w1, w2, s) = (random([12, 8]), random([8, 5]), random([8, 5]), random([8]));
        let n = super::normalise(x.clone(), s.clone(), None, 1e-5, false);
        let ours = super::matmul(x.clone(), w1.clone())
            + super::matmul_relu(x.clone(), w2.clone())
            + super::matmul(n, w1.clone())
            + super::linear_transposed(x.clone(), w1.clone().transpose());
        let r = (x.clone().square().mean_dim(1) + 1e-5).sqrt();
        let n = x.clone() / r * s.clone().unsqueeze();
        let theirs = x.clone().matmul(w1.clone())
            + burn::tensor::activation::relu(x.clone().matmul(w2.clone()))
            + n.matmul(w1.clone())
            + x.clone().matmul(w1.clone());
        same_gradients(&[x, w1, w2], ours, theirs);
    }

    /// A tied LM head (`h · Eᵀ` with `E` the product's parent) over the
    /// embedding of the same table: `E`'s gradient from both, added into
    /// one another, is burn's.
    #[test]
    fn a_tied_head_has_burns_gradients() {
        let e = random([9, 8]);
        let tokens = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([3, 0, 8, 5, 5, 1], &Default::default());
        let ours = super::linear_transposed(super::embed(e.clone(), tokens.clone(), None), e.clone());
        let theirs = e.clone().select(0, tokens).matmul(e.clone().transpose());
        same_gradients(&[e], ours, theirs);
    }

    /// The product with a bias is burn's `matmul` plus the bias, value and
    /// gradients of all three.
    #[test]
    fn matmul_bias_matches_burn() {
        let (a, b, bias) = (random([70, 9]), random([9, 21]), random([21]));
        let ours = super::matmul_bias(a.clone(), b.clone(), bias.clone());
        let theirs = a.clone().matmul(b.clone()) + bias.clone().unsqueeze();
        same_gradients(&[a.clone(), b.clone()], ours, theirs);
        let w = Tensor::<Ad, 2>::random([70, 21], Distribution::Normal(0.0, 1.0), &Default::default());
        let g1 = (super::matmul_bias(a.clone(), b.clone(), bias.clone()) * w.clone()).sum().backward();
        let g2 = ((a.matmul(b) + bias.clone().unsqueeze()) * w).sum().backward();
        let (ours, theirs) = (bias.grad(&g1).expect("gradient"), bias.grad(&g2).expect("gradient"));
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
    }

    /// The fused product and ReLU is burn's `relu(a.matmul(b))`, value and
    /// gradients of both operands (with a zero row, where ReLU is flat).
    #[test]
    fn matmul_relu_matches_burn() {
        let (a, b) = (random([13, 9]), random([9, 21]));
        let a = (a * Tensor::<Ad, 2>::ones([13, 9], &Default::default()).slice_fill([4..5, 0..9], 0.0))
            .detach()
            .require_grad();
        let ours = super::matmul_relu(a.clone(), b.clone());
        let theirs = burn::tensor::activation::relu(a.clone().matmul(b.clone()));
        same_gradients(&[a, b], ours, theirs);
    }

    /// The attention kernel and burn's attention (its autodiff composition)
    /// agree on value and on the gradients of q, k and v, causal or not;
    /// and with the query's bias given to the kernel, with burn's on `q +
    /// bq` and `k + bk`: the key's bias changes nothing, and its gradient
    /// is zero.
    #[test]
    fn softmax_attention_matches_burn() {
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        for causal in [true, false] {
            let (q, k, v) = (random([2, 3, 7, 4]), random([2, 3, 7, 4]), random([2, 7, 12]));
            let (bq, bk) = (random([12]), random([12]));
            let ours = super::attention(q.clone(), k.clone(), v.clone(), Some(bq.clone()), (0.5, causal));
            let options = AttentionModuleOptions { scale: Some(0.5), softcap: None, is_causal: causal };
            let (q1, k1) = (q.clone() + bq.clone().reshape([1, 3, 1, 4]), k.clone() + bk.clone().reshape([1, 3, 1, 4]));
            let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
            let theirs = attention(q1, k1, v4, None, None, options).swap_dims(1, 2).reshape([2, 7, 12]);
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[q, k], &g1, &g2);
            grads_agree(&[v], &g1, &g2);
            let dbq = (bq.grad(&g1).expect("kernel gradient"), bq.grad(&g2).expect("burn gradient"));
            dbq.0.to_data().assert_approx_eq::<f32>(&dbq.1.to_data(), Tolerance::absolute(1e-3));
            let dbk = bk.grad(&g2).expect("burn gradient");
            dbk.to_data().assert_approx_eq::<f32>(&dbk.zeros_like().to_data(), Tolerance::absolute(1e-4));
        }
        for causal in [true, false] {
            let [q, k] = [0, 1].map(|_| random([2, 3, 7, 4]));
            // Large logits, so that a missing max shift would overflow.
            let q = (q * 30.0).detach().require_grad();
            // `v` (and the output) with the heads merged: `[2, 7, 3 · 4]`;
            // `v` also read by a product made after the attention, so that
            // the attention's `dv` is added into that product's.
            let v = random([2, 7, 12]);
            let w = random([12, 12]);
            let ours = super::attention(q.clone(), k.clone(), v.clone(), None, (0.5, causal))
                + super::linear(v.clone(), w.clone(), None, false);
            let options = AttentionModuleOptions { scale: Some(0.5), softcap: None, is_causal: causal };
            let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
            let theirs = attention(q.clone(), k.clone(), v4, None, None, options).swap_dims(1, 2).reshape([2, 7, 12])
                + v.clone().matmul(w.clone().unsqueeze());
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[q.clone(), k], &g1, &g2);
            grads_agree(&[v], &g1, &g2);
            // Alone, `dv` is written fresh.
            let (q, k, v) = (random([2, 3, 7, 4]), random([2, 3, 7, 4]), random([2, 7, 12]));
            let ours = super::attention(q.clone(), k.clone(), v.clone(), None, (0.5, causal));
            let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
            let theirs = attention(q.clone(), k.clone(), v4, None, None, options).swap_dims(1, 2).reshape([2, 7, 12]);
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[q, k], &g1, &g2);
            grads_agree(&[v], &g1, &g2);
        }
    }

    /// The gradients of `ours` and of `theirs` weighted by one random
    /// tensor (not symmetric, so that a transposed gradient would show).
    fn backward_both<const D: usize>(
        ours: Tensor<Ad, D>,
        theirs: Tensor<Ad, D>,
    ) -> (
        <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
        <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    ) {
        let w = Tensor::<Ad, D>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
        ((ours * w.clone()).sum().backward(), (theirs * w).sum().backward())
    }

    /// Each leaf has the same gradient in `g1` (the kernels') and `g2`.
    fn grads_agree<const L: usize>(
        leaves: &[Tensor<Ad, L>],
        g1: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
        g2: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    ) {
        for x in leaves {
            let (a, b) = (x.grad(g1).expect("kernel gradient"), x.grad(g2).expect("burn gradient"));
            a.to_data().assert_approx_eq::<f32>(&b.to_data(), Tolerance::absolute(1e-3));
        }
    }

    /// `ours` (the kernels) and `theirs` (burn's ops), built in that order
    /// from the same `leaves`, agree on value and on the leaves' gradients.
    fn same_gradients<const L: usize, const D: usize>(
        leaves: &[Tensor<Ad, L>],
        ours: Tensor<Ad, D>,
        theirs: Tensor<Ad, D>,
    ) {
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(leaves, &g1, &g2);
    }

    #[test]
    fn scale_groups_matches_a_broadcast_product() {
        // Per head: [b, t, h·d] with gains [h] is [b, t, h, d] times [1, 1, h, 1].
        let (x, g) = (random::<3>([2, 5, 12]), random::<1>([3]));
        let theirs = || (x.clone().reshape([2, 5, 3, 4]) * g.clone().reshape([1, 1, 3, 1])).reshape([2, 5, 12]);
        same_gradients(std::slice::from_ref(&x), super::scale_groups(x.clone(), g.clone()), theirs());
        // The gains' gradient (a graph is spent by its backward: build anew).
        let w = Tensor::<Ad, 3>::random([2, 5, 12], Distribution::Normal(0.0, 1.0), &Default::default());
        let g1 = (super::scale_groups(x.clone(), g.clone()) * w.clone()).sum().backward();
        let g2 = (theirs() * w).sum().backward();
        let (ours, theirs) = (g.grad(&g1).expect("gradient"), g.grad(&g2).expect("gradient"));
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
        // One gain for everything, on a strided view.
        let (x, g) = (random::<3>([5, 2, 8]), random::<1>([1]));
        let ours = super::scale_groups(x.clone().swap_dims(0, 1), g.clone());
        let w = Tensor::<Ad, 3>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
        let grads = (ours.clone() * w.clone()).sum().backward();
        let dx = x.grad(&grads).expect("gradient");
        // x ⊙ g, and dx = w ⊙ g, by hand.
        let gain = g.into_scalar();
        ours.to_data().assert_approx_eq::<f32>(&(x.swap_dims(0, 1) * gain).to_data(), Tolerance::absolute(1e-5));
        dx.to_data().assert_approx_eq::<f32>(&(w.inner().swap_dims(0, 1) * gain).to_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn causal_mean_is_the_running_mean() {
        let x = random::<3>([2, 6, 5]);
        let counts = Tensor::<Ad, 1, burn::tensor::Int>::arange(1..7, &Default::default()).float().reshape([1, 6, 1]);
        let theirs = x.clone().cumsum(1) / counts;
        same_gradients(std::slice::from_ref(&x), super::causal_mean(x.clone()), theirs);
        // Token 0 is itself; the last token is the mean of all.
        let ours = super::causal_mean(x.clone());
        let first = ours.clone().slice([0..2, 0..1, 0..5]);
        first
            .to_data()
            .assert_approx_eq::<f32>(&x.clone().slice([0..2, 0..1, 0..5]).to_data(), Tolerance::absolute(1e-6));
        let last = ours.slice([0..2, 5..6, 0..5]);
        last.to_data().assert_approx_eq::<f32>(&x.mean_dim(1).to_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn nll_is_the_cross_entropy_of_log_softmax() {
        let device = Default::default();
        let logits = (random::<2>([6, 11]) * 20.0).detach().require_grad();
        let targets = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
        let ours = super::nll(logits.clone(), targets.clone());
        let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
        let theirs = logp.gather(1, targets.reshape([6, 1])).reshape([6]).neg();
        same_gradients(std::slice::from_ref(&logits), ours, theirs);
    }

    /// The mean cross-entropy with its gradient written in the forward is
    /// burn's mean of `−log_softmax` at the targets: value and the logits'
    /// gradient, with an upstream gradient of 1 (a training loss: the
    /// backward does nothing) and of 3 (scaled); untracked logits give the
    /// same value.
    #[test]
    fn nll_mean_is_the_mean_cross_entropy() {
        let device = Default::default();
        let targets = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
        for factor in [1.0, 3.0] {
            let logits = (random::<2>([6, 11]) * 20.0).detach().require_grad();
            let ours = super::nll_mean(logits.clone(), targets.clone());
            let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
            let theirs = logp.gather(1, targets.clone().reshape([6, 1])).reshape([6]).neg().mean();
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let plain = super::nll_mean(logits.clone().detach(), targets.clone());
            plain.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (g1, g2) = ((ours * factor).sum().backward(), (theirs * factor).sum().backward());
            grads_agree(std::slice::from_ref(&logits), &g1, &g2);
        }
    }

    /// The norm kernel against the norm written out in burn's ops (the
    /// formula `layers::norm` used before the kernel), for RMSNorm and
    /// LayerNorm, gradients of x, scale and bias included.
    #[test]
    fn norm_matches_its_formula() {
        // Widths below, at and past the kernels' 32 partial sums.
        for (centred, w) in [false, true].into_iter().flat_map(|c| [(c, 16), (c, 32), (c, 72)]) {
            let (x, scale, bias) = (random::<3>([2, 3, w]), random::<1>([w]), random::<1>([w]));
            let x = (x * 3.0 + 1.0).detach().require_grad();
            let b = centred.then(|| bias.clone());
            let ours = super::normalise(x.clone(), scale.clone(), b, 1e-5, centred);
            let xc = if centred { x.clone() - x.clone().mean_dim(2) } else { x.clone() };
            let rms = (xc.clone().square().mean_dim(2) + 1e-5).sqrt();
            let mut theirs = xc / rms * scale.clone().unsqueeze::<3>();
            if centred {
                theirs = theirs + bias.clone().unsqueeze::<3>();
            }
            same_gradients(std::slice::from_ref(&x), ours, theirs);
            // The parameters' gradients, from graphs built anew.
            let w = Tensor::<Ad, 3>::random([2, 3, w], Distribution::Normal(0.0, 1.0), &Default::default());
            let b = centred.then(|| bias.clone());
            let g1 = (super::normalise(x.clone(), scale.clone(), b, 1e-5, centred) * w.clone()).sum().backward();
            let xc = if centred { x.clone() - x.clone().mean_dim(2) } else { x.clone() };
            let rms = (xc.clone().square().mean_dim(2) + 1e-5).sqrt();
            let mut theirs = xc / rms * scale.clone().unsqueeze::<3>();
            if centred {
                theirs = theirs + bias.clone().unsqueeze::<3>();
            }
            let g2 = (theirs * w).sum().backward();
            let mut params = vec![&scale];
            if centred {
                params.push(&bias);
            }
            for p in params {
                let (ours, theirs) = (p.grad(&g1).expect("kernel gradient"), p.grad(&g2).expect("burn gradient"));
                ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
            }
        }
    }

    /// Each fused CPU kernel equals its composition from burn's ops (the
    /// path of the other backends), forward and backward.
    #[cfg(feature = "flex")]
    #[test]
    fn fused_kernels_equal_their_compositions() {
        use burn::tensor::ops::{ActivationOps, FloatTensorOps};
        use burn::tensor::Int;

        use super::{composed, primitive, tensor, Kernels};
        type C = Cpu;
        let d = Default::default();
        let r = |shape: [usize; 2]| primitive(Tensor::<C, 2>::random(shape, Distribution::Normal(0.0, 2.0), &d));
        let same = |a: burn::tensor::ops::FloatTensor<C>, b: burn::tensor::ops::FloatTensor<C>| {
            tensor::<C, 2>(a)
                .to_data()
                .assert_approx_eq::<f32>(&tensor::<C, 2>(b).to_data(), Tolerance::absolute(1e-4));
        };
        let same1 = |a: burn::tensor::ops::FloatTensor<C>, b: burn::tensor::ops::FloatTensor<C>| {
            tensor::<C, 1>(a)
                .to_data()
                .assert_approx_eq::<f32>(&tensor::<C, 1>(b).to_data(), Tolerance::absolute(1e-3));
        };
        let (x, dy, scale, bias) =
            (r([9, 24]), r([9, 24]), primitive(Tensor::<C, 1>::ones([24], &d) * 1.5), r([1, 24]));
        let bias = C::float_reshape(bias, [24].into());
        for centred in [false, true] {
            let (y1, s1) = <C as Kernels>::norm(x.clone(), scale.clone(), Some(bias.clone()), 1e-6, centred);
            let (y2, s2) = composed::norm::<C>(x.clone(), scale.clone(), Some(bias.clone()), 1e-6, centred);
            same(y1, y2);
            same1(s1.clone(), s2);
            let (a1, b1, c1) =
                <C as Kernels>::norm_backward(x.clone(), scale.clone(), s1.clone(), dy.clone(), centred, None);
            let (a2, b2, c2) = composed::norm_backward::<C>(x.clone(), scale.clone(), s1.clone(), dy.clone(), centred);
            same(a1.clone(), a2.clone());
            same1(b1, b2);
            same1(c1, c2);
            // Added into a gradient from elsewhere.
            let (a3, _, _) =
                <C as Kernels>::norm_backward(x.clone(), scale.clone(), s1, dy.clone(), centred, Some(x.clone()));
            same(a3, C::float_add(a2, x.clone()));
        }
        let targets = Tensor::<C, 1, Int>::from_ints([3, 0, 23, 5, 5, 1, 2, 9, 17], &d).into_primitive();
        let (n1, l1) = <C as Kernels>::cross_entropy(x.clone(), targets.clone());
        let (n2, l2) = composed::cross_entropy::<C>(x.clone(), targets.clone());
        same1(n1, n2);
        same1(l1.clone(), l2);
        let g = primitive(Tensor::<C, 1>::random([9], Distribution::Normal(0.0, 1.0), &d));
        let d1 = <C as Kernels>::cross_entropy_backward(x.clone(), l1.clone(), targets.clone(), g.clone());
        let d2 = composed::cross_entropy_backward::<C>(x.clone(), l1, targets, g);
        same(d1, d2);
        let x3 = C::float_reshape(x.clone(), [3, 3, 24].into());
        let t3 = |p| tensor::<C, 3>(p).reshape([9, 24]);
        let (m1, m2) = (<C as Kernels>::causal_mean(x3.clone()), composed::causal_mean::<C>(x3.clone()));
        same(primitive(t3(m1)), primitive(t3(m2)));
        let (m1, m2) = (<C as Kernels>::causal_mean_backward(x3.clone()), composed::causal_mean_backward::<C>(x3));
        same(primitive(t3(m1)), primitive(t3(m2)));
        let g4 = primitive(Tensor::<C, 1>::from_floats([0.5, -2.0, 3.0, 1.0], &d));
        same(<C as Kernels>::scale_groups(x.clone(), g4.clone()), composed::scale_groups::<C>(x.clone(), g4));
        same1(
            <C as Kernels>::scale_groups_grad(x.clone(), dy.clone(), 4),
            composed::scale_groups_grad::<C>(x.clone(), dy.clone(), 4),
        );
        // Adam with an L2 term and AdamW's decoupled decay at once.
        let flat9 = |p| C::float_reshape(p, [216].into());
        let (p, g, m) = (flat9(x.clone()), flat9(dy.clone()), flat9(r([9, 24])));
        let v = C::float_abs(flat9(r([9, 24])));
        let k = super::AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            bc1: 0.19,
            bc2: 0.0975,
            grad_scale: 0.5,
            l2: 0.1,
            decay: 0.001,
        };
        let (p1, m1, v1) = <C as Kernels>::adam(p.clone(), g.clone(), m.clone(), v.clone(), k);
        let (p2, m2, v2) = composed::adam::<C>(p, g, m, v, k);
        same1(p1, p2);
        same1(m1, m2);
        same1(v1, v2);
        // The embedding and its gradients.
        let tokens = Tensor::<C, 1, Int>::from_ints([3, 0, 8, 5, 5, 1], &d).into_primitive();
        let pos = C::float_reshape(r([1, 72]), [3, 24].into());
        let e1 = <C as Kernels>::embed(x.clone(), tokens.clone(), Some(pos.clone()));
        same(e1, composed::embed::<C>(x.clone(), tokens.clone(), Some(pos)));
        let dy6 = C::float_reshape(r([6, 24]), [6, 24].into());
        let (t1, p1) = <C as Kernels>::embed_backward(dy6.clone(), tokens.clone(), 9, Some(3), None);
        let (t2, p2) = composed::embed_backward::<C>(dy6.clone(), tokens.clone(), 9, Some(3), None);
        same(t1, t2);
        same(p1.expect("positions"), p2.expect("positions"));
        // Added into the table's gradient from elsewhere.
        let acc = r([9, 24]);
        let (t3, _) = <C as Kernels>::embed_backward(dy6.clone(), tokens.clone(), 9, None, Some(acc.clone()));
        let (t4, _) = composed::embed_backward::<C>(dy6, tokens, 9, None, None);
        same(t3, C::float_add(t4, acc));
        // A product added into a tensor (a fresh one: the in-place path).
        let (a, b, c) = (r([9, 24]), r([24, 24]), r([9, 24]));
        let expected = C::float_add(c.clone(), C::float_matmul(a.clone(), b.clone()));
        same(<C as Kernels>::matmul_add(c, a.clone(), b.clone()), expected);
        // …and into a view it cannot write (the composition).
        let ct = C::float_transpose(r([24, 9]));
        let expected = C::float_add(ct.clone(), C::float_matmul(a.clone(), b.clone()));
        same(<C as Kernels>::matmul_add(ct, a, b), expected);
        // A token-major product added into `[batch, tokens, heads · n]`
        // (a fresh one: in place), merged back to compare.
        let (a4, b4) =
            (C::float_reshape(r([1, 144]), [2, 3, 6, 4].into()), C::float_reshape(r([1, 120]), [2, 3, 4, 5].into()));
        let c3 = C::float_reshape(r([1, 180]), [2, 6, 15].into());
        let expected =
            C::float_add(super::autodiff::split_heads::<C>(c3.clone(), 3), C::float_matmul(a4.clone(), b4.clone()));
        let merged = |p| C::float_reshape(super::autodiff::merge_heads::<C>(p), [12, 15].into());
        same(merged(<C as Kernels>::matmul_token_major_add(c3, a4, b4)), merged(expected));
        // Attention on heads split from `[batch, tokens, heads · d]` (the
        // layers' strided views), forward and backward, causal or not, `dv`
        // fresh and added into a gradient from elsewhere.
        let heads = |p| super::autodiff::split_heads::<C>(C::float_reshape(p, [2, 5, 12].into()), 3);
        let [q, k, v, g] = [0, 1, 2, 3].map(|_| heads(r([1, 120])));
        let merged = |p| C::float_reshape(super::autodiff::merge_heads::<C>(p), [10, 12].into());
        // With a query bias or not; every gradient or only some.
        let bias = C::float_reshape(r([1, 12]), [12].into());
        for (causal, bq) in [false, true].into_iter().flat_map(|c| [(c, None), (c, Some(bias.clone()))]) {
            let (o1, p1) =
                <C as Kernels>::attention_forward(q.clone(), k.clone(), v.clone(), bq.clone(), (0.5, causal));
            let (o2, p2) = composed::attention_forward::<C>(q.clone(), k.clone(), v.clone(), bq.clone(), (0.5, causal));
            same(merged(o1), merged(o2));
            same(C::float_reshape(p1.clone(), [30, 5].into()), C::float_reshape(p2, [30, 5].into()));
            let accs = [None, Some(C::float_reshape(r([1, 120]), [2, 5, 12].into()))];
            for (acc, wants) in accs.into_iter().flat_map(|a| [(a.clone(), [true; 3]), (a, [false, true, false])]) {
                let qkv = [q.clone(), k.clone(), v.clone()];
                let (p, go) = (p1.clone(), g.clone());
                let ours =
                    <C as Kernels>::attention_backward(qkv.clone(), bq.clone(), p, go, (0.5, acc.clone()), wants);
                let theirs =
                    composed::attention_backward::<C>(qkv, bq.clone(), p1.clone(), g.clone(), (0.5, acc), wants);
                for (i, (a, b)) in ours.into_iter().zip(theirs).enumerate() {
                    let wanted = if i < 3 { wants[i] } else { bq.is_some() };
                    assert_eq!((a.is_some(), b.is_some()), (wanted, wanted), "gradient {i}");
                    match (a, b) {
                        (Some(a), Some(b)) if i < 3 => same(merged(a), merged(b)),
                        (Some(a), Some(b)) => same1(a, b),
                        _ => {}
                    }
                }
            }
        }
        // ReLU after a product, and its gradient mask (with the bias's
        // gradient summed in the same pass).
        let w = r([24, 24]);
        let y1 = <C as Kernels>::matmul_relu(x.clone(), w.clone());
        same(y1.clone(), C::relu(C::float_matmul(x.clone(), w.clone())));
        same(<C as Kernels>::relu_grad(y1.clone(), dy.clone()), C::relu_backward(y1.clone(), dy.clone()));
        let (dz, db) = <C as Kernels>::relu_grad_bias(y1.clone(), dy.clone());
        let dz2 = C::relu_backward(y1, dy.clone());
        same(dz, dz2.clone());
        same1(db, composed::column_sums::<C>(dz2));
        let bias = primitive(Tensor::<C, 1>::random([24], Distribution::Normal(0.0, 1.0), &d));
        let y2 = <C as Kernels>::dense(x.clone(), w.clone(), Some(bias.clone()), true);
        same(y2, C::relu(composed::matmul_bias::<C>(x.clone(), w.clone(), bias.clone())));
        // The same with the mask of bits, rows past a block of 64 and
        // columns past a word of 32.
        let (x70, w40, dy40) = (r([70, 24]), r([24, 40]), r([70, 40]));
        let b40 = C::float_reshape(r([1, 40]), [40].into());
        for b in [None, Some(b40.clone())] {
            let (y, mask) = <C as Kernels>::dense_relu(x70.clone(), w40.clone(), b.clone());
            let expected = match &b {
                Some(b) => C::relu(composed::matmul_bias::<C>(x70.clone(), w40.clone(), b.clone())),
                None => C::relu(C::float_matmul(x70.clone(), w40.clone())),
            };
            same(y.clone(), expected);
            let dz2 = C::relu_backward(y.clone(), dy40.clone());
            same(<C as Kernels>::relu_grad(mask.clone(), dy40.clone()), dz2.clone());
            let (dz, db) = <C as Kernels>::relu_grad_bias(mask.clone(), dy40.clone());
            same(dz, dz2.clone());
            same1(db, composed::column_sums::<C>(dz2));
            // The product masked as it is formed, against the composition.
            let (g7, w7) = (r([70, 7]), r([40, 7]));
            let g = C::float_matmul(g7.clone(), C::float_transpose(w7.clone()));
            let (dz, db) = <C as Kernels>::masked_product(g7.clone(), w7.clone(), mask.clone(), true);
            let expected = C::relu_backward(y.clone(), g);
            same(dz, expected.clone());
            same1(db.expect("sums"), composed::column_sums::<C>(expected.clone()));
            let (dz, db) = <C as Kernels>::masked_product(g7, w7, mask, false);
            same(dz, expected);
            assert!(db.is_none());
        }
        // Attention weights: [2, 2, 6, 6] scores, causal or not.
        let (s4, dp) = (r([4, 36]), r([4, 36]));
        let four = |p| C::float_reshape(p, [2, 2, 6, 6].into());
        let flat = |p| C::float_reshape(p, [4, 36].into());
        for causal in [false, true] {
            let p1 = <C as Kernels>::softmax_scores(four(s4.clone()), 0.7, causal);
            let p2 = composed::softmax_scores::<C>(four(s4.clone()), 0.7, causal);
            same(flat(p1.clone()), flat(p2));
            let d1 = <C as Kernels>::softmax_scores_backward(p1.clone(), four(dp.clone()), 0.7);
            let d2 = composed::softmax_scores_backward::<C>(p1, four(dp.clone()), 0.7);
            same(flat(d1), flat(d2));
        }
    }
}
