//! The kernels against burn's own operations: values and gradients.

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor, Tolerance};

use crate::backend::Cpu;

type Ad = Autodiff<Cpu>;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Ad, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
}

/// The kernel and burn's `matmul` agree on value and both gradients,
/// for the leaves `a`, `b` seen through `view` (contiguous or strided).
fn same_as_burn<const D: usize>(a: Tensor<Ad, D>, b: Tensor<Ad, D>, view: fn(Tensor<Ad, D>, bool) -> Tensor<Ad, D>) {
    let ours = super::matmul(view(a.clone(), false), view(b.clone(), true));
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

/// The embedding kernel is burn's `select` plus the positions, value and
/// gradients of the table (a token repeated) and of the positions.
#[test]
fn embed_matches_select_and_add() {
    let device = Default::default();
    let (table, pos) = (random([11, 6]), random([4, 6]));
    let tokens = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([3, 0, 10, 3, 7, 7, 2, 3], &device);
    let ours = super::embed(table.clone(), tokens.clone(), Some(pos.clone()));
    let theirs =
        (table.clone().select(0, tokens.clone()).reshape([2, 4, 6]) + pos.clone().unsqueeze::<3>()).reshape([8, 6]);
    same_gradients(&[table.clone(), pos], ours, theirs);
    let ours = super::embed(table.clone(), tokens.clone(), None);
    same_gradients(std::slice::from_ref(&table), ours, table.clone().select(0, tokens));
}

/// The gained sum of two tensors is its composition, value and the
/// gradients of both tensors and both gains (per head and single).
#[test]
fn scaled_sum_matches_its_composition() {
    let (a, b, ga, gb) = (random::<3>([2, 70, 12]), random::<3>([2, 70, 12]), random::<1>([4]), random::<1>([1]));
    let ours = super::scaled_sum(a.clone(), b.clone(), ga.clone(), gb.clone());
    let theirs = (a.clone().reshape([2, 70, 4, 3]) * ga.clone().reshape([1, 1, 4, 1])).reshape([2, 70, 12])
        + b.clone() * gb.clone().reshape([1, 1, 1]);
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
    let (g1, g2) = backward_both(ours, theirs);
    grads_agree(&[a, b], &g1, &g2);
    grads_agree(&[ga, gb], &g1, &g2);
}

/// The fused shaped mix is its composition from burn's ops, causal or
/// not, with per-head, single and negated gains: value and the
/// gradients of v, o and all three gains.
#[test]
fn mix_matches_its_composition() {
    for causal in [true, false] {
        let (v, o) = (random([2, 5, 12]), random([2, 5, 12]));
        let (gi, gs, gc) = (random([3]), random([1]), random([3]));
        let centre = |v: Tensor<Ad, 3>| {
            if causal {
                let counts = Tensor::<Ad, 1, burn::tensor::Int>::arange(1..6, &Default::default()).float();
                v.cumsum(1) / counts.reshape([1, 5, 1])
            } else {
                v.mean_dim(1).expand([2, 5, 12])
            }
        };
        let heads = |x: Tensor<Ad, 3>, g: Tensor<Ad, 1>| {
            let n = g.dims()[0];
            (x.reshape([2, 5, n, 12 / n]) * g.reshape([1, 1, n, 1])).reshape([2, 5, 12])
        };
        let theirs =
            heads(v.clone(), gi.clone()) + heads(o.clone(), gs.clone()) + heads(centre(v.clone()), gc.clone().neg());
        let ours = super::mix(v.clone(), o.clone(), [gi.clone(), gs.clone(), gc.clone().neg()], causal);
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        // `v` also read by a product made after the mix: its gradient
        // is registered first, and the mix's `dv` is added into it.
        let w = random([12, 12]);
        let ours = ours + super::linear(v.clone(), w.clone(), None, false);
        let theirs = theirs + v.clone().matmul(w.clone().unsqueeze());
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[v, o], &g1, &g2);
        grads_agree(&[gi, gs, gc], &g1, &g2);
        grads_agree(&[w], &g1, &g2);
    }
}

