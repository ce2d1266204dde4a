//! The embedding on `Autodiff<B>`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::TensorMetadata;

use super::EmbedOps;
use crate::kernels::graph::take_grad;
use crate::kernels::Kernels;

/// The embedding: parents the table (and the positions, `N = 2`).
#[derive(Debug)]
struct Embed;

impl<B: Kernels, const N: usize> Backward<B, N> for Embed {
    /// The tokens (and their groups), the vocabulary, the number of positions.
    type State = (IntTensor<B>, Option<IntTensor<B>>, usize, Option<usize>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (tokens, groups, vocab, t) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = take_grad!(B, grads, &ops.parents[0], dy.clone());
        let (dtable, dpos) = B::embed_backward(dy, tokens, groups, vocab, t, acc);
        let mut parents = ops.parents.into_iter();
        if let Some(Some(node)) = parents.next() {
            grads.register::<B>(node.id, dtable);
        }
        if let (Some(Some(node)), Some(dpos)) = (parents.next(), dpos) {
            grads.register::<B>(node.id, dpos);
        }
    }
}

/// Records the embedding `y` of `tokens` with parents `nodes` (as
/// `record!` does), grouping the tokens for the backward only when a
/// parent is tracked: the grouping reads the tokens from the device.
macro_rules! tracked_if_needed {
    ($C:ty, $nodes:expr, ($tokens:expr, $vocab:expr, $t:expr), $y:expr) => {
        match Embed.prepare::<$C>($nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let groups = B::embed_groups(&$tokens, $vocab);
                prep.finish(($tokens, groups, $vocab, $t), $y)
            }
            OpsKind::UnTracked(prep) => prep.finish($y),
        }
    };
}

impl<B: Kernels, C: CheckpointStrategy> EmbedOps for Autodiff<B, C> {
    fn embed(
        table: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        positions: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let vocab = table.primitive.shape()[0];
        let t = positions.as_ref().map(|p| p.primitive.shape()[0]);
        let y = B::embed(table.primitive, tokens.clone(), positions.as_ref().map(|p| p.primitive.clone()));
        match positions {
            Some(p) => tracked_if_needed!(C, [table.node, p.node], (tokens, vocab, t), y),
            None => tracked_if_needed!(C, [table.node], (tokens, vocab, t), y),
        }
    }
}
