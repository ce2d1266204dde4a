//! Norms against their formula in burn's ops, and the CPU kernels
//! against the reference maths.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Distribution, Tensor, Tolerance};

use super::{reference, NormOps};
use crate::kernels::testing::*;
use crate::kernels::*;

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
        let ours = normalise(x.clone(), scale.clone(), b, 1e-5, centred);
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
        let g1 = (normalise(x.clone(), scale.clone(), b, 1e-5, centred) * w.clone()).sum().backward();
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

/// The CPU's RMSNorm and LayerNorm, forward and backward (its input's
/// gradient also added into one from elsewhere), against the reference.
#[test]
fn the_cpu_kernels_equal_the_reference() {
    let d = Default::default();
    let (x, dy, scale, bias) = (r([9, 24]), r([9, 24]), primitive(Tensor::<C, 1>::ones([24], &d) * 1.5), r([1, 24]));
    let bias = C::float_reshape(bias, [24].into());
    for centred in [false, true] {
        let (y1, s1) = C::norm(x.clone(), scale.clone(), Some(bias.clone()), 1e-6, centred);
        let (y2, s2) = reference::norm::<C>(x.clone(), scale.clone(), Some(bias.clone()), 1e-6, centred);
        same(y1, y2);
        same1(s1.clone(), s2);
        let (a1, b1, c1) = C::norm_backward(x.clone(), scale.clone(), s1.clone(), dy.clone(), centred, None);
        let (a2, b2, c2) = reference::norm_backward::<C>(x.clone(), scale.clone(), s1.clone(), dy.clone(), centred);
        same(a1.clone(), a2.clone());
        same1(b1, b2);
        same1(c1, c2);
        // Added into a gradient from elsewhere.
        let (a3, _, _) = C::norm_backward(x.clone(), scale.clone(), s1, dy.clone(), centred, Some(x.clone()));
        same(a3, C::float_add(a2, x.clone()));
    }
}
