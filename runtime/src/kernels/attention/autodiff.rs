//! Softmax attention on `Autodiff<B>`: one graph node, the weights kept
//! from the forward pass.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;

use super::{AttentionOps, Scores};
use crate::kernels::graph::{record, take_grad};
use crate::kernels::tensor::{merge_heads, split_heads};
use crate::kernels::Kernels;

/// Softmax attention `o = p · v`, `p = softmax(z)`, `z` the logits of
/// `(q + bq) · kᵀ`: `dv = pᵀ · g`, `dp = g · vᵀ`, `ds = z′ ⊙ p ⊙ (dp − Σ p
/// ⊙ dp)` (`z′` the logits' slope),
/// `dq = ds · k`, `dk = dsᵀ · (q + bq)`, `dbq = Σ dq`; parents `q`, `k`,
/// `v` (and `bq`, `N` = 3 or 4). The weights `p` are kept from the forward.
/// `v` and `o` are `[batch, tokens, heads · head_dim]` (heads split and
/// merged inside the op), so that `v`'s tensor is the node's direct parent
/// and `dv` is added into its gradient from elsewhere (see `take_grad!`).
#[derive(Debug)]
struct Attention;

impl<B: Kernels, const N: usize> Backward<B, N> for Attention {
    /// `q`, `k`, `v` (split into heads), the query's bias, the weights
    /// (or what the backend keeps in their place) and, beside row
    /// statistics, the output (which the node's output shares), how the
    /// scores were made logits and which keys each query saw.
    type State = ([FloatTensor<B>; 3], Option<FloatTensor<B>>, (FloatTensor<B>, Option<FloatTensor<B>>), Scores);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ([q, k, v], bq, kept, scores) = ops.state;
        let heads = q.shape()[1];
        let g = grads.consume::<B>(&ops.node);
        let mut parents = ops.parents.into_iter();
        let [nq, nk, nv, nb] = [0; 4].map(|_| parents.next().flatten());
        let acc = take_grad!(B, grads, &nv, g.clone());
        let wants = [nq.is_some(), nk.is_some(), nv.is_some()];
        let g4 = split_heads::<B>(g, heads);
        let bq = bq.filter(|_| nb.is_some());
        let [dq, dk, dv, dbq] = B::attention_backward([q, k, v], bq, kept, g4, (scores, acc), wants);
        let dv = dv.map(merge_heads::<B>);
        for (node, grad) in [(nq, dq), (nk, dk), (nv, dv), (nb, dbq)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn softmax_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        scores: Scores,
    ) -> FloatTensor<Self> {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        let v4 = split_heads::<B>(v.primitive, q.primitive.shape()[1]);
        let (qp, kp) = (q.primitive, k.primitive);
        let b = bq.as_ref().map(|b| b.primitive.clone());
        let (o, p) = B::attention_forward(qp.clone(), kp.clone(), v4.clone(), b.clone(), scores);
        // The output too where the backend's backward reads it (beside row
        // statistics, where it would recompute it), not beside weights.
        let o_kept = B::reads_output(&p).then(|| o.clone());
        let (state, y) = (([qp, kp, v4], b, (p, o_kept), scores), merge_heads::<B>(o));
        match bq {
            Some(bq) => {
                let [q, k, v] = nodes;
                record!(Attention, [q, k, v, bq.node], state, y)
            }
            None => record!(Attention, nodes, state, y),
        }
    }
}