/// The mix summed with another branch in one kernel is the mix, then
/// the gained sum: value and the gradients of all eight operands
/// (per-head, single and per-column-group gains; `v` also read by a
/// later product, and alone).
#[test]
fn mix_sum_matches_the_mix_then_the_sum() {
    for causal in [true, false] {
        for shared in [true, false] {
            let (v, o, b) = (random([2, 5, 12]), random([2, 5, 12]), random([2, 5, 12]));
            let gains = [random([3]), random([1]), random([3])];
            let (ga, gb) = (random([1]), random([3]));
            let w = random([12, 12]);
            let ours = super::mix_sum(v.clone(), o.clone(), gains.clone(), causal, b.clone(), ga.clone(), gb.clone());
            let mixed = super::mix(v.clone(), o.clone(), gains.clone(), causal);
            let theirs = super::scaled_sum(mixed, b.clone(), ga.clone(), gb.clone());
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
            let (ours, theirs) = if shared {
                // `v` also read by a product (its gradient added into), or not.
                let extra = |v: Tensor<Ad, 3>| match shared {
                    true => super::linear(v, w.clone(), None, false),
                    false => v.zeros_like(),
                };
                (ours + extra(v.clone()), theirs + extra(v.clone()))
            } else {
                (ours, theirs)
            };
            let (g1, g2) = backward_both(ours, theirs);
            grads_agree(&[v, o, b], &g1, &g2);
            grads_agree(&gains, &g1, &g2);
            grads_agree(&[ga, gb], &g1, &g2);
        }
    }
}

/// The shaped attention through its mix in one kernel (and summed with
/// another branch) is the attention, then the mix (then the gained
/// sum): value and every gradient, causal or not, `v` also read by a
/// product made after it, with the query's bias or without (and, with
/// it, theirs with a key bias, which changes nothing).
#[test]
fn shaped_attention_matches_attention_then_mix() {
    for i in 0..16 {
        let (causal, addend, shared, biased) = (i & 1 == 0, i & 2 == 0, i & 4 == 0, i & 8 == 0);
        let (q, k, v) = (random([2, 3, 5, 4]), random([2, 3, 5, 4]), random([2, 5, 12]));
        let gains = [random([3]), random([1]), random([3])];
        let (b, ga, gb, w) = (random([2, 5, 12]), random([1]), random([3]), random([12, 12]));
        let (bq, bk) = (random([12]), random([12]));
        let add = addend.then(|| (b.clone(), ga.clone(), gb.clone()));
        // `v` also read by a product (its gradient added into), or not.
        let extra = |v: Tensor<Ad, 3>| match shared {
            true => super::linear(v, w.clone(), None, false),
            false => v.zeros_like(),
        };
        let bias = biased.then(|| bq.clone());
        let ours = super::shaped_attention([q.clone(), k.clone()], bias, v.clone(), gains.clone(), (0.5, causal), add)
            + extra(v.clone());
        let (q1, k1) = match biased {
            true => (q.clone() + bq.clone().reshape([1, 3, 1, 4]), k.clone() + bk.clone().reshape([1, 3, 1, 4])),
            false => (q.clone(), k.clone()),
        };
        let o = super::attention(q1, k1, v.clone(), None, (0.5, causal));
        let mixed = super::mix(v.clone(), o, gains.clone(), causal);
        let theirs = match addend {
            true => super::scaled_sum(mixed, b.clone(), ga.clone(), gb.clone()),
            false => mixed,
        } + extra(v.clone());
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q, k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
        grads_agree(&gains, &g1, &g2);
        if addend {
            grads_agree(&[b], &g1, &g2);
            grads_agree(&[ga, gb], &g1, &g2);
        }
        if biased {
            // The key's bias (theirs only) changes nothing and has a
            // zero gradient.
            grads_agree(&[bq], &g1, &g2);
            let dbk = bk.grad(&g2).expect("burn gradient");
            dbk.to_data().assert_approx_eq::<f32>(&dbk.zeros_like().to_data(), Tolerance::absolute(1e-4));
        }
    }
}

