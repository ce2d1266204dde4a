//! The dense family under burn's fusion: f32 products in fp32 (`cube.rs`'s
//! [`exact`], as a custom operation of the fusion streams: see
//! `kernels/fused.rs`), since burn's fused product runs f32 on TF32 tensor
//! cores. Products in bf16 or TF32 are burn's (f32 operands in a bf16
//! scope cast to bf16 for it, as `cube.rs` does), which fusion joins to the
//! element-wise work around them (bias, activation), as it does the
//! activations and gated units of the reference maths.

use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::cube::{bf16_product, exact, fp32_product, in_bf16, product_shape};
use super::DenseOps;
use crate::kernels::fused::{f32s, outputs, run, Operands};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> DenseOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        use burn::tensor::ops::FloatTensorOps;
        let (sa, sb) = (a.shape(), b.shape());
        if bf16_product(&a, &b) {
            return in_bf16::<Self>(a, b);
        }
        if !fp32_product(&a, &b) || sa.num_dims() != sb.num_dims() || sa.num_dims() < 2 {
            return Self::float_matmul(a, b);
        }
        let [y] = outputs(run(
            "blkc.matmul",
            Operands::<CubeBackend<R, F, I, BT>>::new().floats([a, b]),
            vec![f32s(product_shape(&sa, &sb))],
            |mut x| {
                let [a, b] = x.floats();
                vec![exact(a, b)]
            },
        ));
        y
    }
}
