//! Rotary positions on `Autodiff<B>`: one node, whose backward turns the
//! gradient back (the same kernel with `sin` negated).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::RopeOps;
use crate::kernels::graph::record;
use crate::kernels::Kernels;

/// `y = rope(x)`: `dx = rope(dy)` by the opposite angles. The tables are
/// constants (no gradient).
#[derive(Debug)]
struct Rope;

impl<B: Kernels> Backward<B, 1> for Rope {
    /// `cos` and `−sin`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, minus_sin) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| B::rope(dy, cos, minus_sin));
    }
}

impl<B: Kernels, C: CheckpointStrategy> RopeOps for Autodiff<B, C> {
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        let (cos, sin) = (cos.primitive, sin.primitive);
        let y = B::rope(x.primitive.clone(), cos.clone(), sin.clone());
        // The state is made only when `x` is tracked.
        record!(Rope, [x.node], (cos, B::float_neg(sin)), y)
    }
}
