//! Rotary positions from burn's primitive ops: the halves of the turned
//! entries sliced, multiplied and put back together.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use crate::kernels::tensor::{primitive, tensor};

pub fn rope<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>) -> FloatTensor<B> {
    let x = tensor::<B, 4>(x);
    let (cos, sin) = (tensor::<B, 2>(cos).unsqueeze::<4>(), tensor::<B, 2>(sin).unsqueeze::<4>());
    let [b, h, t, d] = x.dims();
    let half = cos.dims()[3];
    let r = 2 * half;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..r]);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos + x1 * sin;
    let y = if r == d {
        Tensor::cat(vec![r1, r2], 3)
    } else {
        Tensor::cat(vec![r1, r2, x.slice([0..b, 0..h, 0..t, r..d])], 3)
    };
    primitive(y)
}
