//! Softmax attention under burn's fusion: the kernels of `cube.rs` as
//! custom operations of the fusion streams (see `kernels/fused.rs`), planned
//! as `cube.rs` plans; what they do not take, the reference (which keeps
//! the weights, so the backward tells the two apart by rank, as there).

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::{reference, AttentionOps};
use crate::kernels::fused::{f32s, like, outputs, run, Operands};
use crate::kernels::shaped::cube::shape_plan;

/// The shape of `v: [batch, heads, tokens, d]` with its heads merged.
fn merged<T: TensorMetadata>(v: &T) -> Option<Shape> {
    let s = v.shape();
    (s.num_dims() == 4).then(|| Shape::from([s[0], s[2], s[1] * s[3]]))
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionOps
    for Fusion<CubeBackend<R, F, I, BT>>
{
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        (scale, causal): (f64, bool),
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let products = crate::kernels::attention::as_products(q.shape()[2]);
        let planned = merged(&v).and_then(|m| shape_plan(&q, &k, (m, v.dtype()), bq.as_ref())).filter(|_| !products);
        let Some(p) = planned else { return reference::attention_forward::<Self>(q, k, v, bq, (scale, causal)) };
        let shapes = vec![f32s([p.batch, p.heads, p.tokens, p.d]), f32s([p.batch, p.heads, p.tokens])];
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats([q, k, v]).maybe(bq);
        let [o, lse] = outputs(run("blkc.attention_forward", ops, shapes, move |mut x| {
            let [q, k, v] = x.floats();
            let bq = x.maybe();
            let (o, lse) = CubeBackend::<R, F, I, BT>::attention_forward(q, k, v, bq, (scale, causal));
            vec![o, lse]
        }));
        (o, lse)
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
        // The gradients asked for, shaped as their operands, and the query
        // bias's (one per entry of `heads · d`, as the bias).
        let mut shapes: Vec<_> = qkv.iter().zip(wants).filter(|(_, w)| *w).map(|(t, _)| like(t)).collect();
        let biased = bq.as_ref().map(|b| f32s([b.shape().num_elements()]));
        shapes.extend(biased.clone());
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats(qkv).maybe(bq).float(p).float(g).maybe(acc);
        let mut out = run("blkc.attention_backward", ops, shapes, move |mut x| {
            let qkv = x.floats();
            let bq = x.maybe();
            let [p, g] = x.floats();
            let acc = x.maybe();
            let grads = CubeBackend::<R, F, I, BT>::attention_backward(qkv, bq, p, g, (scale, causal, acc), wants);
            grads.into_iter().flatten().collect()
        })
        .into_iter();
        let [dq, dk, dv] = wants.map(|w| w.then(|| out.next()).flatten());
        let dbq = biased.and_then(|_| out.next());
        [dq, dk, dv, dbq]
    }
}
