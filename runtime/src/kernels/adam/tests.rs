//! Adam(W) on the CPU against the reference maths.

use burn::tensor::ops::FloatTensorOps;

use super::{reference, AdamOps, AdamStep};
use crate::kernels::testing::*;

/// One update with an L2 term and AdamW's decoupled decay at once.
#[test]
fn the_cpu_kernel_equals_the_reference() {
    let (x, dy) = (r([9, 24]), r([9, 24]));
    let flat9 = |p| C::float_reshape(p, [216].into());
    let (p, g, m) = (flat9(x.clone()), flat9(dy.clone()), flat9(r([9, 24])));
    let v = C::float_abs(flat9(r([9, 24])));
    let k = AdamStep {
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
    let (p1, m1, v1) = C::adam(p.clone(), g.clone(), m.clone(), v.clone(), k);
    let (p2, m2, v2) = reference::adam::<C>(p, g, m, v, k);
    same1(p1, p2);
    same1(m1, m2);
    same1(v1, v2);
}
