//! Gains from burn's primitive ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

use super::GainOps;

pub fn scaled_sum<B: GainOps>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    ga: FloatTensor<B>,
    gb: FloatTensor<B>,
) -> FloatTensor<B> {
    B::float_add(B::scale_groups(a, ga), B::scale_groups(b, gb))
}

pub fn scaled_sum_backward<B: GainOps>(
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
