//! Rotary positions under burn's fusion: the kernel of `cube.rs` as a
//! custom operation of the fusion streams (see `kernels/fused.rs`). Its
//! output is shaped and typed as its input whichever way `cube.rs` goes.

use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::RopeOps;
use crate::kernels::fused::{like, outputs, run, Operands};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> RopeOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        let shapes = vec![like(&x)];
        let [y] = outputs(run(
            "blkc.rope",
            Operands::<CubeBackend<R, F, I, BT>>::new().floats([x, cos, sin]),
            shapes,
            |mut a| {
                let [x, cos, sin] = a.floats();
                vec![CubeBackend::<R, F, I, BT>::rope(x, cos, sin)]
            },
        ));
        y
    }
}
