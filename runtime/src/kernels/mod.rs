//! Kernels: the operations of a training step that burn's generic tensor
//! API makes slow, as one trait over backends.
//!
//! [`Kernels`] has a default method for each operation, built from burn's
//! primitive ops, which every backend uses unless it overrides it; `flex`
//! (the CPU default) overrides them with fused loops (`flex.rs`), and
//! `Autodiff<B>` overrides them with one graph node per operation whose
//! backward calls `B`'s kernels (`autodiff.rs`). The layers call the helper
//! functions at the bottom, on `Tensor`s.
//!
//! The only module of the workspace where `unsafe` is allowed: the FFI call
//! that tunes the allocator, and the raw-pointer calls into `gemm`. Each use
//! carries its SAFETY argument.

#![allow(unsafe_code)]

pub mod alloc;
mod autodiff;
#[cfg(feature = "flex")]
mod flex;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// A backend with blkc's kernels.
pub trait Kernels: Backend {
    /// `a · b` for `a: [..., m, k]`, `b: [..., k, n]` with equal leading
    /// dimensions (no broadcasting).
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }
}

/// An autodiff backend whose inner backend has the kernels too (what
/// training needs: the model runs on both).
pub trait TrainKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainKernels for B {}

#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray {}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `a · b` (see [`Kernels::matmul`]).
pub fn matmul<B: Kernels, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::matmul(primitive(a), primitive(b)))
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use crate::backend::Cpu;

    type Ad = Autodiff<Cpu>;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Ad, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).require_grad()
    }

    /// The kernel and burn's `matmul` agree on value and both gradients,
    /// for the leaves `a`, `b` seen through `view` (contiguous or strided).
    fn same_as_burn<const D: usize>(
        a: Tensor<Ad, D>,
        b: Tensor<Ad, D>,
        view: fn(Tensor<Ad, D>, bool) -> Tensor<Ad, D>,
    ) {
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
}
