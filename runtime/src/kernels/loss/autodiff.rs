//! The loss on `Autodiff<B>`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Shape, TensorMetadata};

use super::LossOps;
use crate::kernels::graph::record;
use crate::kernels::Kernels;

/// The mean cross-entropy, its gradient computed in the forward pass (while
/// each row of logits is in cache): the backward only scales it by the
/// upstream gradient (nothing when that is 1, as for a training loss).
#[derive(Debug)]
struct NllMean;

impl<B: Kernels> Backward<B, 1> for NllMean {
    /// `(softmax(z) − onehot) / n` (times `1 − (z / cap)²` with a cap).
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::times_scalar(grad, g));
    }
}

/// Cross-entropy per row: `dlogits = g ⊙ (softmax(logits) − onehot)`.
#[derive(Debug)]
struct Nll;

impl<B: Kernels> Backward<B, 1> for Nll {
    /// The logits, their log-sum-exp per row, the targets.
    type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, lse, targets) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::cross_entropy_backward(logits, lse, targets, g));
    }
}

/// The sum of every entry: `dx = g` at every entry.
#[derive(Debug)]
struct Total;

impl<B: Kernels> Backward<B, 1> for Total {
    /// The shape of `x`.
    type State = Shape;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let shape = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            let ones = Shape::from(vec![1; shape.num_dims()]);
            B::float_expand(B::float_reshape(g, ones), shape)
        });
    }
}

impl<B: Kernels, C: CheckpointStrategy> LossOps for Autodiff<B, C> {
    fn total(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        record!(Total, [x.node.clone()], shape, B::total(x.primitive))
    }

    fn nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let (nll, lse) = B::cross_entropy(logits.primitive.clone(), targets.clone());
        record!(Nll, [logits.node.clone()], (logits.primitive, lse, targets), nll)
    }

    fn nll_mean(logits: FloatTensor<Self>, targets: IntTensor<Self>, cap: Option<f64>) -> FloatTensor<Self> {
        if !logits.is_tracked() {
            let loss = B::nll_mean(logits.primitive, targets, cap);
            return <Autodiff<B, C> as AutodiffBackend>::from_inner(loss);
        }
        let (loss, grad) = B::nll_mean_with_grad(logits.primitive, targets, cap);
        record!(NllMean, [logits.node.clone()], grad, loss)
    }
}
