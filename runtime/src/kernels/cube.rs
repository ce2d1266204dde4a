//! burn's CubeCL backends without operation fusion (`CubeBackend`, which
//! `burn::backend::Cuda` and `Wgpu` are when the `fusion` feature is off):
//! every family, by its CubeCL kernels where it has them (`shaped`, `adam`:
//! their `cube.rs`), by its
//! reference maths otherwise.

use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::{AttentionOps, DenseOps, EmbedOps, GainOps, LossOps, NormOps};

macro_rules! reference_families {
    ($($family:ident),*) => {
        $(impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> $family for CubeBackend<R, F, I, BT> {})*
    };
}

reference_families!(DenseOps, AttentionOps, GainOps, NormOps, LossOps, EmbedOps);
