//! Adam(W) from burn's tensor ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use super::AdamStep;
use crate::kernels::tensor::{primitive, tensor};

pub fn adam<B: Backend>(
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    k: AdamStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (p, g) = (tensor::<B, 1>(p), tensor::<B, 1>(g).mul_scalar(k.grad_scale));
    let g = if k.l2 > 0.0 { g + p.clone().mul_scalar(k.l2) } else { g };
    let m = tensor::<B, 1>(m).mul_scalar(k.beta1) + g.clone().mul_scalar(1.0 - k.beta1);
    let v = tensor::<B, 1>(v).mul_scalar(k.beta2) + (g.clone() * g).mul_scalar(1.0 - k.beta2);
    let step = m.clone().div(v.clone().div_scalar(k.bc2).sqrt().add_scalar(k.eps)).mul_scalar(k.lr / k.bc1);
    let p = if k.decay > 0.0 { p.mul_scalar(1.0 - k.decay) } else { p };
    (primitive(p - step), primitive(m), primitive(v))
}

pub fn squared_norm<B: Backend>(xs: Vec<FloatTensor<B>>, device: &B::Device) -> FloatTensor<B> {
    let zero = burn::tensor::Tensor::<B, 1>::zeros([1], device);
    let total = xs.into_iter().fold(zero, |t, x| {
        let n = burn::tensor::TensorMetadata::shape(&x).num_elements();
        let x = tensor::<B, 1>(B::float_reshape(x, [n].into()));
        t + (x.clone() * x).sum()
    });
    primitive(total)
}
