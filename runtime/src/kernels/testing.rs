//! What the families' tests share: random leaves on `Autodiff<Cpu>`, a
//! kernel against burn's own ops on value and gradients, and a CPU kernel
//! against its family's reference maths on primitives.

use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, Tensor, Tolerance};

pub use crate::backend::Cpu;
use crate::kernels::attention::Keys;
pub use crate::kernels::tensor::{primitive, tensor};

pub type Ad = Autodiff<Cpu>;

/// The CPU backend the fused kernels run on, without autodiff.
pub type C = Cpu;

/// Every mask the tests try on 5 to 7 tokens: causal or not, with no
/// window, one of 3, of 1 (a token sees only itself) and of 9 (past the
/// tokens: no window).
pub fn masks() -> Vec<Keys> {
    [true, false]
        .into_iter()
        .flat_map(|causal| [None, Some(3), Some(1), Some(9)].map(|window| Keys { causal, window }))
        .collect()
}

/// Whether `keys` hides key `j` from query `i`, from the definition (not
/// from [`Keys::range`]): a later key under a causal mask, a key `window`
/// or more positions away.
pub fn hides(keys: Keys, i: usize, j: usize) -> bool {
    (keys.causal && j > i) || keys.window.is_some_and(|w| i.abs_diff(j) >= w)
}

pub fn random<const D: usize>(shape: [usize; D]) -> Tensor<Ad, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
}

/// The gradients of `ours` and of `theirs` weighted by one random
/// tensor (not symmetric, so that a transposed gradient would show).
pub fn backward_both<const D: usize>(
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
pub fn grads_agree<const L: usize>(
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
pub fn same_gradients<const L: usize, const D: usize>(
    leaves: &[Tensor<Ad, L>],
    ours: Tensor<Ad, D>,
    theirs: Tensor<Ad, D>,
) {
    ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
    let (g1, g2) = backward_both(ours, theirs);
    grads_agree(leaves, &g1, &g2);
}

/// A `[rows, cols]` primitive of normal values (σ = 2).
pub fn r(shape: [usize; 2]) -> FloatTensor<C> {
    primitive(Tensor::<C, 2>::random(shape, Distribution::Normal(0.0, 2.0), &Default::default()))
}

/// Two `[rows, cols]` primitives agree to 1e-4.
pub fn same(a: FloatTensor<C>, b: FloatTensor<C>) {
    tensor::<C, 2>(a).to_data().assert_approx_eq::<f32>(&tensor::<C, 2>(b).to_data(), Tolerance::absolute(1e-4));
}

/// Two `[n]` primitives agree to 1e-3 (sums over rows).
pub fn same1(a: FloatTensor<C>, b: FloatTensor<C>) {
    tensor::<C, 1>(a).to_data().assert_approx_eq::<f32>(&tensor::<C, 1>(b).to_data(), Tolerance::absolute(1e-3));
}