/// The mix alone (its `dv` written fresh) has burn's gradients.
#[test]
fn mix_alone_has_the_composed_gradients() {
    let (v, o) = (random([2, 6, 8]), random([2, 6, 8]));
    let gains = [random([2]), random([2]), random([2])];
    for causal in [true, false] {
        let ours = super::mix(v.clone(), o.clone(), gains.clone(), causal);
        let p = |t: &Tensor<Ad, 3>| t.clone().into_primitive().tensor();
        let theirs = Tensor::<Ad, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(super::composed::mix::<Ad>(
            p(&v),
            p(&o),
            gains.clone().map(|g| g.into_primitive().tensor()),
            causal,
        )));
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[v.clone(), o.clone()], &g1, &g2);
        grads_agree(&gains, &g1, &g2);
    }
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
        let ours = super::linear(x.clone(), w.clone(), b, true);
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
        let ours =
            super::relu_mlp(x.clone(), (up.clone(), b1.then(|| bu.clone())), (down.clone(), b2.then(|| bd.clone())))
                + super::linear(x.clone(), w.clone(), None, false);
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
    let n = super::normalise(x.clone(), s.clone(), None, 1e-5, false);
    let ours = super::matmul(x.clone(), w1.clone())
        + super::matmul_relu(x.clone(), w2.clone())
        + super::matmul(n, w1.clone())
        + super::linear_transposed(x.clone(), w1.clone().transpose());
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
    let ours = super::linear_transposed(super::embed(e.clone(), tokens.clone(), None), e.clone());
    let theirs = e.clone().select(0, tokens).matmul(e.clone().transpose());
    same_gradients(&[e], ours, theirs);
}

/// The product with a bias is burn's `matmul` plus the bias, value and
/// gradients of all three.
#[test]
fn matmul_bias_matches_burn() {
    let (a, b, bias) = (random([70, 9]), random([9, 21]), random([21]));
    let ours = super::matmul_bias(a.clone(), b.clone(), bias.clone());
    let theirs = a.clone().matmul(b.clone()) + bias.clone().unsqueeze();
    same_gradients(&[a.clone(), b.clone()], ours, theirs);
    let w = Tensor::<Ad, 2>::random([70, 21], Distribution::Normal(0.0, 1.0), &Default::default());
    let g1 = (super::matmul_bias(a.clone(), b.clone(), bias.clone()) * w.clone()).sum().backward();
    let g2 = ((a.matmul(b) + bias.clone().unsqueeze()) * w).sum().backward();
    let (ours, theirs) = (bias.grad(&g1).expect("gradient"), bias.grad(&g2).expect("gradient"));
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
}

/// The fused product and ReLU is burn's `relu(a.matmul(b))`, value and
/// gradients of both operands (with a zero row, where ReLU is flat).
#[test]
fn matmul_relu_matches_burn() {
    let (a, b) = (random([13, 9]), random([9, 21]));
    let a =
        (a * Tensor::<Ad, 2>::ones([13, 9], &Default::default()).slice_fill([4..5, 0..9], 0.0)).detach().require_grad();
    let ours = super::matmul_relu(a.clone(), b.clone());
    let theirs = burn::tensor::activation::relu(a.clone().matmul(b.clone()));
    same_gradients(&[a, b], ours, theirs);
}

/// The attention kernel and burn's attention (its autodiff composition)
/// agree on value and on the gradients of q, k and v, causal or not;
/// and with the query's bias given to the kernel, with burn's on `q +
/// bq` and `k + bk`: the key's bias changes nothing, and its gradient
/// is zero.
#[test]
fn softmax_attention_matches_burn() {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    for causal in [true, false] {
        let (q, k, v) = (random([2, 3, 7, 4]), random([2, 3, 7, 4]), random([2, 7, 12]));
        let (bq, bk) = (random([12]), random([12]));
        let ours = super::attention(q.clone(), k.clone(), v.clone(), Some(bq.clone()), (0.5, causal));
        let options = AttentionModuleOptions { scale: Some(0.5), softcap: None, is_causal: causal };
        let (q1, k1) = (q.clone() + bq.clone().reshape([1, 3, 1, 4]), k.clone() + bk.clone().reshape([1, 3, 1, 4]));
        let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
        let theirs = attention(q1, k1, v4, None, None, options).swap_dims(1, 2).reshape([2, 7, 12]);
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q, k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
        let dbq = (bq.grad(&g1).expect("kernel gradient"), bq.grad(&g2).expect("burn gradient"));
        dbq.0.to_data().assert_approx_eq::<f32>(&dbq.1.to_data(), Tolerance::absolute(1e-3));
        let dbk = bk.grad(&g2).expect("burn gradient");
        dbk.to_data().assert_approx_eq::<f32>(&dbk.zeros_like().to_data(), Tolerance::absolute(1e-4));
    }
    for causal in [true, false] {
        let [q, k] = [0, 1].map(|_| random([2, 3, 7, 4]));
        // Large logits, so that a missing max shift would overflow.
        let q = (q * 30.0).detach().require_grad();
        // `v` (and the output) with the heads merged: `[2, 7, 3 · 4]`;
        // `v` also read by a product made after the attention, so that
        // the attention's `dv` is added into that product's.
        let v = random([2, 7, 12]);
        let w = random([12, 12]);
        let ours = super::attention(q.clone(), k.clone(), v.clone(), None, (0.5, causal))
            + super::linear(v.clone(), w.clone(), None, false);
        let options = AttentionModuleOptions { scale: Some(0.5), softcap: None, is_causal: causal };
        let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
        let theirs = attention(q.clone(), k.clone(), v4, None, None, options).swap_dims(1, 2).reshape([2, 7, 12])
            + v.clone().matmul(w.clone().unsqueeze());
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q.clone(), k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
        // Alone, `dv` is written fresh.
        let (q, k, v) = (random([2, 3, 7, 4]), random([2, 3, 7, 4]), random([2, 7, 12]));
        let ours = super::attention(q.clone(), k.clone(), v.clone(), None, (0.5, causal));
        let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
        let theirs = attention(q.clone(), k.clone(), v4, None, None, options).swap_dims(1, 2).reshape([2, 7, 12]);
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q, k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
    }
}

