//! The dense family against burn's own ops, and the CPU kernels against
//! the reference maths.

use burn::tensor::ops::{ActivationOps, FloatTensorOps};
use burn::tensor::{Distribution, Tensor, Tolerance};

use super::{reference, DenseOps, ReluMask};
use crate::kernels::tensor::{merge_heads, split_heads};
use crate::kernels::testing::*;
use crate::kernels::*;

/// The kernel and burn's `matmul` agree on value and both gradients,
/// for the leaves `a`, `b` seen through `view` (contiguous or strided).
fn same_as_burn<const D: usize>(a: Tensor<Ad, D>, b: Tensor<Ad, D>, view: fn(Tensor<Ad, D>, bool) -> Tensor<Ad, D>) {
    let ours = matmul(view(a.clone(), false), view(b.clone(), true));
    let theirs = view(a.clone(), false).matmul(view(b.clone(), true));
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
    // A weighting that is not symmetric, so that a transposed gradient
    // would show.
    let w = Tensor::<Ad, D>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
    let g1 = (ours * w.clone()).sum().backward();
    let g2 = (theirs * w).sum().backward();
    let tol = Tolerance::absolute(1e-3);
    for x in [&a, &b] {
        let (ours, theirs) = (x.grad(&g1).expect("gradient"), x.grad(&g2).expect("gradient"));
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), tol);
    }
}

#[test]
fn matmul_matches_burn_on_contiguous_and_strided_operands() {
    same_as_burn(random([37, 19]), random([19, 23]), |x, _| x);
    // Transposed views: column-major operands.
    same_as_burn(random([19, 37]), random([23, 19]), |x, _| x.transpose());
    // Batched, as attention uses it: [b, t, h, d] seen as [b, h, t, d]
    // (and the keys as [b, h, d, t]).
    same_as_burn(random([2, 5, 3, 4]), random([2, 5, 3, 4]), |x, key| {
        let x = x.swap_dims(1, 2);
        if key {
            x.swap_dims(2, 3)
        } else {
            x
        }
    });
    // Large enough to run on several threads.
    same_as_burn(random([256, 200]), random([200, 300]), |x, _| x);
}

/// A layer's product, bias and ReLU (bias added in the ReLU's pass,
/// its gradient summed in the ReLU's backward pass) is burn's
/// `relu(x · w + bias)`: value and the gradients of all three, with a
/// zero row where ReLU is flat.
#[test]
fn dense_with_bias_and_relu_matches_burn() {
    // 210 rows (blocks of 64 and a rest), 40 columns (a mask word and
    // part of one); with a bias and without.
    for with_bias in [true, false] {
        let (x, w, bias) = (random([3, 70, 9]), random([9, 40]), random([40]));
        let x = (x * Tensor::<Ad, 3>::ones([3, 70, 9], &Default::default()).slice_fill([1..2, 4..5, 0..9], 0.0))
            .detach()
            .require_grad();
        let b = with_bias.then(|| bias.clone());
        let ours = linear(x.clone(), w.clone(), b, true);
        let product = x.clone().matmul(w.clone().unsqueeze());
        let theirs = match with_bias {
            true => burn::tensor::activation::relu(product + bias.clone().unsqueeze()),
            false => burn::tensor::activation::relu(product),
        };
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[x], &g1, &g2);
        grads_agree(&[w], &g1, &g2);
        if with_bias {
            grads_agree(&[bias], &g1, &g2);
        }
    }
}

/// The ReLU MLP (one node, the hidden gradient masked in the product
/// that forms it) is burn's `relu(x · up + b1) · down + b2`: value and
/// every gradient, with biases or without, over rows past a block of
/// 128, `x` also read by a product made after it.
#[test]
fn relu_mlp_matches_burn() {
    for (b1, b2) in [(true, true), (true, false), (false, true), (false, false)] {
        let (x, up, down, w) = (random([3, 50, 9]), random([9, 40]), random([40, 7]), random([9, 7]));
        let (bu, bd) = (random([40]), random([7]));
        let ours = relu_mlp(x.clone(), (up.clone(), b1.then(|| bu.clone())), (down.clone(), b2.then(|| bd.clone())))
            + linear(x.clone(), w.clone(), None, false);
        let mut h = x.clone().matmul(up.clone().unsqueeze());
        if b1 {
            h = h + bu.clone().unsqueeze();
        }
        let mut theirs = burn::tensor::activation::relu(h).matmul(down.clone().unsqueeze());
        if b2 {
            theirs = theirs + bd.clone().unsqueeze();
        }
        let theirs = theirs + x.clone().matmul(w.clone().unsqueeze());
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[x], &g1, &g2);
        grads_agree(&[up, down, w], &g1, &g2);
        let biases: Vec<_> = [(b1, bu), (b2, bd)].into_iter().filter(|(on, _)| *on).map(|(_, b)| b).collect();
        grads_agree(&biases, &g1, &g2);
    }
}

