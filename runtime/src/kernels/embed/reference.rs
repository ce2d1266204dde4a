//! The embedding from burn's primitive ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorMetadata};

use crate::kernels::tensor::primitive;

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
    let d = dy.shape()[1];
    let base = match acc {
        Some(a) => B::float_reshape(a, [vocab, d].into()),
        None => primitive(Tensor::<B, 2>::zeros([vocab, d], &B::float_device(&dy))),
    };
    let dtable = B::float_select_add(base, 0, tokens, dy.clone());
    (dtable, t.map(|t| position_grad::<B>(dy, t)))
}

/// The positions' gradient from `dy: [n, d]`: its rows summed by `i mod t`, `[t, d]`.
pub fn position_grad<B: Backend>(dy: FloatTensor<B>, t: usize) -> FloatTensor<B> {
    let shape = dy.shape();
    let (n, d) = (shape[0], shape[1]);
    let per_sequence = B::float_reshape(dy, [n / t.max(1), t, d].into());
    B::float_reshape(B::float_sum_dim(per_sequence, 0), [t, d].into())
}
