//! The kernels on `Tensor`s: what the layers call. Each wraps one
//! [`Kernels`] method, taking and giving burn's typed tensors.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use super::{Kernels, MixAddend, MixArgs, Shaped};

pub(super) fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

pub(super) fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
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