/// The gradients of `ours` and of `theirs` weighted by one random
/// tensor (not symmetric, so that a transposed gradient would show).
fn backward_both<const D: usize>(
    ours: Tensor<Ad, D>,
    theirs: Tensor<Ad, D>,
) -> (
    <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
) {
    let w = Tensor::<Ad, D>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
    ((ours * w.clone()).sum().backward(), (theirs * w).sum().backward())
}

/// Each leaf has the same gradient in `g1` (the kernels') and `g2`.
fn grads_agree<const L: usize>(
    leaves: &[Tensor<Ad, L>],
    g1: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    g2: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
) {
    for x in leaves {
        let (a, b) = (x.grad(g1).expect("kernel gradient"), x.grad(g2).expect("burn gradient"));
        a.to_data().assert_approx_eq::<f32>(&b.to_data(), Tolerance::absolute(1e-3));
    }
}

/// `ours` (the kernels) and `theirs` (burn's ops), built in that order
/// from the same `leaves`, agree on value and on the leaves' gradients.
fn same_gradients<const L: usize, const D: usize>(
    leaves: &[Tensor<Ad, L>],
    ours: Tensor<Ad, D>,
    theirs: Tensor<Ad, D>,
) {
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
    let (g1, g2) = backward_both(ours, theirs);
    grads_agree(leaves, &g1, &g2);
}

#[test]
fn scale_groups_matches_a_broadcast_product() {
    // Per head: [b, t, h·d] with gains [h] is [b, t, h, d] times [1, 1, h, 1].
    let (x, g) = (random::<3>([2, 5, 12]), random::<1>([3]));
    let theirs = || (x.clone().reshape([2, 5, 3, 4]) * g.clone().reshape([1, 1, 3, 1])).reshape([2, 5, 12]);
    same_gradients(std::slice::from_ref(&x), super::scale_groups(x.clone(), g.clone()), theirs());
    // The gains' gradient (a graph is spent by its backward: build anew).
    let w = Tensor::<Ad, 3>::random([2, 5, 12], Distribution::Normal(0.0, 1.0), &Default::default());
    let g1 = (super::scale_groups(x.clone(), g.clone()) * w.clone()).sum().backward();
    let g2 = (theirs() * w).sum().backward();
    let (ours, theirs) = (g.grad(&g1).expect("gradient"), g.grad(&g2).expect("gradient"));
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
    // One gain for everything, on a strided view.
    let (x, g) = (random::<3>([5, 2, 8]), random::<1>([1]));
    let ours = super::scale_groups(x.clone().swap_dims(0, 1), g.clone());
    let w = Tensor::<Ad, 3>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
    let grads = (ours.clone() * w.clone()).sum().backward();
    let dx = x.grad(&grads).expect("gradient");
    // x ⊙ g, and dx = w ⊙ g, by hand.
    let gain = g.into_scalar();
    ours.to_data().assert_approx_eq::<f32>(&(x.swap_dims(0, 1) * gain).to_data(), Tolerance::absolute(1e-5));
    dx.to_data().assert_approx_eq::<f32>(&(w.inner().swap_dims(0, 1) * gain).to_data(), Tolerance::absolute(1e-5));
}

