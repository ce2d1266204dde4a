//! The dense family on `Autodiff<B>`: a product, a layer's linear map and
//! the ReLU MLP, each one graph node whose backward adds into gradients
//! from elsewhere.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};

use super::{DenseOps, Gate, Projection, ReluMask};
use crate::kernels::graph::{record, register_all, take_grad};
use crate::kernels::tensor::flat;
use crate::kernels::Kernels;

/// The 2-D product `a · b` for the gradient of the parent `node` (a
/// layer's input or weight): added by the product into the gradient
/// registered for it so far (its leading dimensions merged), if any (see
/// `take_grad!`).
macro_rules! product_into {
    ($B:ty, $grads:expr, $node:expr, $a:expr, $b:expr) => {{
        let (a, b) = ($a, $b);
        match take_grad!($B, $grads, Some(&$node), b.clone()) {
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
            let da = match take_grad!(B, grads, Some(&node), g.clone()) {
                Some(c) => B::matmul_add(c, g, B::float_transpose(b)),
                None => B::matmul(g, B::float_transpose(b)),
            };
            grads.register::<B>(node.id, da);
        }
    }
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
    /// a ReLU's mask (see [`DenseOps::dense_relu`]), and whether the
    /// parent is `wᵀ`.
    type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, Shape, Option<ReluMask<B>>, bool);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, shape, relu, transposed) = ops.state;
        let dy = flat::<B>(grads.consume::<B>(&ops.node));
        let mut parents = ops.parents.into_iter();
        let (nx, nw, nb) = (parents.next().flatten(), parents.next().flatten(), parents.next().flatten());
        let (dz, dbias) = match (relu, nb.is_some()) {
            (Some(mask), true) => {
                let (dz, db) = B::relu_grad_bias(mask.flat(), dy);
                (dz, Some(db))
            }
            (Some(mask), false) => (B::relu_grad(mask.flat(), dy), None),
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
    type State = (FloatTensor<B>, FloatTensor<B>, ReluMask<B>, FloatTensor<B>, FloatTensor<B>, Shape, [bool; 2]);

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
        let (dz, db1) = B::masked_product(dy, w2, mask.flat(), nb1.is_some());
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

/// `z = act(g) ⊙ h`: `dg = dz ⊙ h ⊙ act'(g)`, `dh = dz ⊙ act(g)`, in one
/// pass of the backend's kernel.
#[derive(Debug)]
struct Gated;

impl<B: Kernels> Backward<B, 2> for Gated {
    /// `g`, `h`, the activation.
    type State = (FloatTensor<B>, FloatTensor<B>, Gate);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (g, h, gate) = ops.state;
        let dz = grads.consume::<B>(&ops.node);
        let (dg, dh) = B::gated_backward(g, h, dz, gate);
        register_all!(B, grads, ops.parents, [dg, dh]);
    }
}

/// `y = act(x)`: `dx = dy ⊙ act'(x)`.
#[derive(Debug)]
struct Activate;

impl<B: Kernels> Backward<B, 1> for Activate {
    /// `x`, the activation.
    type State = (FloatTensor<B>, Gate);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gate) = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        register_all!(B, grads, ops.parents, [B::activate_backward(x, dy, gate)]);
    }
}

impl<B: Kernels, C: CheckpointStrategy> DenseOps for Autodiff<B, C> {
    fn activate(x: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        let y = B::activate(x.primitive.clone(), gate);
        record!(Activate, [x.node], (x.primitive, gate), y)
    }

    fn gated(g: FloatTensor<Self>, h: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        let z = B::gated(g.primitive.clone(), h.primitive.clone(), gate);
        record!(Gated, [g.node, h.node], (g.primitive, h.primitive, gate), z)
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
