//! Norms under burn's fusion: the kernels of `cube.rs` as custom
//! operations of the fusion streams (see `kernels/fused.rs`), planned as
//! `cube.rs` plans; what they do not take, the reference.

use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::cube::{backward_plan, plan};
use super::{reference, NormOps};
use crate::kernels::fused::{f32s, outputs, run, Operands};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> NormOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, width]) = plan(&x, &scale, bias.as_ref()) else {
            return reference::norm::<Self>(x, scale, bias, eps, centred);
        };
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(x).float(scale).maybe(bias);
        let [y, rstd] = outputs(run("blkc.norm", ops, vec![f32s([rows, width]), f32s([rows])], move |mut a| {
            let [x, scale] = a.floats();
            let (y, rstd) = CubeBackend::<R, F, I, BT>::norm(x, scale, a.maybe(), eps, centred);
            vec![y, rstd]
        }));
        (y, rstd)
    }

    fn norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        centred: bool,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, width]) = backward_plan(&x, &scale, &rstd, &dy, acc.as_ref()) else {
            return reference::norm_backward_adding::<Self>(x, scale, rstd, dy, centred, acc);
        };
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats([x, scale, rstd, dy]).maybe(acc);
        let shapes = vec![f32s([rows, width]), f32s([width]), f32s([width])];
        let [dx, dscale, dbias] = outputs(run("blkc.norm_backward", ops, shapes, move |mut a| {
            let [x, scale, rstd, dy] = a.floats();
            let (dx, dscale, dbias) = CubeBackend::<R, F, I, BT>::norm_backward(x, scale, rstd, dy, centred, a.maybe());
            vec![dx, dscale, dbias]
        }));
        (dx, dscale, dbias)
    }
}
