//! Norms on `Autodiff<B>`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

use super::NormOps;
use crate::kernels::graph::{record, register_all, take_grad};
use crate::kernels::tensor::flat;
use crate::kernels::Kernels;

/// RMSNorm or LayerNorm: parents `x`, `scale` (and `bias`, `N = 3`).
#[derive(Debug)]
struct Norm;

impl<B: Kernels, const N: usize> Backward<B, N> for Norm {
    /// `x`, the scale, `rstd`, centred.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, scale, rstd, centred) = ops.state;
        let shape = x.shape();
        let dy = flat::<B>(grads.consume::<B>(&ops.node));
        let acc = take_grad!(B, grads, &ops.parents[0], dy.clone()).map(flat::<B>);
        let (dx, dscale, dbias) = B::norm_backward(flat::<B>(x), scale, rstd, dy, centred, acc);
        let dx = B::float_reshape(dx, shape);
        register_all!(B, grads, ops.parents, [dx, dscale, dbias]);
    }
}

impl<B: Kernels, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn normalise(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        let (y, rstd) = B::norm(
            flat::<B>(x.primitive.clone()),
            scale.primitive.clone(),
            bias.as_ref().map(|b| b.primitive.clone()),
            eps,
            centred,
        );
        let y = B::float_reshape(y, shape);
        let state = (x.primitive, scale.primitive, rstd, centred);
        match bias {
            Some(b) => record!(Norm, [x.node, scale.node, b.node], state, y),
            None => record!(Norm, [x.node, scale.node], state, y),
        }
    }
}
