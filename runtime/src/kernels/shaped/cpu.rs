//! The shaped attention on the CPU: per sequence, per head the scores,
//! their softmax and the softmax term into a scratch that stays in cache,
//! then the mix (and the block's gained sum) row by row; the backward the
//! other way round. Built from the attention family's pieces.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::mix::{mix_backward, mix_forward};
use super::{loops, reference, MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::cpu::{attention_weights, bias_values, key_shift, query_bias_back, token_major};
use crate::kernels::cpu::raw::{self, Fresh, Gemm, Heads, Mat, MatMut, Out, Written};
use crate::kernels::cpu::rows::{dims3, group_sums, owned, per_head, totals, vector, Rows};
use crate::kernels::cpu::{parallel, simd};

impl ShapedOps for Flex {
    fn shaped_attention_forward(a: Shaped<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> (FlexTensor, FlexTensor) {
        forward(a, add)
    }

    fn shaped_attention_backward(
        a: Shaped<FlexTensor>,
        add: Option<MixAddend<FlexTensor>>,
        p: FlexTensor,
        dy: FlexTensor,
        acc: Option<FlexTensor>,
    ) -> ShapedGrads<FlexTensor> {
        backward(a, add, p, dy, acc)
    }

    fn mix(v: FlexTensor, o: FlexTensor, gains: [FlexTensor; 3], causal: bool) -> FlexTensor {
        mix_forward(&v, &o, &gains, causal).unwrap_or_else(|| reference::mix::<Flex>(v, o, gains, causal))
    }

    fn mix_backward(
        v: FlexTensor,
        o: FlexTensor,
        gains: [FlexTensor; 3],
        dy: FlexTensor,
        causal: bool,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor, [FlexTensor; 3]) {
        match mix_backward([&v, &o], &gains, dy, causal, acc) {
            Ok(grads) => grads,
            Err((dy, acc)) => reference::mix_backward::<Flex>(v, o, gains, dy, causal, acc),
        }
    }

    fn causal_mean(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || x.layout().num_dims() != 3 {
            return reference::causal_mean::<Flex>(x);
        }
        let [_, t, d] = dims3(&x);
        let mut out = Rows::new(x);
        out.for_each_sequence(t * d, |seq| loops::running_mean(seq, d));
        out.tensor
    }

    fn causal_mean_backward(dy: FlexTensor) -> FlexTensor {
        if dy.dtype() != DType::F32 || dy.layout().num_dims() != 3 {
            return reference::causal_mean_backward::<Flex>(dy);
        }
        let [_, t, d] = dims3(&dy);
        let mut out = Rows::new(dy);
        out.for_each_sequence(t * d, |seq| loops::running_mean_backward(seq, d));
        out.tensor
    }
}

/// A fused shaped attention's dims `[batch, heads, tokens, d, dv]`, its
/// gains per head: the mix's own (`gi`, `gs`, `gc`), the sum's `ga`, `gb`;
/// and the query's bias (`[heads · d]`) when it has biases.
struct ShapedPlan {
    dims: [usize; 5],
    gi: Vec<f32>,
    gs: Vec<f32>,
    gc: Vec<f32>,
    ga: Option<Vec<f32>>,
    gb: Vec<f32>,
    bq: Option<Vec<f32>>,
}

impl ShapedPlan {
    /// The gains per column (`dv` per head): the three terms' times `ga`,
    /// and `gb` (zeros without a branch).
    fn columns(&self, dv: usize) -> [Vec<f32>; 4] {
        let heads = self.gi.len();
        let column = |f: &dyn Fn(usize) -> f32| (0..heads * dv).map(|j| f(j / dv)).collect::<Vec<f32>>();
        let ga = |hi: usize| self.ga.as_ref().map_or(1.0, |g| g[hi]);
        [
            column(&|hi| self.gi[hi] * ga(hi)),
            column(&|hi| self.gs[hi] * ga(hi)),
            column(&|hi| self.gc[hi] * ga(hi)),
            column(&|hi| self.gb.get(hi).copied().unwrap_or(0.0)),
        ]
    }
}

/// The plan of a shaped attention the fused kernel takes: f32 throughout,
/// `q`, `k` `[b, h, t, d]`, `v` (and `b`) `[b, t, h·dv]`, gains per whole
/// heads.
fn shaped_plan(a: &Shaped<FlexTensor>, add: Option<&MixAddend<FlexTensor>>) -> Option<ShapedPlan> {
    let (sq, sv) = (a.q.layout().shape(), a.v.layout().shape());
    let ok = [&a.q, &a.k].iter().all(|x| x.dtype() == DType::F32 && x.layout().num_dims() == 4)
        && a.k.layout().shape() == sq
        && a.v.dtype() == DType::F32
        && sv.num_dims() == 3;
    if !ok {
        return None;
    }
    let (b, h, t, d) = (sq[0], sq[1], sq[2], sq[3]);
    let fits = sv[0] == b && sv[1] == t && sv[2].is_multiple_of(h) && [b, h, t, d, sv[2]].iter().all(|&x| x > 0);
    if !fits {
        return None;
    }
    let [gi, gs, gc] = [&a.gains[0], &a.gains[1], &a.gains[2]].map(|g| per_head(g, h));
    let (ga, gb) = match add {
        Some(m) => {
            let same = m.b.dtype() == DType::F32 && m.b.layout().shape() == sv;
            (Some(per_head(&m.ga, h).filter(|_| same)?), per_head(&m.gb, h)?)
        }
        None => (None, Vec::new()),
    };
    let bq = bias_values(&a.bq, h * d)?;
    Some(ShapedPlan { dims: [b, h, t, d, sv[2] / h], gi: gi?, gs: gs?, gc: gc?, ga, gb, bq })
}

fn forward(a: Shaped<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> (FlexTensor, FlexTensor) {
    let Some(plan) = shaped_plan(&a, add.as_ref()) else {
        return reference::shaped_attention_forward::<Flex>(a, add);
    };
    let [b, h, t, d, dv] = plan.dims;
    let width = h * dv;
    let (qh, kh) = (Heads::new(&a.q), Heads::new(&a.k));
    let v = a.v.to_contiguous();
    let bt = add.map(|m| m.b.to_contiguous());
    let vs: &[f32] = &v.storage()[..b * t * width];
    let bs: Option<&[f32]> = bt.as_ref().map(|x| &x.storage()[..b * t * width]);
    let (mut p, mut y) = (Fresh::new(b * h * t * t), Fresh::new(b * t * width));
    let mut weights = p.matrices(b * h, [t, t]).into_iter();
    let seqs: Vec<_> =
        y.parts(t * width).into_iter().map(|yq| (weights.by_ref().take(h).collect::<Vec<_>>(), yq)).collect();
    let cols = plan.columns(dv);
    let g = loops::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
    let (scale, causal) = (a.scale as f32, a.causal);
    // Per sequence: per head the scores, their softmax and the softmax
    // term (into a scratch `[t, width]` that stays in cache), then the
    // mix row by row.
    let done = Gemm::map_if(parallel(b * t * width), seqs, |q, (pq, yq), gemm| {
        let span = q * t * width..(q + 1) * t * width;
        let (vq, bq) = (&vs[span.clone()], bs.map(|x| &x[span]));
        let mut o = Fresh::new(t * width);
        let mut heads = Vec::with_capacity(h);
        let mut proofs = Vec::with_capacity(h);
        for (hi, (pi, oi)) in pq.into_iter().zip(o.heads([1, h, t, dv])).enumerate() {
            let i = q * h + hi;
            let vi = Mat::new(vq, hi * dv, [t, dv], [width as isize, 1]);
            let u = plan.bq.as_ref().map(|bias| key_shift(gemm, kh.at(i), &bias[hi * d..]));
            let (wi, wp) = attention_weights(gemm, pi, [qh.at(i), kh.at(i)], (scale, causal), u.as_deref());
            heads.push(gemm.into(oi, wi.mat(), vi).1);
            proofs.push(wp);
        }
        let o = o.finish(heads);
        let mut sum = vec![0.0f32; width];
        if !causal {
            vq.chunks(width).for_each(|row| simd::add_into(&mut sum, row));
        }
        // Each row into a scratch row in cache, then streamed out.
        let mut row = vec![0.0f32; width];
        let yp = yq.rows(width, false, |r, out| {
            let rows = r * width..(r + 1) * width;
            let x = loops::MixIn { v: &vq[rows.clone()], o: &o[rows.clone()], b: bq.map(|x| &x[rows]) };
            let inv = 1.0 / if causal { r + 1 } else { t } as f32;
            loops::mix_row(&mut row, x, &mut sum, g, inv, causal);
            out.stream(&row)
        });
        raw::fence();
        (proofs, yp)
    });
    let (pp, yp): (Vec<Vec<Written>>, Vec<Written>) = done.into_iter().unzip();
    let (p, y) = (p.finish(pp.into_iter().flatten()), y.finish(yp));
    (owned(y, v.layout().shape().clone()), owned(p, [b, h, t, t].into()))
}

fn backward(
    a: Shaped<FlexTensor>,
    add: Option<MixAddend<FlexTensor>>,
    p: FlexTensor,
    dy: FlexTensor,
    acc: Option<FlexTensor>,
) -> ShapedGrads<FlexTensor> {
    let plan = shaped_plan(&a, add.as_ref()).filter(|plan| {
        let [b, h, t, _, dv] = plan.dims;
        let fits = |x: &FlexTensor| x.dtype() == DType::F32 && x.layout().shape().as_slice() == [b, t, h * dv];
        p.dtype() == DType::F32
            && p.layout().shape().as_slice() == [b, h, t, t]
            && fits(&dy)
            && acc.as_ref().is_none_or(fits)
    });
    let Some(plan) = plan else {
        return reference::shaped_attention_backward::<Flex>(a, add, p, dy, acc);
    };
    let [b, h, t, d, dv] = plan.dims;
    let (n, width) = (b * h, h * dv);
    let (qh, kh) = (Heads::new(&a.q), Heads::new(&a.k));
    let (v, p, dy) = (a.v.to_contiguous(), p.to_contiguous(), dy.to_contiguous());
    let bt = add.as_ref().map(|m| m.b.to_contiguous());
    let len = b * t * width;
    let (vs, ps, gs): (&[f32], &[f32], &[f32]) = (&v.storage()[..len], &p.storage()[..n * t * t], &dy.storage()[..len]);
    let bs: Option<&[f32]> = bt.as_ref().map(|x| &x.storage()[..len]);
    // `dq`, `dk` and `db` fresh; `dv` added into `acc`, or fresh.
    let (mut dq, mut dk) = (Fresh::new(n * t * d), Fresh::new(n * t * d));
    let mut db = Fresh::new(if bs.is_some() { len } else { 0 });
    let mut acc = acc.map(Rows::new);
    let mut fresh = Fresh::new(if acc.is_some() { 0 } else { len });
    let dvs: Vec<Dv<'_>> = match acc.as_mut() {
        Some(rows) => rows.all().chunks_mut(t * width).map(Dv::Add).collect(),
        None => fresh.parts(t * width).into_iter().map(Dv::Fresh).collect(),
    };
    let mut dbs: Vec<Option<Out<'_>>> = match bs {
        Some(_) => db.parts(t * width).into_iter().map(Some).collect(),
        None => (0..b).map(|_| None).collect(),
    };
    let (mut dqs, mut dks) = (dq.heads([b, h, t, d]).into_iter(), dk.heads([b, h, t, d]).into_iter());
    let seqs: Vec<_> = dvs
        .into_iter()
        .zip(dbs.drain(..))
        .map(|(dv, db)| (dv, db, dqs.by_ref().take(h).collect::<Vec<_>>(), dks.by_ref().take(h).collect::<Vec<_>>()))
        .collect();
    let cols = plan.columns(dv);
    let g = loops::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
    let (scale, causal) = (a.scale as f32, a.causal);
    // Per sequence: the mix's part of `dv` (and `db`) row by row from
    // the last, then per head the attention's, the softmax gain folded
    // in. Returns the column sums of `dy` against `v`, the centre term
    // and `b`, per head `dy · o`, the sequence's part of the query
    // bias's gradient, and the proofs of what it wrote.
    let done = Gemm::map(seqs, |q, (dvq, dbq_out, dqq, dkq), gemm| {
        let base = q * t * width;
        let [mut si, mut sc, mut sb, mut unused, mut r] = [0, 1, 2, 3, 4].map(|_| vec![0.0f32; width]);
        let gq = &gs[base..base + t * width];
        if !causal {
            gq.chunks(width).for_each(|row| simd::add_into(&mut r, row));
            r.iter_mut().for_each(|x| *x /= t as f32);
        }
        let mut sums = loops::MixSums { r: &mut r, i: &mut si, s: &mut unused, c: &mut sc, b: &mut sb };
        let mut so = vec![0.0f64; h];
        let mut dbq = vec![0.0f32; if plan.bq.is_some() { h * d } else { 0 }];
        let (mut row_dv, mut row_db) = (vec![0.0f32; width], vec![0.0f32; width]);
        let mut proofs = Vec::new();
        // Fresh rows into scratch rows in cache, then streamed out.
        let (mut db_rows, db_join) = match dbq_out.map(|o| o.split(width)) {
            Some((rows, join)) => (rows.into_iter().map(Some).collect(), Some(join)),
            None => (Vec::new(), None),
        };
        let (mut dv_add, mut dv_rows, dv_join) = match dvq {
            Dv::Add(x) => (Some(x), Vec::new(), None),
            Dv::Fresh(o) => {
                let (rows, join) = o.split(width);
                (None, rows.into_iter().map(Some).collect::<Vec<_>>(), Some(join))
            }
        };
        let (mut dv_proofs, mut db_proofs) = (Vec::with_capacity(t), Vec::with_capacity(t));
        for row in (0..t).rev() {
            let at = base + row * width;
            // Rows last to first: the hardware prefetcher does not
            // follow, so ask for the rows two ahead.
            if row >= 2 {
                let next = at - 2 * width..at - width;
                raw::prefetch(&gs[next.clone()]);
                raw::prefetch(&vs[next.clone()]);
                if let Some(x) = bs {
                    raw::prefetch(&x[next.clone()]);
                }
                if let Some(x) = dv_add.as_deref() {
                    raw::prefetch(&x[(row - 2) * width..(row - 1) * width]);
                }
            }
            let inv = if causal { 1.0 / (row + 1) as f32 } else { 0.0 };
            let (gy, vr) = (&gs[at..at + width], &vs[at..at + width]);
            let branch = bs.map(|x| (&x[at..at + width], &mut row_db[..]));
            let out = match dv_add.as_deref_mut() {
                Some(x) => loops::Grad::Add(&mut x[row * width..(row + 1) * width]),
                None => loops::Grad::Set(&mut row_dv),
            };
            loops::shaped_back_row(out, gy, vr, branch, g, &mut sums, inv);
            if let Some(out) = db_rows.get_mut(row).and_then(Option::take) {
                db_proofs.push(out.stream(&row_db));
            }
            if let Some(out) = dv_rows.get_mut(row).and_then(Option::take) {
                dv_proofs.push(out.stream(&row_dv));
            }
        }
        raw::fence();
        proofs.extend(db_join.map(|j| (1, j.join(db_proofs).0)));
        let dv_all: &mut [f32] = match (dv_add, dv_join) {
            (Some(x), _) => x,
            (None, Some(j)) => {
                let (proof, data) = j.join(dv_proofs);
                proofs.push((0, proof));
                data
            }
            (None, None) => unreachable!("dv is added into or fresh"),
        };
        let mut ds = vec![0.0f32; t * t];
        let dv_heads = MatMut::heads(dv_all, [1, h, t, dv]);
        for (hi, ((mut dvi, dqi), dki)) in dv_heads.into_iter().zip(dqq).zip(dkq).enumerate() {
            let i = q * h + hi;
            let gi = Mat::new(gs, base + hi * dv, [t, dv], [width as isize, 1]);
            let vi = Mat::new(vs, base + hi * dv, [t, dv], [width as isize, 1]);
            let pi = Mat::rows(&ps[i * t * t..(i + 1) * t * t], t, t);
            let gain = cols[1][hi * dv];
            // dv += gs · pᵀ · dy (the mix's part is written above).
            gemm.product(&mut dvi, Some(gain), pi.t(), gi);
            // ds = gs · scale · p ⊙ (dp − Σ p ⊙ dp), dp = dy · vᵀ; the row
            // sums Σ p ⊙ dp are dy · o: the softmax gain's gradient.
            gemm.product(&mut MatMut::rows(&mut ds, t, t), None, gi, vi.t());
            for (row, w) in ds.chunks_mut(t).zip(ps[i * t * t..(i + 1) * t * t].chunks(t)) {
                so[hi] += f64::from(crate::kernels::attention::loops::softmax_backward(row, w, gain * scale));
            }
            let dsi = Mat::rows(&ds, t, t);
            // dq = ds · k: the key's bias adds (Σ_j ds_ij) · bk, and each
            // row of ds sums to zero.
            let (mut dqm, pq) = gemm.into(dqi, dsi, kh.at(i));
            let (mut dkm, pk) = gemm.into(dki, dsi.t(), qh.at(i));
            if let Some(bias) = &plan.bq {
                let (bias, part) = (&bias[hi * d..(hi + 1) * d], &mut dbq[hi * d..(hi + 1) * d]);
                query_bias_back(&ds, bias, &mut dqm, Some(&mut dkm), part);
            }
            proofs.push((2, pq));
            proofs.push((3, pk));
        }
        (([si, sc, sb], so, dbq), proofs)
    });
    let mut by: [Vec<Written>; 4] = Default::default();
    let mut per = Vec::with_capacity(b);
    for (part, proofs) in done {
        proofs.into_iter().for_each(|(k, w)| by[k].push(w));
        per.push(part);
    }
    let [pv, pb, pq, pk] = by;
    // Per head: the sums of `dy` against `v`, `o`, the centre term and
    // `b` over the batch and the head's columns.
    let mut heads = vec![[0.0f64; 4]; h];
    for ([si, sc, sb], so, _) in &per {
        for (hi, x) in heads.iter_mut().enumerate() {
            let part = |v: &[f32]| v[hi * dv..(hi + 1) * dv].iter().map(|&x| f64::from(x)).sum::<f64>();
            x[0] += part(si);
            x[1] += so[hi];
            x[2] += part(sc);
            x[3] += part(sb);
        }
    }
    let ga = |hi: usize| plan.ga.as_ref().map_or(1.0, |g| f64::from(g[hi]));
    let own = [&plan.gi, &plan.gs, &plan.gc];
    let sizes = a.gains.each_ref().map(|g| g.layout().num_elements());
    let dgains = [0, 1, 2].map(|k| group_sums(&(0..h).map(|hi| ga(hi) * heads[hi][k]).collect::<Vec<_>>(), sizes[k]));
    let shape = v.layout().shape().clone();
    let dv = match acc {
        Some(rows) => rows.tensor,
        None => owned(fresh.finish(pv), shape.clone()),
    };
    let addend = add.map(|m| {
        let dga: Vec<f64> = (0..h).map(|hi| (0..3).map(|k| f64::from(own[k][hi]) * heads[hi][k]).sum()).collect();
        let dgb: Vec<f64> = (0..h).map(|hi| heads[hi][3]).collect();
        let [na, nb] = [&m.ga, &m.gb].map(|g| g.layout().num_elements());
        [owned(db.finish(pb), shape.clone()), group_sums(&dga, na), group_sums(&dgb, nb)]
    });
    let dbq = plan.bq.as_ref().map(|_| vector(totals(per.iter().map(|(_, _, part)| part.as_slice()), h * d)));
    let (dq, dk) = (token_major(dq.finish(pq), [b, h, t, d]), token_major(dk.finish(pk), [b, h, t, d]));
    ShapedGrads { dq, dk, dv, dgains, addend, dbq }
}

/// Where a sequence's `dv` goes: added into a gradient from elsewhere, or
/// fresh.
enum Dv<'a> {
    Add(&'a mut [f32]),
    Fresh(Out<'a>),
}
