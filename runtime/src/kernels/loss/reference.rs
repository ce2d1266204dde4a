//! The loss from burn's tensor ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorMetadata};

use super::LossOps;
use crate::kernels::tensor::{primitive, tensor};

pub fn cross_entropy<B: Backend>(logits: FloatTensor<B>, targets: IntTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
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

pub fn nll_mean<B: LossOps>(logits: FloatTensor<B>, targets: IntTensor<B>, cap: Option<f64>) -> FloatTensor<B> {
    let logits = match cap {
        Some(c) => soft_capped::<B>(logits, c),
        None => logits,
    };
    let nll = B::cross_entropy(logits, targets).0;
    let n = nll.shape().num_elements();
    B::float_div_scalar(B::float_sum(nll), (n.max(1) as f64).into())
}

pub fn nll_mean_with_grad<B: LossOps>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    cap: Option<f64>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    if let Some(c) = cap {
        // Through `z = c · tanh(logits / c)`: dz/dlogits = 1 − (z / c)².
        let z = tensor::<B, 2>(soft_capped::<B>(logits, c));
        let slope = z.clone().div_scalar(c).powi_scalar(2).neg().add_scalar(1.0);
        let (loss, dz) = B::nll_mean_with_grad(primitive(z), targets, None);
        return (loss, primitive(tensor::<B, 2>(dz) * slope));
    }
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

pub fn soft_capped<B: Backend>(x: FloatTensor<B>, cap: f64) -> FloatTensor<B> {
    B::float_mul_scalar(B::float_tanh(B::float_div_scalar(x, cap.into())), cap.into())
}
