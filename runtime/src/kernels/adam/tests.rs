//! Adam(W) on the CPU against the reference maths.

use burn::tensor::ops::FloatTensorOps;

use super::{groups, reference, AdamOps, AdamStep};
use crate::kernels::testing::*;

/// One update with an L2 term and AdamW's decoupled decay at once, with
/// β₂ = 0.999 (whose `1 − β₂` in f32 would be 5·10⁻⁵ off).
#[test]
fn the_cpu_kernel_equals_the_reference() {
    let (x, dy) = (r([9, 24]), r([9, 24]));
    let flat9 = |p| C::float_reshape(p, [216].into());
    let (p, g, m) = (flat9(x.clone()), flat9(dy.clone()), flat9(r([9, 24])));
    let v = C::float_abs(flat9(r([9, 24])));
    let k = AdamStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        bc1: 0.19,
        bc2: 0.001999,
        grad_scale: 0.5,
        l2: 0.1,
        decay: 0.001,
    };
    // Then the first step, from zero moments: `v` is `(1 − β₂) g²` alone.
    let zero = C::float_mul_scalar(m.clone(), 0.0f32.into());
    let first = AdamStep { bc1: 0.1, bc2: 0.001, ..k };
    for (m, v, k) in [(m, v, k), (zero.clone(), zero, first)] {
        let (p1, m1, v1) = C::adam(p.clone(), g.clone(), m.clone(), v.clone(), k);
        let (p2, m2, v2) = reference::adam::<C>(p.clone(), g.clone(), m, v, k);
        for (a, b) in [(p1, p2), (m1, m2), (v1, v2)] {
            let (a, b) = (values(a), values(b));
            let scale = b.iter().fold(0.0f32, |s, y| s.max(y.abs()));
            let gap = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale;
            assert!(gap < 1e-6, "{gap:e} of the largest entry");
        }
    }
}

fn values(t: burn::tensor::ops::FloatTensor<C>) -> Vec<f32> {
    crate::kernels::tensor::tensor::<C, 1>(t).into_data().to_vec::<f32>().unwrap_or_default()
}

/// The grouped launches: every tensor once, in order, no group above its
/// count or (unless one tensor alone is) its size.
#[test]
fn groups_cover_every_tensor_in_order_within_their_limits() {
    let sizes = [5, 1, 1, 40, 1, 1, 1, 1, 9, 100, 2];
    for (most, cap) in [(1, usize::MAX), (3, usize::MAX), (16, 10), (4, 40), (2, 1)] {
        let gs = groups(&sizes, most, cap);
        let flat: Vec<usize> = gs.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(flat, (0..sizes.len()).collect::<Vec<_>>(), "most {most}, cap {cap}: {gs:?}");
        for r in &gs {
            let held: usize = sizes[r.clone()].iter().sum();
            assert!(!r.is_empty() && r.len() <= most, "most {most}: {r:?}");
            assert!(r.len() == 1 || held <= cap, "cap {cap}: {r:?} holds {held}");
        }
    }
    assert_eq!(groups(&sizes, 16, usize::MAX), vec![0..11]);
    assert_eq!(groups(&sizes, 4, 40), vec![0..3, 3..4, 4..8, 8..9, 9..10, 10..11]);
    assert!(groups(&[], 4, 4).is_empty());
}
