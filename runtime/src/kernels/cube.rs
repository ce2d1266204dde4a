//! burn's CubeCL backends without operation fusion (`CubeBackend`, which
//! `burn::backend::Cuda` and `Wgpu` are when the `fusion` feature is off):
//! every family, by its CubeCL kernels where it has them (`shaped`, `adam`:
//! their `cube.rs`), by its
//! reference maths otherwise.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{ComputeClient, CubeCount, CubeDim};

use super::{AttentionOps, DenseOps, EmbedOps, GainOps, LossOps, NormOps};

macro_rules! reference_families {
    ($($family:ident),*) => {
        $(impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> $family for CubeBackend<R, F, I, BT> {})*
    };
}

reference_families!(DenseOps, AttentionOps, GainOps, NormOps, LossOps, EmbedOps);

/// The launch of `n` units, one per row or element.
pub(super) fn units<R: CubeRuntime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (cubecl::calculate_cube_count_elemwise(client, n, dim), dim)
}

/// An uninitialised f32 tensor of `shape` on `like`'s device.
pub(super) fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: impl Into<Shape>) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape.into(), DType::F32)
}
