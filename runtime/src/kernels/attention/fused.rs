//! Softmax attention under burn's fusion: the kernels of `cube.rs` as
//! custom operations of the fusion streams (see `kernels/fused.rs`), planned
//! as `cube.rs` plans; what they do not take, the reference (which keeps
//! the weights, so the backward tells the two apart by rank, as there).
//! So does the route of products (`route.rs`), whose softmax and its
//! backward are the row kernels of `cube.rs` here too.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::cube::rows_of;
use super::{reference, AttentionOps, Scores};
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
        scores: Scores,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let products = crate::kernels::attention::as_products(q.shape()[2]);
        let planned = merged(&v).and_then(|m| shape_plan(&q, &k, (m, v.dtype()), bq.as_ref())).filter(|_| !products);
        let Some(p) = planned else { return reference::attention_forward::<Self>(q, k, v, bq, scores) };
        let shapes = vec![f32s([p.batch, p.heads, p.tokens, p.d]), f32s([p.batch, p.heads, p.tokens])];
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats([q, k, v]).maybe(bq);
        let [o, lse] = outputs(run("blkc.attention_forward", ops, shapes, move |mut x| {
            let [q, k, v] = x.floats();
            let bq = x.maybe();
            let (o, lse) = CubeBackend::<R, F, I, BT>::attention_forward(q, k, v, bq, scores);
            vec![o, lse]
        }));
        (o, lse)
    }

    fn attention_backward(
        qkv: [FloatTensor<Self>; 3],
        bq: Option<FloatTensor<Self>>,
        kept: (FloatTensor<Self>, Option<FloatTensor<Self>>),
        g: FloatTensor<Self>,
        mask: (Scores, Option<FloatTensor<Self>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 4] {
        backward_op::<R, F, I, BT>(qkv, bq, kept, g, mask, wants)
    }

    fn softmax_scores(s: FloatTensor<Self>, scores: Scores) -> FloatTensor<Self> {
        if rows_of(&s).is_none() {
            return reference::softmax_scores::<Self>(s, scores);
        }
        let shapes = vec![like(&s)];
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(s);
        let [p] = outputs(run("blkc.softmax_scores", ops, shapes, move |mut x| {
            vec![CubeBackend::<R, F, I, BT>::softmax_scores(x.float(), scores)]
        }));
        p
    }

    fn softmax_scores_backward(p: FloatTensor<Self>, dp: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        if rows_of(&p).is_none() || dp.dtype() != DType::F32 || dp.shape() != p.shape() {
            return reference::softmax_scores_backward::<Self>(p, dp, scale);
        }
        let shapes = vec![like(&dp)];
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats([p, dp]);
        let [ds] = outputs(run("blkc.softmax_scores_backward", ops, shapes, move |mut x| {
            let [p, dp] = x.floats();
            vec![CubeBackend::<R, F, I, BT>::softmax_scores_backward(p, dp, scale)]
        }));
        ds
    }
}

/// A float tensor under fusion.
type Fused<R, F, I, BT> = FloatTensor<Fusion<CubeBackend<R, F, I, BT>>>;

/// The backward as one custom operation (the row kernels, given the kept
/// output `o` or not); the reference from the weights. (The trait's
/// argument tuples, spelt out for the fusion backend.)
#[allow(clippy::type_complexity)]
fn backward_op<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    qkv: [Fused<R, F, I, BT>; 3],
    bq: Option<Fused<R, F, I, BT>>,
    (p, o): (Fused<R, F, I, BT>, Option<Fused<R, F, I, BT>>),
    g: Fused<R, F, I, BT>,
    (scores, acc): (Scores, Option<Fused<R, F, I, BT>>),
    wants: [bool; 3],
) -> [Option<Fused<R, F, I, BT>>; 4] {
    if p.shape().num_dims() != 3 {
        return reference::attention_backward::<Fusion<CubeBackend<R, F, I, BT>>>(qkv, bq, p, g, (scores, acc), wants);
    }
    // The gradients asked for, shaped as their operands, and the query
    // bias's (one per entry of `heads · d`, as the bias).
    let mut shapes: Vec<_> = qkv.iter().zip(wants).filter(|(_, w)| *w).map(|(t, _)| like(t)).collect();
    let biased = bq.as_ref().map(|b| f32s([b.shape().num_elements()]));
    shapes.extend(biased.clone());
    let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats(qkv).maybe(bq).float(p).maybe(o).float(g).maybe(acc);
    let mut out = run("blkc.attention_backward", ops, shapes, move |mut x| {
        let qkv = x.floats();
        let bq = x.maybe();
        let p = x.float();
        let o = x.maybe();
        let g = x.float();
        let acc = x.maybe();
        let grads = CubeBackend::<R, F, I, BT>::attention_backward(qkv, bq, (p, o), g, (scores, acc), wants);
        grads.into_iter().flatten().collect()
    })
    .into_iter();
    let [dq, dk, dv] = wants.map(|w| w.then(|| out.next()).flatten());
    let dbq = biased.and_then(|_| out.next());
    [dq, dk, dv, dbq]
}