#[test]
fn causal_mean_is_the_running_mean() {
    let x = random::<3>([2, 6, 5]);
    let counts = Tensor::<Ad, 1, burn::tensor::Int>::arange(1..7, &Default::default()).float().reshape([1, 6, 1]);
    let theirs = x.clone().cumsum(1) / counts;
    same_gradients(std::slice::from_ref(&x), super::causal_mean(x.clone()), theirs);
    // Token 0 is itself; the last token is the mean of all.
    let ours = super::causal_mean(x.clone());
    let first = ours.clone().slice([0..2, 0..1, 0..5]);
    first.to_data().assert_approx_eq::<f32>(&x.clone().slice([0..2, 0..1, 0..5]).to_data(), Tolerance::absolute(1e-6));
    let last = ours.slice([0..2, 5..6, 0..5]);
    last.to_data().assert_approx_eq::<f32>(&x.mean_dim(1).to_data(), Tolerance::absolute(1e-5));
}

#[test]
fn nll_is_the_cross_entropy_of_log_softmax() {
    let device = Default::default();
    let logits = (random::<2>([6, 11]) * 20.0).detach().require_grad();
    let targets = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
    let ours = super::nll(logits.clone(), targets.clone());
    let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
    let theirs = logp.gather(1, targets.reshape([6, 1])).reshape([6]).neg();
    same_gradients(std::slice::from_ref(&logits), ours, theirs);
}

/// The mean cross-entropy with its gradient written in the forward is
/// burn's mean of `−log_softmax` at the targets: value and the logits'
/// gradient, with an upstream gradient of 1 (a training loss: the
/// backward does nothing) and of 3 (scaled); untracked logits give the
/// same value.
#[test]
fn nll_mean_is_the_mean_cross_entropy() {
    let device = Default::default();
    let targets = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
    for factor in [1.0, 3.0] {
        let logits = (random::<2>([6, 11]) * 20.0).detach().require_grad();
        let ours = super::nll_mean(logits.clone(), targets.clone());
        let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
        let theirs = logp.gather(1, targets.clone().reshape([6, 1])).reshape([6]).neg().mean();
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let plain = super::nll_mean(logits.clone().detach(), targets.clone());
        plain.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = ((ours * factor).sum().backward(), (theirs * factor).sum().backward());
        grads_agree(std::slice::from_ref(&logits), &g1, &g2);
    }
}

/// The norm kernel against the norm written out in burn's ops (the
/// formula `layers::norm` used before the kernel), for RMSNorm and
/// LayerNorm, gradients of x, scale and bias included.
#[test]
fn norm_matches_its_formula() {
    // Widths below, at and past the kernels' 32 partial sums.
    for (centred, w) in [false, true].into_iter().flat_map(|c| [(c, 16), (c, 32), (c, 72)]) {
        let (x, scale, bias) = (random::<3>([2, 3, w]), random::<1>([w]), random::<1>([w]));
        let x = (x * 3.0 + 1.0).detach().require_grad();
        let b = centred.then(|| bias.clone());
        let ours = super::normalise(x.clone(), scale.clone(), b, 1e-5, centred);
        let xc = if centred { x.clone() - x.clone().mean_dim(2) } else { x.clone() };
        let rms = (xc.clone().square().mean_dim(2) + 1e-5).sqrt();
        let mut theirs = xc / rms * scale.clone().unsqueeze::<3>();
        if centred {
            theirs = theirs + bias.clone().unsqueeze::<3>();
        }
        same_gradients(std::slice::from_ref(&x), ours, theirs);
        // The parameters' gradients, from graphs built anew.
        let w = Tensor::<Ad, 3>::random([2, 3, w], Distribution::Normal(0.0, 1.0), &Default::default());
        let b = centred.then(|| bias.clone());
        let g1 = (super::normalise(x.clone(), scale.clone(), b, 1e-5, centred) * w.clone()).sum().backward();
        let xc = if centred { x.clone() - x.clone().mean_dim(2) } else { x.clone() };
        let rms = (xc.clone().square().mean_dim(2) + 1e-5).sqrt();
        let mut theirs = xc / rms * scale.clone().unsqueeze::<3>();
        if centred {
            theirs = theirs + bias.clone().unsqueeze::<3>();
        }
        let g2 = (theirs * w).sum().backward();
        let mut params = vec![&scale];
        if centred {
            params.push(&bias);
        }
        for p in params {
            let (ours, theirs) = (p.grad(&g1).expect("kernel gradient"), p.grad(&g2).expect("burn gradient"));
            ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
        }
    }
}

