//! Softmax attention on burn's CubeCL backends: the shaped attention's
//! kernels (`shaped/cube/`) compiled for a plain softmax (not `mixed`:
//! gains `[0, 1, 0]` as constants, no gains read, no centre's sums). The T×T weights are never
//! written: the forward keeps the rows' log-sum-exp in their place
//! (`[batch, heads, tokens]`, where the reference keeps the weights
//! `[batch, heads, tokens, tokens]`), and the backward recomputes the
//! weights from it, row by row.
//!
//! What the shaped kernels do not take (other dtypes than f32, head
//! dimensions above theirs) runs the reference, which keeps the weights;
//! the backward tells the two apart by rank. Tested against the reference
//! in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::TensorMetadata;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::{reference, AttentionOps};
use crate::kernels::shaped::cube::{backward, forward, no_gains, shape_plan, Mix, Operands, Plan};
use crate::kernels::tensor::{merge_heads, split_heads};

/// `q`, `k`, the query's bias and `v` with the heads merged, and
/// placeholders for the gains; with their plan, where the kernels take
/// them.
fn operands<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    [q, k, v]: &[CubeTensor<R>; 3],
    bq: Option<&CubeTensor<R>>,
) -> Option<(Operands<R>, Plan)> {
    let v = merge_heads::<CubeBackend<R, F, I, BT>>(v.clone());
    let p = shape_plan(q, k, (v.shape(), v.dtype), bq)?;
    let none = no_gains(&v);
    let gains = [none.clone(), none.clone(), none.clone(), none];
    Some((Operands::new([q.clone(), k.clone(), v], bq, gains), p))
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionOps for CubeBackend<R, F, I, BT> {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        (scale, causal): (f64, bool),
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let qkv = [q, k, v];
        let Some((operands, p)) = operands::<R, F, I, BT>(&qkv, bq.as_ref()) else {
            let [q, k, v] = qkv;
            return reference::attention_forward::<Self>(q, k, v, bq, (scale, causal));
        };
        let (o, lse) = forward(operands, &p, (scale, causal, false));
        (split_heads::<Self>(o, p.heads), lse)
    }

    fn attention_backward(
        qkv: [FloatTensor<Self>; 3],
        bq: Option<FloatTensor<Self>>,
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        (scale, causal, acc): (f64, bool, Option<FloatTensor<Self>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 4] {
        if p.shape().num_dims() != 3 {
            return reference::attention_backward::<Self>(qkv, bq, p, g, (scale, causal, acc), wants);
        }
        let Some((operands, plan)) = operands::<R, F, I, BT>(&qkv, bq.as_ref()) else {
            // Not reached (the forward kept row statistics, so it ran the
            // kernels on these operands); the reference, from its weights.
            let [q, k, v] = qkv.clone();
            let weights = reference::attention_forward::<Self>(q, k, v, bq.clone(), (scale, causal)).1;
            return reference::attention_backward::<Self>(qkv, bq, weights, g, (scale, causal, acc), wants);
        };
        let dy = into_contiguous(merge_heads::<Self>(g));
        let [dq, dk, dv, _] = backward(operands, &plan, p, dy, (scale, causal, Mix { mixed: false, summed: false }));
        let dbq = bq.as_ref().map(|_| {
            let s = Self::float_sum_dim(Self::float_sum_dim(dq.clone(), 2), 0);
            Self::float_reshape(s, [plan.heads * plan.d].into())
        });
        let dv = match acc {
            Some(acc) => Self::float_add(acc, dv),
            None => dv,
        };
        let [dq, dk, dv] = [dq, dk, split_heads::<Self>(dv, plan.heads)];
        [wants[0].then_some(dq), wants[1].then_some(dk), wants[2].then_some(dv), dbq]
    }
}