/// A tensor read by several kernels gets the sum of their gradients,
/// which the kernels add into one another (`matmul_add`, the norm's
/// `acc`) instead of `Gradients::register` adding them.
#[test]
fn gradients_added_into_by_the_kernels_match_burn() {
    let (x, w1, w2, s) = (random([12, 8]), random([8, 5]), random([8, 5]), random([8]));
    let n = normalise(x.clone(), s.clone(), None, 1e-5, false);
    let ours = matmul(x.clone(), w1.clone())
        + linear_relu(x.clone(), w2.clone())
        + matmul(n, w1.clone())
        + linear_transposed(x.clone(), w1.clone().transpose());
    let r = (x.clone().square().mean_dim(1) + 1e-5).sqrt();
    let n = x.clone() / r * s.clone().unsqueeze();
    let theirs = x.clone().matmul(w1.clone())
        + burn::tensor::activation::relu(x.clone().matmul(w2.clone()))
        + n.matmul(w1.clone())
        + x.clone().matmul(w1.clone());
    same_gradients(&[x, w1, w2], ours, theirs);
}

/// A tied LM head (`h · Eᵀ` with `E` the product's parent) over the
/// embedding of the same table: `E`'s gradient from both, added into
/// one another, is burn's.
#[test]
fn a_tied_head_has_burns_gradients() {
    let e = random([9, 8]);
    let tokens = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([3, 0, 8, 5, 5, 1], &Default::default());
    let ours = linear_transposed(embed(e.clone(), tokens.clone(), None), e.clone());
    let theirs = e.clone().select(0, tokens).matmul(e.clone().transpose());
    same_gradients(&[e], ours, theirs);
}

/// A linear map with a bias is burn's `matmul` plus the bias, value and
/// gradients of all three.
#[test]
fn a_linear_map_with_a_bias_matches_burn() {
    let (a, b, bias) = (random([70, 9]), random([9, 21]), random([21]));
    let ours = linear(a.clone(), b.clone(), Some(bias.clone()), false);
    let theirs = a.clone().matmul(b.clone()) + bias.clone().unsqueeze();
    same_gradients(&[a.clone(), b.clone()], ours, theirs);
    let w = Tensor::<Ad, 2>::random([70, 21], Distribution::Normal(0.0, 1.0), &Default::default());
    let g1 = (linear(a.clone(), b.clone(), Some(bias.clone()), false) * w.clone()).sum().backward();
    let g2 = ((a.matmul(b) + bias.clone().unsqueeze()) * w).sum().backward();
    let (ours, theirs) = (bias.grad(&g1).expect("gradient"), bias.grad(&g2).expect("gradient"));
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
}

/// A linear map with ReLU is burn's `relu(a.matmul(b))`, value and
/// gradients of both operands (with a zero row, where ReLU is flat).
#[test]
fn a_linear_map_with_relu_matches_burn() {
    let (a, b) = (random([13, 9]), random([9, 21]));
    let a =
        (a * Tensor::<Ad, 2>::ones([13, 9], &Default::default()).slice_fill([4..5, 0..9], 0.0)).detach().require_grad();
    let ours = linear_relu(a.clone(), b.clone());
    let theirs = burn::tensor::activation::relu(a.clone().matmul(b.clone()));
    same_gradients(&[a, b], ours, theirs);
}

/// The CPU's products added into a tensor, in place or not, and
/// token-major, against the reference.
#[test]
fn cpu_products_added_into_equal_the_reference() {
    // A product added into a tensor (a fresh one: the in-place path).
    let (a, b, c) = (r([9, 24]), r([24, 24]), r([9, 24]));
    let expected = C::float_add(c.clone(), C::float_matmul(a.clone(), b.clone()));
    same(C::matmul_add(c, a.clone(), b.clone()), expected);
    // …and into a view it cannot write (the composition).
    let ct = C::float_transpose(r([24, 9]));
    let expected = C::float_add(ct.clone(), C::float_matmul(a.clone(), b.clone()));
    same(C::matmul_add(ct, a, b), expected);
    // A token-major product added into `[batch, tokens, heads · n]`
    // (a fresh one: in place), merged back to compare.
    let (a4, b4) =
        (C::float_reshape(r([1, 144]), [2, 3, 6, 4].into()), C::float_reshape(r([1, 120]), [2, 3, 4, 5].into()));
    let c3 = C::float_reshape(r([1, 180]), [2, 6, 15].into());
    let expected = C::float_add(split_heads::<C>(c3.clone(), 3), C::float_matmul(a4.clone(), b4.clone()));
    let merged = |p| C::float_reshape(merge_heads::<C>(p), [12, 15].into());
    same(merged(C::matmul_token_major_add(c3, a4, b4)), merged(expected));
}