/// Each fused CPU kernel equals its composition from burn's ops (the
/// path of the other backends), forward and backward.
#[cfg(feature = "flex")]
#[test]
fn fused_kernels_equal_their_compositions() {
    use burn::tensor::ops::{ActivationOps, FloatTensorOps};
    use burn::tensor::Int;

    use super::{composed, primitive, tensor, Kernels};
    type C = Cpu;
    let d = Default::default();
    let r = |shape: [usize; 2]| primitive(Tensor::<C, 2>::random(shape, Distribution::Normal(0.0, 2.0), &d));
    let same = |a: burn::tensor::ops::FloatTensor<C>, b: burn::tensor::ops::FloatTensor<C>| {
        tensor::<C, 2>(a).to_data().assert_approx_eq::<f32>(&tensor::<C, 2>(b).to_data(), Tolerance::absolute(1e-4));
    };
    let same1 = |a: burn::tensor::ops::FloatTensor<C>, b: burn::tensor::ops::FloatTensor<C>| {
        tensor::<C, 1>(a).to_data().assert_approx_eq::<f32>(&tensor::<C, 1>(b).to_data(), Tolerance::absolute(1e-3));
    };
    let (x, dy, scale, bias) = (r([9, 24]), r([9, 24]), primitive(Tensor::<C, 1>::ones([24], &d) * 1.5), r([1, 24]));
    let bias = C::float_reshape(bias, [24].into());
    for centred in [false, true] {
        let (y1, s1) = <C as Kernels>::norm(x.clone(), scale.clone(), Some(bias.clone()), 1e-6, centred);
        let (y2, s2) = composed::norm::<C>(x.clone(), scale.clone(), Some(bias.clone()), 1e-6, centred);
        same(y1, y2);
        same1(s1.clone(), s2);
        let (a1, b1, c1) =
            <C as Kernels>::norm_backward(x.clone(), scale.clone(), s1.clone(), dy.clone(), centred, None);
        let (a2, b2, c2) = composed::norm_backward::<C>(x.clone(), scale.clone(), s1.clone(), dy.clone(), centred);
        same(a1.clone(), a2.clone());
        same1(b1, b2);
        same1(c1, c2);
        // Added into a gradient from elsewhere.
        let (a3, _, _) =
            <C as Kernels>::norm_backward(x.clone(), scale.clone(), s1, dy.clone(), centred, Some(x.clone()));
        same(a3, C::float_add(a2, x.clone()));
    }
    let targets = Tensor::<C, 1, Int>::from_ints([3, 0, 23, 5, 5, 1, 2, 9, 17], &d).into_primitive();
    let (n1, l1) = <C as Kernels>::cross_entropy(x.clone(), targets.clone());
    let (n2, l2) = composed::cross_entropy::<C>(x.clone(), targets.clone());
    same1(n1, n2);
    same1(l1.clone(), l2);
    let g = primitive(Tensor::<C, 1>::random([9], Distribution::Normal(0.0, 1.0), &d));
    let d1 = <C as Kernels>::cross_entropy_backward(x.clone(), l1.clone(), targets.clone(), g.clone());
    let d2 = composed::cross_entropy_backward::<C>(x.clone(), l1, targets, g);
    same(d1, d2);
    let x3 = C::float_reshape(x.clone(), [3, 3, 24].into());
    let t3 = |p| tensor::<C, 3>(p).reshape([9, 24]);
    let (m1, m2) = (<C as Kernels>::causal_mean(x3.clone()), composed::causal_mean::<C>(x3.clone()));
    same(primitive(t3(m1)), primitive(t3(m2)));
    let (m1, m2) = (<C as Kernels>::causal_mean_backward(x3.clone()), composed::causal_mean_backward::<C>(x3));
    same(primitive(t3(m1)), primitive(t3(m2)));
    let g4 = primitive(Tensor::<C, 1>::from_floats([0.5, -2.0, 3.0, 1.0], &d));
    same(<C as Kernels>::scale_groups(x.clone(), g4.clone()), composed::scale_groups::<C>(x.clone(), g4));
    same1(
        <C as Kernels>::scale_groups_grad(x.clone(), dy.clone(), 4),
        composed::scale_groups_grad::<C>(x.clone(), dy.clone(), 4),
    );
    // Adam with an L2 term and AdamW's decoupled decay at once.
    let flat9 = |p| C::float_reshape(p, [216].into());
    let (p, g, m) = (flat9(x.clone()), flat9(dy.clone()), flat9(r([9, 24])));
    let v = C::float_abs(flat9(r([9, 24])));
    let k = super::AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        bc1: 0.19,
        bc2: 0.0975,
        grad_scale: 0.5,
        l2: 0.1,
        decay: 0.001,
    };
    let (p1, m1, v1) = <C as Kernels>::adam(p.clone(), g.clone(), m.clone(), v.clone(), k);
    let (p2, m2, v2) = composed::adam::<C>(p, g, m, v, k);
    same1(p1, p2);
    same1(m1, m2);
    same1(v1, v2);
    // The embedding and its gradients.
    let tokens = Tensor::<C, 1, Int>::from_ints([3, 0, 8, 5, 5, 1], &d).into_primitive();
    let pos = C::float_reshape(r([1, 72]), [3, 24].into());
    let e1 = <C as Kernels>::embed(x.clone(), tokens.clone(), Some(pos.clone()));
    same(e1, composed::embed::<C>(x.clone(), tokens.clone(), Some(pos)));
    let dy6 = C::float_reshape(r([6, 24]), [6, 24].into());
    let (t1, p1) = <C as Kernels>::embed_backward(dy6.clone(), tokens.clone(), 9, Some(3), None);
    let (t2, p2) = composed::embed_backward::<C>(dy6.clone(), tokens.clone(), 9, Some(3), None);
    same(t1, t2);
    same(p1.expect("positions"), p2.expect("positions"));
    // Added into the table's gradient from elsewhere.
    let acc = r([9, 24]);
    let (t3, _) = <C as Kernels>::embed_backward(dy6.clone(), tokens.clone(), 9, None, Some(acc.clone()));
    let (t4, _) = composed::embed_backward::<C>(dy6, tokens, 9, None, None);
    same(t3, C::float_add(t4, acc));
    // A product added into a tensor (a fresh one: the in-place path).
    let (a, b, c) = (r([9, 24]), r([24, 24]), r([9, 24]));
    let expected = C::float_add(c.clone(), C::float_matmul(a.clone(), b.clone()));
    same(<C as Kernels>::matmul_add(c, a.clone(), b.clone()), expected);
    // …and into a view it cannot write (the composition).
    let ct = C::float_transpose(r([24, 9]));
    let expected = C::float_add(ct.clone(), C::float_matmul(a.clone(), b.clone()));
    same(<C as Kernels>::matmul_add(ct, a, b), expected);
    // A token-major product added into `[batch, tokens, heads · n]`
    // (a fresh one: in place), merged back to compare.
    let (a4, b4) =
        (C::float_reshape(r([1, 144]), [2, 3, 6, 4].into()), C::float_reshape(r([1, 120]), [2, 3, 4, 5].into()));
    let c3 = C::float_reshape(r([1, 180]), [2, 6, 15].into());
    let expected =
        C::float_add(super::autodiff::split_heads::<C>(c3.clone(), 3), C::float_matmul(a4.clone(), b4.clone()));
    let merged = |p| C::float_reshape(super::autodiff::merge_heads::<C>(p), [12, 15].into());
    same(merged(<C as Kernels>::matmul_token_major_add(c3, a4, b4)), merged(expected));
    // Attention on heads split from `[batch, tokens, heads · d]` (the
    // layers' strided views), forward and backward, causal or not, `dv`
    // fresh and added into a gradient from elsewhere.
    let heads = |p| super::autodiff::split_heads::<C>(C::float_reshape(p, [2, 5, 12].into()), 3);
    let [q, k, v, g] = [0, 1, 2, 3].map(|_| heads(r([1, 120])));
    let merged = |p| C::float_reshape(super::autodiff::merge_heads::<C>(p), [10, 12].into());
    // With a query bias or not; every gradient or only some.
    let bias = C::float_reshape(r([1, 12]), [12].into());
    for (causal, bq) in [false, true].into_iter().flat_map(|c| [(c, None), (c, Some(bias.clone()))]) {
        let (o1, p1) = <C as Kernels>::attention_forward(q.clone(), k.clone(), v.clone(), bq.clone(), (0.5, causal));
        let (o2, p2) = composed::attention_forward::<C>(q.clone(), k.clone(), v.clone(), bq.clone(), (0.5, causal));
        same(merged(o1), merged(o2));
        same(C::float_reshape(p1.clone(), [30, 5].into()), C::float_reshape(p2, [30, 5].into()));
        let accs = [None, Some(C::float_reshape(r([1, 120]), [2, 5, 12].into()))];
        for (acc, wants) in accs.into_iter().flat_map(|a| [(a.clone(), [true; 3]), (a, [false, true, false])]) {
            let qkv = [q.clone(), k.clone(), v.clone()];
            let (p, go) = (p1.clone(), g.clone());
            let ours = <C as Kernels>::attention_backward(qkv.clone(), bq.clone(), p, go, (0.5, acc.clone()), wants);
            let theirs = composed::attention_backward::<C>(qkv, bq.clone(), p1.clone(), g.clone(), (0.5, acc), wants);
            for (i, (a, b)) in ours.into_iter().zip(theirs).enumerate() {
                let wanted = if i < 3 { wants[i] } else { bq.is_some() };
                assert_eq!((a.is_some(), b.is_some()), (wanted, wanted), "gradient {i}");
                match (a, b) {
                    (Some(a), Some(b)) if i < 3 => same(merged(a), merged(b)),
                    (Some(a), Some(b)) => same1(a, b),
                    _ => {}
                }
            }
        }
    }
    // ReLU after a product, and its gradient mask (with the bias's
    // gradient summed in the same pass).
    let w = r([24, 24]);
    let y1 = <C as Kernels>::matmul_relu(x.clone(), w.clone());
    same(y1.clone(), C::relu(C::float_matmul(x.clone(), w.clone())));
    same(<C as Kernels>::relu_grad(y1.clone(), dy.clone()), C::relu_backward(y1.clone(), dy.clone()));
    let (dz, db) = <C as Kernels>::relu_grad_bias(y1.clone(), dy.clone());
    let dz2 = C::relu_backward(y1, dy.clone());
    same(dz, dz2.clone());
    same1(db, composed::column_sums::<C>(dz2));
    let bias = primitive(Tensor::<C, 1>::random([24], Distribution::Normal(0.0, 1.0), &d));
    let y2 = <C as Kernels>::dense(x.clone(), w.clone(), Some(bias.clone()), true);
    same(y2, C::relu(composed::matmul_bias::<C>(x.clone(), w.clone(), bias.clone())));
    // The same with the mask of bits, rows past a block of 64 and
    // columns past a word of 32.
    let (x70, w40, dy40) = (r([70, 24]), r([24, 40]), r([70, 40]));
    let b40 = C::float_reshape(r([1, 40]), [40].into());
    for b in [None, Some(b40.clone())] {
        let (y, mask) = <C as Kernels>::dense_relu(x70.clone(), w40.clone(), b.clone());
        let expected = match &b {
            Some(b) => C::relu(composed::matmul_bias::<C>(x70.clone(), w40.clone(), b.clone())),
            None => C::relu(C::float_matmul(x70.clone(), w40.clone())),
        };
        same(y.clone(), expected);
        let dz2 = C::relu_backward(y.clone(), dy40.clone());
        same(<C as Kernels>::relu_grad(mask.clone(), dy40.clone()), dz2.clone());
        let (dz, db) = <C as Kernels>::relu_grad_bias(mask.clone(), dy40.clone());
        same(dz, dz2.clone());
        same1(db, composed::column_sums::<C>(dz2));
        // The product masked as it is formed, against the composition.
        let (g7, w7) = (r([70, 7]), r([40, 7]));
        let g = C::float_matmul(g7.clone(), C::float_transpose(w7.clone()));
        let (dz, db) = <C as Kernels>::masked_product(g7.clone(), w7.clone(), mask.clone(), true);
        let expected = C::relu_backward(y.clone(), g);
        same(dz, expected.clone());
        same1(db.expect("sums"), composed::column_sums::<C>(expected.clone()));
        let (dz, db) = <C as Kernels>::masked_product(g7, w7, mask, false);
        same(dz, expected);
        assert!(db.is_none());
    }
    // Attention weights: [2, 2, 6, 6] scores, causal or not.
    let (s4, dp) = (r([4, 36]), r([4, 36]));
    let four = |p| C::float_reshape(p, [2, 2, 6, 6].into());
    let flat = |p| C::float_reshape(p, [4, 36].into());
    for causal in [false, true] {
        let p1 = <C as Kernels>::softmax_scores(four(s4.clone()), 0.7, causal);
        let p2 = composed::softmax_scores::<C>(four(s4.clone()), 0.7, causal);
        same(flat(p1.clone()), flat(p2));
        let d1 = <C as Kernels>::softmax_scores_backward(p1.clone(), four(dp.clone()), 0.7);
        let d2 = composed::softmax_scores_backward::<C>(p1, four(dp.clone()), 0.7);
        same(flat(d1), flat(d2));
    }
}
