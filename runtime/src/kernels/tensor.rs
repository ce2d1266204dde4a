//! Between burn's typed tensors and the primitives the kernels take, and
//! the views every family uses: rows, heads split and merged.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

/// A float tensor's primitive.
pub fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// A primitive as a typed tensor of rank `D`.
pub fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `x` with its leading dimensions merged: `[rows, last]` (free for the
/// contiguous tensors the layers pass).
pub fn flat<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let shape = t.shape();
    let last = shape[shape.num_dims() - 1];
    B::float_reshape(t, [shape.num_elements() / last.max(1), last].into())
}

/// Entry `k` of `x`'s first dimension, flattened to its `width` entries
/// (a row of stacked sums: `[k, …]` → `[width]`).
pub fn row<B: Backend>(x: FloatTensor<B>, k: usize, width: usize) -> FloatTensor<B> {
    B::float_reshape(B::float_slice(x, &[burn::tensor::Slice::from(k..k + 1)]), [width].into())
}

/// `[batch, tokens, heads · d]` → `[batch, heads, tokens, d]` (a view of a
/// contiguous tensor).
pub fn split_heads<B: Backend>(x: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let s = x.shape();
    let (b, t, inner) = (s[0], s[1], s[2]);
    B::float_swap_dims(B::float_reshape(x, [b, t, heads, inner / heads.max(1)].into()), 1, 2)
}

/// `[batch, heads, tokens, d]` → `[batch, tokens, heads · d]` (a view when
/// stored token-major, as [`crate::kernels::DenseOps::matmul_token_major`] stores it).
pub fn merge_heads<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = x.shape();
    let (b, h, t, d) = (s[0], s[1], s[2], s[3]);
    B::float_reshape(B::float_swap_dims(x, 1, 2), [b, t, h * d].into())
}
