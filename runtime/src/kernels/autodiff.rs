//! The kernels on `Autodiff<B>`: one graph node per kernel, its backward
//! written out with `B`'s kernels.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::Kernels;

/// `a · b`: `da = g · bᵀ`, `db = aᵀ · g`.
#[derive(Debug)]
struct Matmul;

impl<B: Kernels> Backward<B, 2> for Matmul {
    /// The operands the backward needs: `b` for `da`, `a` for `db`.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |g| B::matmul(g, B::float_transpose(b.expect("b is kept when a is tracked"))),
            |g| B::matmul(B::float_transpose(a.expect("a is kept when b is tracked")), g),
        );
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
        match Matmul.prepare::<C>([a.node.clone(), b.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (b_tracked.then(|| a.primitive.clone()), a_tracked.then(|| b.primitive.clone()));
                prep.finish(state, B::matmul(a.primitive, b.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul(a.primitive, b.primitive)),
        }
    }
}
