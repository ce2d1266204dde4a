//! The shaped attention on `Autodiff<B>`: one node for the attention
//! through its mix (and a gained sum), one for the mix alone, one for the
//! `centre` term.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::{MixAddend, Shaped, ShapedOps};
use crate::kernels::attention::Keys;
use crate::kernels::graph::{record, register_all, take_grad};
use crate::kernels::Kernels;

/// A shaped attention through its mix (and a sum with another branch):
/// parents `q`, `k`, `v`, the three gains, then `b`, `beta_sa`, `beta_ff` with an
/// addend, then the query's bias with one (`N` = 6, 7, 9 or 10).
#[derive(Debug)]
struct ShapedAttention;

impl<B: Kernels, const N: usize> Backward<B, N> for ShapedAttention {
    /// The operands, the addend, the attention weights (or what the
    /// backend keeps in their place) and the softmax term where kept.
    type State = (Shaped<FloatTensor<B>>, Option<MixAddend<FloatTensor<B>>>, (FloatTensor<B>, Option<FloatTensor<B>>));

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, add, kept) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = take_grad!(B, grads, &ops.parents[2], dy.clone());
        let g = B::shaped_attention_backward(a, add, kept, dy, acc);
        let [dalpha, dbeta, dgamma] = g.dgains;
        let mut all = vec![g.dq, g.dk, g.dv, dalpha, dbeta, dgamma];
        all.extend(g.addend.into_iter().flatten());
        all.extend(g.dbq);
        register_all!(B, grads, ops.parents, all);
    }
}

/// The shaped mix: parents `v`, `o` and the three gains.
#[derive(Debug)]
struct Mix;

impl<B: Kernels> Backward<B, 5> for Mix {
    /// `v`, `o`, the gains, the keys each query sees.
    type State = (FloatTensor<B>, FloatTensor<B>, [FloatTensor<B>; 3], Keys);

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (v, o, gains, keys) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = take_grad!(B, grads, &ops.parents[0], dy.clone());
        let (dv, d_o, [dalpha, dbeta, dgamma]) = B::mix_backward(v, o, gains, dy, keys, acc);
        register_all!(B, grads, ops.parents, [dv, d_o, dalpha, dbeta, dgamma]);
    }
}

/// The `centre` term: the mean of what each token sees.
#[derive(Debug)]
struct Centre;

impl<B: Kernels> Backward<B, 1> for Centre {
    type State = Keys;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let keys = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| B::centre_backward(dy, keys));
    }
}

impl<B: Kernels, C: CheckpointStrategy> ShapedOps for Autodiff<B, C> {
    fn shaped_attention(a: Shaped<FloatTensor<Self>>, add: Option<MixAddend<FloatTensor<Self>>>) -> FloatTensor<Self> {
        let [alpha, beta, gamma] = a.gains;
        let [q, k, v, gi_n, gs_n, gc_n] = [&a.q, &a.k, &a.v, &alpha, &beta, &gamma].map(|t| t.node.clone());
        let bias_node = a.bq.as_ref().map(|b| b.node.clone());
        let inner = Shaped {
            q: a.q.primitive,
            k: a.k.primitive,
            v: a.v.primitive,
            gains: [alpha.primitive, beta.primitive, gamma.primitive],
            scale: a.scale,
            keys: a.keys,
            bq: a.bq.map(|t| t.primitive),
        };
        let (extra, addend) = match add {
            Some(m) => {
                let extra = [&m.b, &m.beta_sa, &m.beta_ff].map(|t| t.node.clone());
                (
                    Some(extra),
                    Some(MixAddend { b: m.b.primitive, beta_sa: m.beta_sa.primitive, beta_ff: m.beta_ff.primitive }),
                )
            }
            None => (None, None),
        };
        let (y, p, o) = B::shaped_attention_forward(inner.clone(), addend.clone());
        let state = (inner, addend, (p, o));
        let n = ShapedAttention;
        match (extra, bias_node) {
            (None, None) => record!(n, [q, k, v, gi_n, gs_n, gc_n], state, y),
            (None, Some(bq)) => record!(n, [q, k, v, gi_n, gs_n, gc_n, bq], state, y),
            (Some([b, beta_sa, beta_ff]), None) => {
                record!(n, [q, k, v, gi_n, gs_n, gc_n, b, beta_sa, beta_ff], state, y)
            }
            (Some([b, beta_sa, beta_ff]), Some(bq)) => {
                record!(n, [q, k, v, gi_n, gs_n, gc_n, b, beta_sa, beta_ff, bq], state, y)
            }
        }
    }

    fn mix(v: FloatTensor<Self>, o: FloatTensor<Self>, gains: [FloatTensor<Self>; 3], keys: Keys) -> FloatTensor<Self> {
        let [alpha, beta, gamma] = gains;
        let nodes = [v.node.clone(), o.node.clone(), alpha.node.clone(), beta.node.clone(), gamma.node.clone()];
        let inner = [alpha.primitive, beta.primitive, gamma.primitive];
        let y = B::mix(v.primitive.clone(), o.primitive.clone(), inner.clone(), keys);
        record!(Mix, nodes, (v.primitive, o.primitive, inner, keys), y)
    }

    fn centre(x: FloatTensor<Self>, keys: Keys) -> FloatTensor<Self> {
        let y = B::centre(x.primitive.clone(), keys);
        record!(Centre, [x.node.clone()], keys, y)
    }
}