/// The CPU's ReLU after a product (with a bias, added in the ReLU's
/// pass), its masks — the output, and bits over rows past a block of 64
/// and columns past a word of 32 — the gradients through them (with the
/// bias's summed in the same pass), and the product masked as it is
/// formed, against the reference; and the reference unpacks the bits
/// into the output's mask.
#[test]
fn cpu_relu_and_its_masks_equal_the_reference() {
    let (x, w, dy) = (r([70, 24]), r([24, 40]), r([70, 40]));
    let bias = C::float_reshape(r([1, 40]), [40].into());
    for b in [None, Some(bias)] {
        let (y, mask) = C::dense_relu(x.clone(), w.clone(), b.clone());
        assert!(matches!(mask, ReluMask::Bits { cols: 40, .. }), "flex keeps bits");
        same(y.clone(), reference::dense::<C>(x.clone(), w.clone(), b.clone(), true));
        let output = ReluMask::Output(y.clone());
        let dz = C::relu_backward(y.clone(), dy.clone());
        for m in [mask.clone(), output.clone()] {
            same(C::relu_grad(m.clone(), dy.clone()), dz.clone());
            let (dz2, db) = C::relu_grad_bias(m, dy.clone());
            same(dz2, dz.clone());
            same1(db, reference::column_sums::<C>(dz.clone()));
        }
        same(reference::relu_grad::<C>(mask.clone(), dy.clone()), dz.clone());
        // The product masked as it is formed, against the composition.
        let (g7, w7) = (r([70, 7]), r([40, 7]));
        let g = C::float_matmul(g7.clone(), C::float_transpose(w7.clone()));
        let expected = C::relu_backward(y.clone(), g);
        for m in [mask, output] {
            let (dz, db) = C::masked_product(g7.clone(), w7.clone(), m.clone(), true);
            same(dz, expected.clone());
            same1(db.expect("sums"), reference::column_sums::<C>(expected.clone()));
            let (dz, db) = C::masked_product(g7.clone(), w7.clone(), m, false);
            same(dz, expected.clone());
            assert!(db.is_none());
        }
    }
}

/// `relu(a · b)` through the layers' call.
fn linear_relu(a: Tensor<Ad, 2>, b: Tensor<Ad, 2>) -> Tensor<Ad, 2> {
    linear(a, b, None, true)
}

/// A gated unit's `act(g) ⊙ h` and the activation alone are burn's
/// composition, value and gradients, for every activation the family has
/// the derivative of (on a transposed view too); the CPU kernels equal the
/// reference.
#[test]
fn gated_units_match_their_composition() {
    use super::{gated, Gate};
    use burn::tensor::activation as act;
    let gates = [Gate::Relu, Gate::LeakyRelu(0.1), Gate::Silu, Gate::Gelu, Gate::GeluTanh, Gate::Tanh, Gate::Identity];
    for gate in gates {
        let (g, h) = (random::<3>([2, 9, 12]), random::<3>([2, 9, 12]));
        let composed = |g: Tensor<Ad, 3>| match gate {
            Gate::Relu => act::relu(g),
            Gate::LeakyRelu(s) => act::leaky_relu(g, s),
            Gate::Silu => act::silu(g),
            Gate::Gelu => act::gelu(g),
            Gate::GeluTanh => act::gelu_approximate(g),
            Gate::Tanh => act::tanh(g),
            Gate::Identity => g,
        };
        let ours = gated(g.clone(), h.clone(), gate);
        let theirs = composed(g.clone()) * h.clone();
        same_gradients(&[g.clone(), h.clone()], ours, theirs);
        // `g` read through a transposed view.
        let (gt, h2) = (random::<3>([2, 12, 9]), random::<3>([2, 9, 12]));
        let ours = gated(gt.clone().swap_dims(1, 2), h2.clone(), gate);
        let theirs = composed(gt.clone().swap_dims(1, 2)) * h2.clone();
        same_gradients(&[gt, h2], ours, theirs);
        // The CPU kernel against the reference, both passes.
        let (g, h, dz) = (r([7, 33]), r([7, 33]), r([7, 33]));
        same(C::gated(g.clone(), h.clone(), gate), reference::gated::<C>(g.clone(), h.clone(), gate));
        let (dg, dh) = C::gated_backward(g.clone(), h.clone(), dz.clone(), gate);
        let (eg, eh) = reference::gated_backward::<C>(g.clone(), h, dz.clone(), gate);
        same(dg, eg);
        same(dh, eh);
        // The activation alone.
        let x = random::<3>([3, 5, 8]);
        same_gradients(std::slice::from_ref(&x), super::activate(x.clone(), gate), composed(x.clone()));
        same(C::activate(g.clone(), gate), reference::activate::<C>(g.clone(), gate));
        same(C::activate_backward(g.clone(), dz.clone(), gate), reference::activate_backward::<C>(g, dz, gate));
    }
}
