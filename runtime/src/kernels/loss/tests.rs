//! The loss against burn's log-softmax, and the CPU kernels against the
//! reference maths.

use burn::tensor::{Distribution, Int, Tensor, Tolerance};

use super::{reference, LossOps};
use crate::kernels::testing::*;
use crate::kernels::*;

#[test]
fn nll_is_the_cross_entropy_of_log_softmax() {
    let device = Default::default();
    let logits = (random::<2>([6, 11]) * 20.0).detach().require_grad();
    let targets = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
    let ours = nll(logits.clone(), targets.clone());
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
        let ours = nll_mean(logits.clone(), targets.clone(), None);
        let logp = burn::tensor::activation::log_softmax(logits.clone(), 1);
        let theirs = logp.gather(1, targets.clone().reshape([6, 1])).reshape([6]).neg().mean();
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let plain = nll_mean(logits.clone().detach(), targets.clone(), None);
        plain.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = ((ours * factor).sum().backward(), (theirs * factor).sum().backward());
        grads_agree(std::slice::from_ref(&logits), &g1, &g2);
    }
}

/// With a soft-cap, the mean's kernel (the CPU's row loop, its gradient
/// written in the forward) is burn's mean cross-entropy of `cap · tanh(x /
/// cap)`: value and the logits' gradient, for caps that bite (logits up to
/// about 60) and one that does not; untracked, the same value.
#[test]
fn a_capped_nll_mean_is_the_cross_entropy_of_the_capped_logits() {
    let device = Default::default();
    let targets = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
    for cap in [0.5, 5.0, 30.0, 1e4] {
        let logits = (random::<2>([6, 11]) * 20.0).detach().require_grad();
        let ours = nll_mean(logits.clone(), targets.clone(), Some(cap));
        let logp = burn::tensor::activation::log_softmax(softcap(logits.clone(), cap), 1);
        let theirs = logp.gather(1, targets.clone().reshape([6, 1])).reshape([6]).neg().mean();
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let plain = nll_mean(logits.clone().detach(), targets.clone(), Some(cap));
        plain.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = ((ours * 2.0).sum().backward(), (theirs * 2.0).sum().backward());
        grads_agree(std::slice::from_ref(&logits), &g1, &g2);
    }
    // The CPU kernel against the reference's composition, on primitives.
    let x = r([7, 300]);
    let t = Tensor::<C, 1, Int>::from_ints([0, 299, 5, 5, 100, 7, 8], &device).into_primitive();
    let (l1, g1) = C::nll_mean_with_grad(x.clone(), t.clone(), Some(0.5));
    let (l2, g2) = reference::nll_mean_with_grad::<C>(x.clone(), t.clone(), Some(0.5));
    same1(l1, l2);
    same(g1, g2);
    // The mean alone (evaluation's), capped and not, small and large
    // enough to run on several threads.
    let rows = |n: usize, v: usize| {
        Tensor::<C, 1, Int>::from_ints(&*(0..n).map(|i| (i * 7 % v) as i32).collect::<Vec<_>>(), &device)
            .into_primitive()
    };
    for (x, t) in [(x, t), (r([3, 5]), rows(3, 5)), (r([70, 1000]), rows(70, 1000))] {
        for cap in [Some(0.5), Some(30.0), None] {
            let ours = C::nll_mean(x.clone(), t.clone(), cap);
            same1(ours, reference::nll_mean::<C>(x.clone(), t.clone(), cap));
        }
        // The capped logits alone (a masked model's, a sliding
        // evaluation's).
        for cap in [0.5, 30.0] {
            same(C::soft_capped(x.clone(), cap), reference::soft_capped::<C>(x.clone(), cap));
        }
    }
}

/// `total` is the sum, value and gradient (a masked model's loss: the
/// tokens' losses times their weights): `d total(x ⊙ w) / dx = g · w`.
#[test]
fn total_is_the_sum() {
    let x = random::<1>([37]).detach().require_grad();
    let w = random::<1>([37]).detach();
    let ours = total(x.clone() * w.clone());
    let sum = (x.clone().inner() * w.clone().inner()).sum();
    ours.clone().inner().to_data().assert_approx_eq::<f32>(&sum.to_data(), Tolerance::absolute(1e-4));
    let grads = (ours * 3.0).backward();
    let dx = x.grad(&grads).expect("x has a gradient");
    dx.to_data().assert_approx_eq::<f32>(&(w.inner() * 3.0).to_data(), Tolerance::absolute(1e-5));
}

/// A masked model's loss through `total` has burn's gradient: the weighted
/// cross-entropy summed, on two leaves of the same values (two graphs).
#[test]
fn a_weighted_total_has_burns_gradient() {
    let device = Default::default();
    let values = (random::<2>([6, 11]) * 5.0).inner();
    let targets = Tensor::<Ad, 1, Int>::from_ints([0, 10, 3, 3, 7, 1], &device);
    let w = Tensor::<Ad, 1>::from_floats([1.0, 0.0, 2.0, 0.5, 0.0, 1.0], &device);
    let (a, b) = (
        Tensor::<Ad, 2>::from_inner(values.clone()).require_grad(),
        Tensor::<Ad, 2>::from_inner(values).require_grad(),
    );
    let ours = total(nll(a.clone(), targets.clone()) * w.clone());
    let logp = burn::tensor::activation::log_softmax(b.clone(), 1);
    let theirs = (logp.gather(1, targets.reshape([6, 1])).reshape([6]).neg() * w).sum();
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
    let (ga, gb) = ((ours * 2.0).backward(), (theirs * 2.0).backward());
    let (da, db) = (a.grad(&ga).expect("a's gradient"), b.grad(&gb).expect("b's gradient"));
    da.to_data().assert_approx_eq::<f32>(&db.to_data(), Tolerance::absolute(1e-4));
}

/// The CPU's cross-entropy per row and its gradient against the
/// reference.
#[test]
fn the_cpu_kernels_equal_the_reference() {
    let (d, x) = (Default::default(), r([9, 24]));
    let targets = Tensor::<C, 1, Int>::from_ints([3, 0, 23, 5, 5, 1, 2, 9, 17], &d).into_primitive();
    let (n1, l1) = C::cross_entropy(x.clone(), targets.clone());
    let (n2, l2) = reference::cross_entropy::<C>(x.clone(), targets.clone());
    same1(n1, n2);
    same1(l1.clone(), l2);
    let g = primitive(Tensor::<C, 1>::random([9], Distribution::Normal(0.0, 1.0), &d));
    let d1 = C::cross_entropy_backward(x.clone(), l1.clone(), targets.clone(), g.clone());
    let d2 = reference::cross_entropy_backward::<C>(x.clone(), l1, targets, g);
    same(d1, d2);
}
