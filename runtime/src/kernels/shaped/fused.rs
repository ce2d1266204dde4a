//! The shaped attention under burn's fusion: the kernels of `cube/` as
//! custom operations of the fusion streams (see `kernels/fused.rs`), planned
//! as `cube/` plans; what they do not take, the reference. The route of
//! products (`kernels/attention/route.rs`) runs the reference too, whose
//! mix and its backward are `cube/mix.rs`'s kernels here as well.

use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorMetadata;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::{Fusion, FusionBackend};

use super::cube::{by_rows, mix_backward_fits, mix_plan, plan, routed};
use super::{reference, MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::Keys;
use crate::kernels::fused::{f32s, like, outputs, run, Operands, Taken};

/// `a`'s tensors and `add`'s as operands.
fn operands<B: FusionBackend>(
    a: Shaped<FloatTensor<Fusion<B>>>,
    add: Option<MixAddend<FloatTensor<Fusion<B>>>>,
) -> Operands<B> {
    let Shaped { q, k, v, gains, bq, .. } = a;
    let ops = Operands::new().floats([q, k, v]).floats(gains).maybe(bq);
    match add {
        Some(m) => ops.floats([m.b, m.beta_sa, m.beta_ff]),
        None => ops.maybe(None).maybe(None).maybe(None),
    }
}

/// The shaped attention and its addend back from [`operands`].
fn taken<B: burn::tensor::backend::Backend>(
    x: &mut Taken<B>,
    (scale, keys): (f64, Keys),
) -> (Shaped<FloatTensor<B>>, Option<MixAddend<FloatTensor<B>>>) {
    let [q, k, v] = x.floats();
    let gains = x.floats();
    let bq = x.maybe();
    let add = match (x.maybe(), x.maybe(), x.maybe()) {
        (Some(b), Some(beta_sa), Some(beta_ff)) => Some(MixAddend { b, beta_sa, beta_ff }),
        _ => None,
    };
    (Shaped { q, k, v, gains, scale, keys, bq }, add)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ShapedOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn shaped_attention_forward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        routed::<Self>(a, add, |a, add, p| {
            let mask = (a.scale, a.keys);
            let shapes = vec![f32s([p.batch, p.tokens, p.heads * p.d]), f32s([p.batch, p.heads, p.tokens])];
            let ops = operands::<CubeBackend<R, F, I, BT>>(a, add);
            let [y, lse] = outputs(run("blkc.shaped_forward", ops, shapes, move |mut x| {
                let (a, add) = taken(&mut x, mask);
                let (y, lse) = by_rows::<R, F, I, BT>(a, add, &p);
                vec![y, lse]
            }));
            (y, lse)
        })
    }

    fn shaped_attention_backward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
        (lse, o): (FloatTensor<Self>, Option<FloatTensor<Self>>),
        dy: FloatTensor<Self>,
        acc: Option<FloatTensor<Self>>,
    ) -> ShapedGrads<FloatTensor<Self>> {
        if let Some(o) = o.filter(|_| lse.shape().num_dims() == 4) {
            // The products' route kept the weights and the softmax term.
            return reference::shaped_attention_backward_with::<Self>(a, add, lse, Some(o), dy, acc);
        }
        // The weights (products, or the reference), or the rows' statistics.
        let planned = plan(&a, add.as_ref()).filter(|_| lse.shape().num_dims() == 3);
        let Some(p) = planned else {
            return reference::shaped_attention_backward::<Self>(a, add, lse, dy, acc);
        };
        let mask = (a.scale, a.keys);
        let (biased, added) = (a.bq.is_some(), add.is_some());
        // What the kernels return: dq, dk, dv, the three gains', then the
        // addend's three (db as dy, one per beta_sa and beta_ff entry) and
        // the query bias's.
        let mut shapes = vec![like(&a.q), like(&a.k), f32s([p.batch, p.tokens, p.heads * p.d])];
        shapes.extend(p.lengths[..3].iter().map(|&n| f32s([n])));
        if let Some(m) = &add {
            shapes.extend([like(&dy), f32s([p.lengths[3]]), f32s([m.beta_ff.shape().num_elements()])]);
        }
        if biased {
            shapes.push(f32s([p.heads * p.d]));
        }
        let ops = operands::<CubeBackend<R, F, I, BT>>(a, add).float(lse).float(dy).maybe(acc);
        let mut out = run("blkc.shaped_backward", ops, shapes, move |mut x| {
            let (a, add) = taken(&mut x, mask);
            let [lse, dy] = x.floats();
            let acc = x.maybe();
            let g = CubeBackend::<R, F, I, BT>::shaped_attention_backward(a, add, (lse, None), dy, acc);
            let mut v = vec![g.dq, g.dk, g.dv];
            v.extend(g.dgains);
            v.extend(g.addend.into_iter().flatten());
            v.extend(g.dbq);
            v
        })
        .into_iter();
        let mut next = || out.next().unwrap_or_else(|| unreachable!("one tensor per declared output"));
        let [dq, dk, dv] = std::array::from_fn(|_| next());
        let dgains = std::array::from_fn(|_| next());
        let addend = added.then(|| std::array::from_fn(|_| next()));
        let dbq = biased.then(next);
        ShapedGrads { dq, dk, dv, dgains, addend, dbq }
    }

    fn mix(v: FloatTensor<Self>, o: FloatTensor<Self>, gains: [FloatTensor<Self>; 3], keys: Keys) -> FloatTensor<Self> {
        if mix_plan(&v, &o, &gains, false).is_none() {
            return reference::mix::<Self>(v, o, gains, keys);
        }
        let shapes = vec![like(&v)];
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats([v, o]).floats(gains);
        let [y] = outputs(run("blkc.mix", ops, shapes, move |mut x| {
            let [v, o] = x.floats();
            vec![CubeBackend::<R, F, I, BT>::mix(v, o, x.floats(), keys)]
        }));
        y
    }

    fn mix_backward(
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        gains: [FloatTensor<Self>; 3],
        dy: FloatTensor<Self>,
        keys: Keys,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, [FloatTensor<Self>; 3]) {
        if mix_plan(&v, &o, &gains, false).is_none() || !mix_backward_fits(&v, &dy, acc.as_ref()) {
            return reference::mix_backward::<Self>(v, o, gains, dy, keys, acc);
        }
        let mut shapes = vec![like(&v), like(&v)];
        shapes.extend(gains.iter().map(|g| f32s([g.shape().num_elements()])));
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats([v, o]).floats(gains).float(dy).maybe(acc);
        let [dv, d_o, da, db, dg] = outputs(run("blkc.mix_backward", ops, shapes, move |mut x| {
            let [v, o] = x.floats();
            let gains = x.floats();
            let dy = x.float();
            let acc = x.maybe();
            let (dv, d_o, [da, db, dg]) = CubeBackend::<R, F, I, BT>::mix_backward(v, o, gains, dy, keys, acc);
            vec![dv, d_o, da, db, dg]
        }));
        (dv, d_o, [da, db, dg])
    }
}
