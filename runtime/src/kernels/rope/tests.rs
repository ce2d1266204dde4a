//! Rotary positions against burn's own ops (value and gradient), and the
//! CPU kernel against the reference maths.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Distribution, Tensor, Tolerance};

use super::{reference, RopeOps};
use crate::kernels::testing::*;
use crate::kernels::*;

/// Tables of `[t, half]` angles `(i + 1) · (p + 1) / 7`.
fn tables<B: burn::tensor::backend::Backend>(t: usize, half: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let angle = |i: usize, p: usize| ((i + 1) * (p + 1)) as f32 / 7.0;
    let (c, s): (Vec<f32>, Vec<f32>) =
        (0..t * half).map(|k| angle(k / half, k % half)).map(|a| (a.cos(), a.sin())).unzip();
    let device = Default::default();
    let table = |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), &device).reshape([t, half]);
    (table(c), table(s))
}

/// The turn written out: `y[p] = x[p] cos − x[p + h] sin`, `y[p + h] =
/// x[p + h] cos + x[p] sin`, the rest unchanged.
fn by_hand(x: &[f32], [b, h, t, d]: [usize; 4], half: usize, cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    for row in 0..b * h * t {
        let (i, at) = (row % t, row * d);
        for p in 0..half {
            let (c, s) = (cos[i * half + p], sin[i * half + p]);
            let (a, e) = (x[at + p], x[at + p + half]);
            y[at + p] = a * c - e * s;
            y[at + p + half] = e * c + a * s;
        }
    }
    y
}

/// Whole heads and partial rotation (GPT-J's), on a token-major view (as
/// the products leave queries and keys) and on a contiguous tensor: the
/// value is the turn written out, and the gradient burn's composition's.
#[test]
fn rope_is_the_turn_and_its_gradient_is_burns() {
    for (d, half, token_major) in [(8, 4, true), (8, 4, false), (10, 3, true), (6, 1, false)] {
        let [b, h, t] = [2, 3, 5];
        // The leaf whose gradient is compared, and `x` as the kernel sees it.
        let leaf = if token_major { random::<4>([b, t, h, d]) } else { random::<4>([b, h, t, d]) };
        let x = if token_major { leaf.clone().swap_dims(1, 2) } else { leaf.clone() };
        let (cos, sin) = tables::<Ad>(t, half);
        let ours = rope(x.clone(), cos.clone(), sin.clone());
        let values = |t: Tensor<Ad, 4>| t.into_data().to_vec::<f32>().unwrap_or_default();
        let expected = by_hand(
            &values(x.clone()),
            [b, h, t, d],
            half,
            &cos.clone().into_data().to_vec::<f32>().unwrap_or_default(),
            &sin.clone().into_data().to_vec::<f32>().unwrap_or_default(),
        );
        let got = values(ours.clone());
        assert!(got.iter().zip(&expected).all(|(a, e)| (a - e).abs() < 1e-5), "d {d}, half {half}: the turn");
        // Its own view of the leaf: a backward spends the graph it walks.
        let view = if token_major { leaf.clone().swap_dims(1, 2) } else { leaf.clone() };
        let theirs = tensor::<Ad, 4>(reference::rope::<Ad>(primitive(view), primitive(cos), primitive(sin)));
        same_gradients(std::slice::from_ref(&leaf), ours, theirs);
    }
}

/// The CPU kernel equals the reference; a turn and its opposite give the
/// input back.
#[test]
fn the_cpu_kernel_equals_the_reference() {
    let (cos, sin) = tables::<C>(7, 4);
    let (cos, sin) = (primitive(cos), primitive(sin));
    let x = primitive(Tensor::<C, 4>::random([2, 7, 3, 10], Distribution::Normal(0.0, 2.0), &Default::default()));
    let x = C::float_swap_dims(x, 1, 2);
    let ours = tensor::<C, 4>(C::rope(x.clone(), cos.clone(), sin.clone()));
    let theirs = tensor::<C, 4>(reference::rope::<C>(x.clone(), cos.clone(), sin.clone()));
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-6));
    let back = tensor::<C, 4>(C::rope(primitive(ours), cos, C::float_neg(sin)));
    back.to_data().assert_approx_eq::<f32>(&tensor::<C, 4>(x).to_data(), Tolerance::absolute(1e-5));
}
