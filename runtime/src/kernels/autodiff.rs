//! The kernels on `Autodiff<B>`: one graph node per kernel, its backward
//! written out with `B`'s kernels.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Shape, TensorMetadata};

use super::{Kernels, MixAddend, MixArgs, Projection, Shaped};

/// Records `y`, computed from the tensors of `nodes`, as one node of `op`
/// in the graph (with `state` for its backward when a parent is tracked);
/// `C` is the checkpoint strategy of the impl it is used in.
macro_rules! record {
    ($op:expr, $nodes:expr, $state:expr, $y:expr) => {
        match $op.prepare::<C>($nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish($state, $y),
            OpsKind::UnTracked(prep) => prep.finish($y),
        }
    };
}

/// Takes the gradient registered so far for the parent `node` out of
/// `grads` (`None` if there is none), so that a kernel adds the new one
/// into it — one pass fewer than the addition `Gradients::register` makes.
/// The key is an untracked tensor (`like`, any tensor) given the parent's
/// node: `Gradients::remove` reads only its node's id.
macro_rules! take_grad {
    ($B:ty, $grads:expr, $node:expr, $like:expr) => {{
        let mut key = <Autodiff<$B> as AutodiffBackend>::from_inner($like);
        key.node = $node.clone();
        $grads.remove::<$B>(&key)
    }};
}

/// The 2-D product `a · b` for the gradient of the parent `node` (a
/// layer's input or weight): added by the product into the gradient
/// registered for it so far (its leading dimensions merged), if any (see
/// `take_grad!`).
macro_rules! product_into {
    ($B:ty, $grads:expr, $node:expr, $a:expr, $b:expr) => {{
        let (a, b) = ($a, $b);
        match take_grad!($B, $grads, $node, b.clone()) {
            Some(c) => <$B>::matmul_add(flat::<$B>(c), a, b),
            None => <$B>::matmul(a, b),
        }
    }};
}

/// `a · b`: `da = g · bᵀ`, `db = aᵀ · g`.
#[derive(Debug)]
struct Matmul;

impl<B: Kernels> Backward<B, 2> for Matmul {
    /// The operands the backward needs: `b` for `da`, `a` for `db`.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let [na, nb] = ops.parents;
        if let Some(node) = nb {
            let a = a.expect("a is kept when b is tracked");
            grads.register::<B>(node.id, B::matmul(B::float_transpose(a), g.clone()));
        }
        if let Some(node) = na {
            let b = b.expect("b is kept when a is tracked");
            let da = match take_grad!(B, grads, node, g.clone()) {
                Some(c) => B::matmul_add(c, g, B::float_transpose(b)),
                None => B::matmul(g, B::float_transpose(b)),
            };
            grads.register::<B>(node.id, da);
        }
    }
}

/// `ga ⊙ a + gb ⊙ b`: parents `a`, `b`, `ga`, `gb`.
#[derive(Debug)]
struct ScaledSum;

impl<B: Kernels> Backward<B, 4> for ScaledSum {
    type State = [FloatTensor<B>; 4];

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [a, b, ga, gb] = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let all = B::scaled_sum_backward(a, b, ga, gb, dy);
        for (parent, grad) in ops.parents.into_iter().zip(all) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The shaped mix: parents `v`, `o` and the three gains.
#[derive(Debug)]
struct Mix;

impl<B: Kernels> Backward<B, 5> for Mix {
    /// `v`, `o`, the gains, causal.
    type State = (FloatTensor<B>, FloatTensor<B>, [FloatTensor<B>; 3], bool);

    fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (v, o, gains, causal) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = match &ops.parents[0] {
            Some(node) => take_grad!(B, grads, node, dy.clone()),
            None => None,
        };
        let (dv, d_o, [dgi, dgs, dgc]) = B::mix_backward(v, o, gains, dy, causal, acc);
        for (parent, grad) in ops.parents.into_iter().zip([dv, d_o, dgi, dgs, dgc]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The shaped mix summed with another branch: parents `v`, `o`, the three
/// gains, `b`, and the gains of the mix and of `b`.
#[derive(Debug)]
struct MixSum;

impl<B: Kernels> Backward<B, 8> for MixSum {
    type State = (MixArgs<FloatTensor<B>>, MixAddend<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 8>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (m, add) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = match &ops.parents[0] {
            Some(node) => take_grad!(B, grads, node, dy.clone()),
            None => None,
        };
        let g = B::mix_sum_backward(m, add, dy, acc);
        let [dgi, dgs, dgc] = g.dgains;
        for (parent, grad) in ops.parents.into_iter().zip([g.dv, g.d_o, dgi, dgs, dgc, g.db, g.dga, g.dgb]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// A shaped attention through its mix (and a sum with another branch):
/// parents `q`, `k`, `v`, the three gains, then `b`, `ga`, `gb` with an
/// addend, then the query's bias with one (`N` = 6, 7, 9 or 10).
#[derive(Debug)]
struct ShapedAttention;

impl<B: Kernels, const N: usize> Backward<B, N> for ShapedAttention {
    /// The operands, the addend, the attention weights.
    type State = (Shaped<FloatTensor<B>>, Option<MixAddend<FloatTensor<B>>>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, add, p) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = match &ops.parents[2] {
            Some(node) => take_grad!(B, grads, node, dy.clone()),
            None => None,
        };
        let g = B::shaped_attention_backward(a, add, p, dy, acc);
        let [dgi, dgs, dgc] = g.dgains;
        let mut all = vec![g.dq, g.dk, g.dv, dgi, dgs, dgc];
        all.extend(g.addend.into_iter().flatten());
        all.extend(g.dbq);
        for (parent, grad) in ops.parents.into_iter().zip(all) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `x` with its leading dimensions merged: `[rows, last]` (free for the
/// contiguous tensors the layers pass).
fn flat<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let shape = t.shape();
    let last = shape[shape.num_dims() - 1];
    B::float_reshape(t, [shape.num_elements() / last.max(1), last].into())
}

/// `y = act(x · w (+ bias))` for `x: [..., k]` (its leading dimensions
/// merged inside the op, not by a reshape node of the graph: a tensor read
/// by several products or norms is then their direct parent, and each adds
/// its gradient into the others', see `take_grad!`), `act` the identity or
/// ReLU: `dz = dy (⊙ (y > 0))`, `dx = dz · wᵀ`, `dw = xᵀ · dz`,
/// `dbias = Σ_rows dz`. With `transposed`, the parent is `w`'s transpose
/// `[n, k]` (a tied LM head's embedding table), whose gradient is `dzᵀ ·
/// x`. The gradient of `w` is added into one from elsewhere too.
#[derive(Debug)]
struct Linear;

impl<B: Kernels, const N: usize> Backward<B, N> for Linear {
    /// `x` flat (for `dw`), `w` as the parent is (for `dx`), `x`'s shape,
    /// a ReLU's mask (see [`Kernels::dense_relu`]), and whether the parent
    /// is `wᵀ`.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, Shape, Option<FloatTensor<B>>, bool);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, shape, relu, transposed) = ops.state;
        let dy = flat::<B>(grads.consume::<B>(&ops.node));
        let mut parents = ops.parents.into_iter();
        let (nx, nw, nb) = (parents.next().flatten(), parents.next().flatten(), parents.next().flatten());
        let (dz, dbias) = match (relu, nb.is_some()) {
            (Some(y), true) => {
                let (dz, db) = B::relu_grad_bias(flat::<B>(y), dy);
                (dz, Some(db))
            }
            (Some(y), false) => (B::relu_grad(flat::<B>(y), dy), None),
            (None, true) => (dy.clone(), Some(B::column_sums(dy))),
            (None, false) => (dy, None),
        };
        if let (Some(node), Some(db)) = (nb, dbias) {
            grads.register::<B>(node.id, db);
        }
        if let Some(node) = nw {
            let x = x.expect("x is kept when w is tracked");
            let (a, b) = match transposed {
                true => (B::float_transpose(dz.clone()), x),
                false => (B::float_transpose(x), dz.clone()),
            };
            let dw = product_into!(B, grads, node, a, b);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = nx {
            let w = w.expect("w is kept when x is tracked");
            let w = if transposed { w } else { B::float_transpose(w) };
            let dx = product_into!(B, grads, node, dz, w);
            grads.register::<B>(node.id, B::float_reshape(dx, shape));
        }
    }
}

/// A ReLU MLP `y = relu(x · w1 (+ b1)) · w2 (+ b2)`: parents `x`, `w1`,
/// `w2`, then `b1`, `b2` where the MLP has them (`N` = 3 to 5). With `h`
/// the hidden output and `m` its ReLU's mask: `dw2 = hᵀ · dy`, `db2 =
/// Σ_rows dy`, `dz = m ⊙ (dy · w2ᵀ)` (one kernel, which masks as it
/// forms the product), `db1 = Σ_rows dz`, `dw1 = xᵀ · dz`, `dx = dz ·
/// w1ᵀ`; the gradients of `x` and the weights added into ones from
/// elsewhere.
#[derive(Debug)]
struct ReluMlp;

impl<B: Kernels, const N: usize> Backward<B, N> for ReluMlp {
    /// `x` flat, `w1`, the mask, `h` flat, `w2`, `x`'s shape, and whether
    /// there are `b1` and `b2`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Shape, [bool; 2]);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w1, mask, h, w2, shape, [has_b1, has_b2]) = ops.state;
        let dy = flat::<B>(grads.consume::<B>(&ops.node));
        let mut parents = ops.parents.into_iter();
        let [nx, nw1, nw2] = [0; 3].map(|_| parents.next().flatten());
        let nb1 = if has_b1 { parents.next().flatten() } else { None };
        let nb2 = if has_b2 { parents.next().flatten() } else { None };
        if let Some(node) = nb2 {
            grads.register::<B>(node.id, B::column_sums(dy.clone()));
        }
        if let Some(node) = nw2 {
            let dw = product_into!(B, grads, node, B::float_transpose(h), dy.clone());
            grads.register::<B>(node.id, dw);
        }
        if nx.is_none() && nw1.is_none() && nb1.is_none() {
            return;
        }
        let (dz, db1) = B::masked_product(dy, w2, mask, nb1.is_some());
        if let (Some(node), Some(db)) = (nb1, db1) {
            grads.register::<B>(node.id, db);
        }
        if let Some(node) = nw1 {
            let dw = product_into!(B, grads, node, B::float_transpose(x), dz.clone());
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = nx {
            let dx = product_into!(B, grads, node, dz, B::float_transpose(w1));
            grads.register::<B>(node.id, B::float_reshape(dx, shape));
        }
    }
}

/// The embedding: parents the table (and the positions, `N = 2`).
#[derive(Debug)]
struct Embed;

impl<B: Kernels, const N: usize> Backward<B, N> for Embed {
    /// The tokens, the vocabulary, the number of positions.
    type State = (IntTensor<B>, usize, Option<usize>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (tokens, vocab, t) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let acc = match &ops.parents[0] {
            Some(node) => take_grad!(B, grads, node, dy.clone()),
            None => None,
        };
        let (dtable, dpos) = B::embed_backward(dy, tokens, vocab, t, acc);
        let mut parents = ops.parents.into_iter();
        if let Some(Some(node)) = parents.next() {
            grads.register::<B>(node.id, dtable);
        }
        if let (Some(Some(node)), Some(dpos)) = (parents.next(), dpos) {
            grads.register::<B>(node.id, dpos);
        }
    }
}

/// Softmax attention `o = p · v`, `p = softmax(scale · (q + bq) · kᵀ)`:
/// `dv = pᵀ · g`, `dp = g · vᵀ`, `ds = scale · p ⊙ (dp − Σ p ⊙ dp)`,
/// `dq = ds · k`, `dk = dsᵀ · (q + bq)`, `dbq = Σ dq`; parents `q`, `k`,
/// `v` (and `bq`, `N` = 3 or 4). The weights `p` are kept from the forward.
/// `v` and `o` are `[batch, tokens, heads · head_dim]` (heads split and
/// merged inside the op), so that `v`'s tensor is the node's direct parent
/// and `dv` is added into its gradient from elsewhere (see `take_grad!`).
#[derive(Debug)]
struct Attention;

impl<B: Kernels, const N: usize> Backward<B, N> for Attention {
    /// `q`, `k`, `v` (split into heads), the query's bias, the weights,
    /// the scale.
    type State = ([FloatTensor<B>; 3], Option<FloatTensor<B>>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ([q, k, v], bq, p, scale) = ops.state;
        let heads = q.shape()[1];
        let g = grads.consume::<B>(&ops.node);
        let mut parents = ops.parents.into_iter();
        let [nq, nk, nv, nb] = [0; 4].map(|_| parents.next().flatten());
        let acc = match &nv {
            Some(node) => take_grad!(B, grads, node, g.clone()),
            None => None,
        };
        let wants = [nq.is_some(), nk.is_some(), nv.is_some()];
        let g4 = split_heads::<B>(g, heads);
        let bq = bq.filter(|_| nb.is_some());
        let [dq, dk, dv, dbq] = B::attention_backward([q, k, v], bq, p, g4, (scale, acc), wants);
        let dv = dv.map(merge_heads::<B>);
        for (node, grad) in [(nq, dq), (nk, dk), (nv, dv), (nb, dbq)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `[batch, tokens, heads · d]` → `[batch, heads, tokens, d]` (a view of a
/// contiguous tensor).
pub(super) fn split_heads<B: Backend>(x: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let s = x.shape();
    let (b, t, inner) = (s[0], s[1], s[2]);
    B::float_swap_dims(B::float_reshape(x, [b, t, heads, inner / heads.max(1)].into()), 1, 2)
}

/// `[batch, heads, tokens, d]` → `[batch, tokens, heads · d]` (a view when
/// stored token-major, as [`Kernels::matmul_token_major`] stores it).
pub(super) fn merge_heads<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = x.shape();
    let (b, h, t, d) = (s[0], s[1], s[2], s[3]);
    B::float_reshape(B::float_swap_dims(x, 1, 2), [b, t, h * d].into())
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

/// The running mean over tokens.
#[derive(Debug)]
struct CausalMean;

impl<B: Kernels> Backward<B, 1> for CausalMean {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, B::causal_mean_backward);
    }
}

/// The mean cross-entropy, its gradient computed in the forward pass (while
/// each row of logits is in cache): the backward only scales it by the
/// upstream gradient (nothing when that is 1, as for a training loss).
#[derive(Debug)]
struct NllMean;

impl<B: Kernels> Backward<B, 1> for NllMean {
    /// `(softmax(logits) − onehot) / n`.
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
        let acc = match &ops.parents[0] {
            Some(node) => take_grad!(B, grads, node, dy.clone()).map(flat::<B>),
            None => None,
        };
        let (dx, dscale, dbias) = B::norm_backward(flat::<B>(x), scale, rstd, dy, centred, acc);
        let dx = B::float_reshape(dx, shape);
        for (parent, grad) in ops.parents.into_iter().zip([dx, dscale, dbias]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
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

    fn nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let (nll, lse) = B::cross_entropy(logits.primitive.clone(), targets.clone());
        record!(Nll, [logits.node.clone()], (logits.primitive, lse, targets), nll)
    }

    fn nll_mean(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        if !logits.is_tracked() {
            let loss = B::nll_mean(logits.primitive, targets);
            return <Autodiff<B, C> as AutodiffBackend>::from_inner(loss);
        }
        let (loss, grad) = B::nll_mean_with_grad(logits.primitive, targets);
        record!(NllMean, [logits.node.clone()], grad, loss)
    }

    fn scale_groups(x: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x_tracked, g_tracked) = (x.is_tracked(), g.is_tracked());
        let y = B::scale_groups(x.primitive.clone(), g.primitive.clone());
        let n = g.primitive.shape().num_elements();
        let state = (g_tracked.then_some(x.primitive), x_tracked.then_some(g.primitive), n);
        record!(ScaleGroups, [x.node, g.node], state, y)
    }

    fn causal_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let y = B::causal_mean(x.primitive.clone());
        CausalMean.prepare::<C>([x.node.clone()]).compute_bound().stateless(y)
    }

    fn softmax_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        (scale, causal): (f64, bool),
    ) -> FloatTensor<Self> {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        let v4 = split_heads::<B>(v.primitive, q.primitive.shape()[1]);
        let (qp, kp) = (q.primitive, k.primitive);
        let b = bq.as_ref().map(|b| b.primitive.clone());
        let (o, p) = B::attention_forward(qp.clone(), kp.clone(), v4.clone(), b.clone(), (scale, causal));
        let (state, y) = (([qp, kp, v4], b, p, scale), merge_heads::<B>(o));
        match bq {
            Some(bq) => {
                let [q, k, v] = nodes;
                record!(Attention, [q, k, v, bq.node], state, y)
            }
            None => record!(Attention, nodes, state, y),
        }
    }

    fn embed(
        table: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        positions: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let vocab = table.primitive.shape()[0];
        let t = positions.as_ref().map(|p| p.primitive.shape()[0]);
        let y = B::embed(table.primitive, tokens.clone(), positions.as_ref().map(|p| p.primitive.clone()));
        let state = (tokens, vocab, t);
        match positions {
            Some(p) => record!(Embed, [table.node, p.node], state, y),
            None => record!(Embed, [table.node], state, y),
        }
    }

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

    fn mix(
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        gains: [FloatTensor<Self>; 3],
        causal: bool,
    ) -> FloatTensor<Self> {
        let [gi, gs, gc] = gains;
        let nodes = [v.node.clone(), o.node.clone(), gi.node.clone(), gs.node.clone(), gc.node.clone()];
        let inner = [gi.primitive, gs.primitive, gc.primitive];
        let y = B::mix(v.primitive.clone(), o.primitive.clone(), inner.clone(), causal);
        record!(Mix, nodes, (v.primitive, o.primitive, inner, causal), y)
    }

    fn mix_sum(m: MixArgs<FloatTensor<Self>>, add: MixAddend<FloatTensor<Self>>) -> FloatTensor<Self> {
        let [gi, gs, gc] = m.gains;
        let nodes = [&m.v, &m.o, &gi, &gs, &gc, &add.b, &add.ga, &add.gb].map(|t| t.node.clone());
        let inner = MixArgs {
            v: m.v.primitive,
            o: m.o.primitive,
            gains: [gi.primitive, gs.primitive, gc.primitive],
            causal: m.causal,
        };
        let addend = MixAddend { b: add.b.primitive, ga: add.ga.primitive, gb: add.gb.primitive };
        let y = B::mix_sum(inner.clone(), addend.clone());
        record!(MixSum, nodes, (inner, addend), y)
    }

    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        let shape = x.primitive.shape();
        let (xp, wp, bp) = (x.primitive.clone(), w.primitive.clone(), bias.as_ref().map(|b| b.primitive.clone()));
        let (y, mask) = match relu {
            true => {
                let (y, mask) = B::dense_relu(xp, wp, bp);
                (y, Some(mask))
            }
            false => (B::dense(xp, wp, bp, false), None),
        };
        let state = (
            w_tracked.then(|| flat::<B>(x.primitive.clone())),
            x_tracked.then(|| w.primitive.clone()),
            shape,
            mask,
            false,
        );
        match bias {
            Some(b) => record!(Linear, [x.node, w.node, b.node], state, y),
            None => record!(Linear, [x.node, w.node], state, y),
        }
    }

    fn shaped_attention(a: Shaped<FloatTensor<Self>>, add: Option<MixAddend<FloatTensor<Self>>>) -> FloatTensor<Self> {
        let [gi, gs, gc] = a.gains;
        let [q, k, v, gi_n, gs_n, gc_n] = [&a.q, &a.k, &a.v, &gi, &gs, &gc].map(|t| t.node.clone());
        let bias_node = a.bq.as_ref().map(|b| b.node.clone());
        let inner = Shaped {
            q: a.q.primitive,
            k: a.k.primitive,
            v: a.v.primitive,
            gains: [gi.primitive, gs.primitive, gc.primitive],
            scale: a.scale,
            causal: a.causal,
            bq: a.bq.map(|t| t.primitive),
        };
        let (extra, addend) = match add {
            Some(m) => {
                let extra = [&m.b, &m.ga, &m.gb].map(|t| t.node.clone());
                (Some(extra), Some(MixAddend { b: m.b.primitive, ga: m.ga.primitive, gb: m.gb.primitive }))
            }
            None => (None, None),
        };
        let (y, p) = B::shaped_attention_forward(inner.clone(), addend.clone());
        let state = (inner, addend, p);
        let n = ShapedAttention;
        match (extra, bias_node) {
            (None, None) => record!(n, [q, k, v, gi_n, gs_n, gc_n], state, y),
            (None, Some(bq)) => record!(n, [q, k, v, gi_n, gs_n, gc_n, bq], state, y),
            (Some([b, ga, gb]), None) => record!(n, [q, k, v, gi_n, gs_n, gc_n, b, ga, gb], state, y),
            (Some([b, ga, gb]), Some(bq)) => record!(n, [q, k, v, gi_n, gs_n, gc_n, b, ga, gb, bq], state, y),
        }
    }

    fn relu_mlp(x: FloatTensor<Self>, up: Projection<Self>, down: Projection<Self>) -> FloatTensor<Self> {
        let ((w1, b1), (w2, b2)) = (up, down);
        let shape = x.primitive.shape();
        let prim = |b: &Option<FloatTensor<Self>>| b.as_ref().map(|b| b.primitive.clone());
        let (h, mask) = B::dense_relu(x.primitive.clone(), w1.primitive.clone(), prim(&b1));
        let y = B::dense(h.clone(), w2.primitive.clone(), prim(&b2), false);
        let flags = [b1.is_some(), b2.is_some()];
        let state = (flat::<B>(x.primitive), w1.primitive, mask, flat::<B>(h), w2.primitive, shape, flags);
        let (n, [x, w1, w2]) = (ReluMlp, [x.node, w1.node, w2.node]);
        match (b1, b2) {
            (None, None) => record!(n, [x, w1, w2], state, y),
            (Some(b), None) | (None, Some(b)) => record!(n, [x, w1, w2, b.node], state, y),
            (Some(b1), Some(b2)) => record!(n, [x, w1, w2, b1.node, b2.node], state, y),
        }
    }

    fn dense_transposed(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        let shape = x.primitive.shape();
        let y = B::dense_transposed(x.primitive.clone(), w.primitive.clone());
        let state = (
            w_tracked.then(|| flat::<B>(x.primitive.clone())),
            x_tracked.then(|| w.primitive.clone()),
            shape,
            None,
            true,
        );
        record!(Linear, [x.node, w.node], state, y)
    }

    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
        let y = B::matmul(a.primitive.clone(), b.primitive.clone());
        let state = (b_tracked.then_some(a.primitive), a_tracked.then_some(b.primitive));
        record!(Matmul, [a.node, b.node], state, y)
    }
}
