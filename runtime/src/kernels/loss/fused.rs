//! The loss under burn's fusion: the kernels of `cube.rs` as custom
//! operations of the fusion streams (see `kernels/fused.rs`), planned as
//! `cube.rs` plans; what they do not take, the reference.

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Shape, TensorMetadata};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::cube::{backward_plan, plan};
use super::{reference, LossOps};
use crate::kernels::fused::{f32s, outputs, run, Operands};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> LossOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, _]) = plan::<_, I>(&logits, &targets) else {
            return reference::cross_entropy::<Self>(logits, targets);
        };
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(logits).int(targets);
        let [nll, lse] = outputs(run("blkc.cross_entropy", ops, vec![f32s([rows]), f32s([rows])], |mut a| {
            let logits = a.float();
            let (nll, lse) = CubeBackend::<R, F, I, BT>::cross_entropy(logits, a.int());
            vec![nll, lse]
        }));
        (nll, lse)
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some([rows, vocab]) = backward_plan::<_, I>(&logits, &lse, &targets, &g) else {
            return reference::cross_entropy_backward::<Self>(logits, lse, targets, g);
        };
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(logits).float(lse).int(targets).float(g);
        let [dx] = outputs(run("blkc.cross_entropy_backward", ops, vec![f32s([rows, vocab])], |mut a| {
            let [logits, lse] = a.floats();
            let targets = a.int();
            vec![CubeBackend::<R, F, I, BT>::cross_entropy_backward(logits, lse, targets, a.float())]
        }));
        dx
    }

    fn total(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shapes = vec![(Shape::from([1]), x.dtype())];
        let [sum] =
            outputs(run("blkc.total", Operands::<CubeBackend<R, F, I, BT>>::new().float(x), shapes, |mut a| {
                vec![CubeBackend::<R, F, I, BT>::total(a.float())]
            }));
        sum
    }

    fn nll_mean(logits: FloatTensor<Self>, targets: IntTensor<Self>, cap: Option<f64>) -> FloatTensor<Self> {
        if plan::<_, I>(&logits, &targets).is_none() || cap.is_some() {
            return reference::nll_mean::<Self>(logits, targets, cap);
        }
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(logits).int(targets);
        let [mean] = outputs(run("blkc.nll_mean", ops, vec![f32s([1])], |mut a| {
            let logits = a.float();
            vec![CubeBackend::<R, F, I, BT>::nll_mean(logits, a.int(), None)]
        }));
        mean
    }

    fn nll_mean_with_grad(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        cap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, vocab]) = plan::<_, I>(&logits, &targets) else {
            return reference::nll_mean_with_grad::<Self>(logits, targets, cap);
        };
        // The kernel writes the gradient over the logits when the stream
        // holds them nowhere else (they were this operation's last use).
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(logits).int(targets);
        let [loss, dx] =
            outputs(run("blkc.nll_mean_with_grad", ops, vec![f32s([1]), f32s([rows, vocab])], move |mut a| {
                let logits = a.float();
                let (loss, dx) = CubeBackend::<R, F, I, BT>::nll_mean_with_grad(logits, a.int(), cap);
                vec![loss, dx]
            }));
        (loss, dx)
    }
}
