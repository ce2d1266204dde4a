//! Norms from burn's tensor ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use crate::kernels::tensor::{primitive, tensor};

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

/// [`norm_backward`] with `dx` added to `acc` when given (the trait's
/// signature: what a kernel without a plan for its operands falls back to).
pub fn norm_backward_adding<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    rstd: FloatTensor<B>,
    dy: FloatTensor<B>,
    centred: bool,
    acc: Option<FloatTensor<B>>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (dx, dscale, dbias) = norm_backward::<B>(x, scale, rstd, dy, centred);
    (acc.map_or(dx.clone(), |a| B::float_add(dx, a)), dscale, dbias)
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
