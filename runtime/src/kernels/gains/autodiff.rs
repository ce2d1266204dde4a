//! Gains on `Autodiff<B>`: one graph node per gained sum or scaling.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

use super::GainOps;
use crate::kernels::graph::{record, register_all};
use crate::kernels::Kernels;

/// `ga ⊙ a + gb ⊙ b`: parents `a`, `b`, `ga`, `gb`.
#[derive(Debug)]
struct ScaledSum;

impl<B: Kernels> Backward<B, 4> for ScaledSum {
    type State = [FloatTensor<B>; 4];

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [a, b, ga, gb] = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let all = B::scaled_sum_backward(a, b, ga, gb, dy);
        register_all!(B, grads, ops.parents, all);
    }
}

/// `y = x ⊙ g` per group: `dx = dy ⊙ g`, `dg = Σ dy ⊙ x` per group.
#[derive(Debug)]
struct ScaleGroups;

impl<B: Kernels> Backward<B, 2> for ScaleGroups {
    /// `x` (for `dg`), `g` (for `dx`), the number of gains.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, g, n) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dy| B::scale_groups(dy, g.expect("g is kept when x is tracked")),
            |dy| {
                let x = x.expect("x is kept when g is tracked");
                B::scale_groups_grad(x, dy, n)
            },
        );
    }
}

impl<B: Kernels, C: CheckpointStrategy> GainOps for Autodiff<B, C> {
    fn scaled_sum(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [a.node.clone(), b.node.clone(), ga.node.clone(), gb.node.clone()];
        let inner = [a.primitive, b.primitive, ga.primitive, gb.primitive];
        let [pa, pb, pga, pgb] = inner.clone();
        let y = B::scaled_sum(pa, pb, pga, pgb);
        record!(ScaledSum, nodes, inner, y)
    }

    fn scale_groups(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x_tracked, g_tracked) = (x.is_tracked(), g.is_tracked());
        let y = B::scale_groups(x.primitive.clone(), g.primitive.clone());
        let n = g.primitive.shape().num_elements();
        let state = (g_tracked.then_some(x.primitive), x_tracked.then_some(g.primitive), n);
        record!(ScaleGroups, [x.node, g.node], state, y)
    }
}
