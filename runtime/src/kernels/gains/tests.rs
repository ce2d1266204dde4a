//! Gains against burn's own ops, and the CPU kernels against the
//! reference maths.

use burn::tensor::{Distribution, Tensor, Tolerance};

use super::{reference, GainOps};
use crate::kernels::testing::*;
use crate::kernels::*;

/// The gained sum of two tensors is its composition, value and the
/// gradients of both tensors and both gains (per head and single).
#[test]
fn scaled_sum_matches_its_composition() {
    let (a, b, ga, gb) = (random::<3>([2, 70, 12]), random::<3>([2, 70, 12]), random::<1>([4]), random::<1>([1]));
    let ours = scaled_sum(a.clone(), b.clone(), ga.clone(), gb.clone());
    let theirs = (a.clone().reshape([2, 70, 4, 3]) * ga.clone().reshape([1, 1, 4, 1])).reshape([2, 70, 12])
        + b.clone() * gb.clone().reshape([1, 1, 1]);
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
    let (g1, g2) = backward_both(ours, theirs);
    grads_agree(&[a, b], &g1, &g2);
    grads_agree(&[ga, gb], &g1, &g2);
}

#[test]
fn scale_groups_matches_a_broadcast_product() {
    // Per head: [b, t, h·d] with gains [h] is [b, t, h, d] times [1, 1, h, 1].
    let (x, g) = (random::<3>([2, 5, 12]), random::<1>([3]));
    let theirs = || (x.clone().reshape([2, 5, 3, 4]) * g.clone().reshape([1, 1, 3, 1])).reshape([2, 5, 12]);
    same_gradients(std::slice::from_ref(&x), scale_groups(x.clone(), g.clone()), theirs());
    // The gains' gradient (a graph is spent by its backward: build anew).
    let w = Tensor::<Ad, 3>::random([2, 5, 12], Distribution::Normal(0.0, 1.0), &Default::default());
    let g1 = (scale_groups(x.clone(), g.clone()) * w.clone()).sum().backward();
    let g2 = (theirs() * w).sum().backward();
    let (ours, theirs) = (g.grad(&g1).expect("gradient"), g.grad(&g2).expect("gradient"));
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3));
    // One gain for everything, on a strided view.
    let (x, g) = (random::<3>([5, 2, 8]), random::<1>([1]));
    let ours = scale_groups(x.clone().swap_dims(0, 1), g.clone());
    let w = Tensor::<Ad, 3>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
    let grads = (ours.clone() * w.clone()).sum().backward();
    let dx = x.grad(&grads).expect("gradient");
    // x ⊙ g, and dx = w ⊙ g, by hand.
    let gain = g.into_scalar();
    ours.to_data().assert_approx_eq::<f32>(&(x.swap_dims(0, 1) * gain).to_data(), Tolerance::absolute(1e-5));
    dx.to_data().assert_approx_eq::<f32>(&(w.inner().swap_dims(0, 1) * gain).to_data(), Tolerance::absolute(1e-5));
}

/// The CPU's scaling per group of columns and its gains' gradient, and
/// its gained sum with every gradient, against the reference.
#[test]
fn the_cpu_kernels_equal_the_reference() {
    let (x, dy) = (r([9, 24]), r([9, 24]));
    let g4 = primitive(Tensor::<C, 1>::from_floats([0.5, -2.0, 3.0, 1.0], &Default::default()));
    same(C::scale_groups(x.clone(), g4.clone()), reference::scale_groups::<C>(x.clone(), g4.clone()));
    same1(C::scale_groups_grad(x.clone(), dy.clone(), 4), reference::scale_groups_grad::<C>(x.clone(), dy.clone(), 4));
    let (b, g1) = (r([9, 24]), primitive(Tensor::<C, 1>::from_floats([0.7], &Default::default())));
    same(
        C::scaled_sum(x.clone(), b.clone(), g4.clone(), g1.clone()),
        reference::scaled_sum::<C>(x.clone(), b.clone(), g4.clone(), g1.clone()),
    );
    let ours = C::scaled_sum_backward(x.clone(), b.clone(), g4.clone(), g1.clone(), dy.clone());
    let theirs = reference::scaled_sum_backward::<C>(x, b, g4, g1, dy);
    let [da, db, dga, dgb] = ours;
    let [ea, eb, ega, egb] = theirs;
    same(da, ea);
    same(db, eb);
    same1(dga, ega);
    same1(dgb, egb);
}
