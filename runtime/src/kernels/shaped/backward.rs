//! The shaped attention's backward on the CPU, per sequence: the mix's
//! part of `dv` (and of the other branch's `db`) row by row from the last
//! token, then per head the attention's, the softmax gain folded in.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::cpu::{shaped_plan, ShapedPlan};
use super::{loops, reference, MixAddend, Shaped, ShapedGrads};
use crate::kernels::attention::cpu::{band, query_bias_back, whole_weights};
use crate::kernels::attention::loops::softmax_backward;
use crate::kernels::attention::Keys;
use crate::kernels::cpu::raw::{self, Band, Banded, BandedMut, Fresh, Gemm, Heads, Mat, MatMut, MatOut, Out, Written};
use crate::kernels::cpu::rows::{group_sums, owned, token_major, totals, vector, Rows};

/// Where a sequence's `dv` goes: added into a gradient from elsewhere, or
/// fresh.
enum Dv<'a> {
    Add(&'a mut [f32]),
    Fresh(Out<'a>),
}

/// What one sequence writes: its rows of `dv` and `db`, its heads of `dq`
/// and `dk`.
struct Outs<'a> {
    dv: Dv<'a>,
    db: Option<Out<'a>>,
    dq: Vec<MatOut<'a>>,
    dk: Vec<MatOut<'a>>,
}

/// What one sequence sums: per column, `dy` against `v`, the centre term
/// and `b`; per head, `dy · o`; its part of the query bias's gradient.
struct Sums {
    columns: [Vec<f32>; 3],
    so: Vec<f64>,
    dbq: Vec<f32>,
}

/// The proofs of what a sequence wrote, by output: `dv`, `db`, `dq`, `dk`.
type Proofs = Vec<(usize, Written)>;

/// What every sequence reads.
struct Back<'a> {
    plan: &'a ShapedPlan,
    q: Heads<'a>,
    k: Heads<'a>,
    v: &'a [f32],
    /// The kept weights, each head's stored by `band` ([`Banded`]).
    p: &'a [f32],
    dy: &'a [f32],
    b: Option<&'a [f32]>,
    gains: loops::MixGains<'a>,
    softmax_gain: &'a [f32],
    scale: f32,
    keys: Keys,
    /// The band of each head's weights.
    band: Band,
}

pub(super) fn backward(
    a: Shaped<FlexTensor>,
    add: Option<MixAddend<FlexTensor>>,
    p: FlexTensor,
    dy: FlexTensor,
    acc: Option<FlexTensor>,
) -> ShapedGrads<FlexTensor> {
    let plan = shaped_plan(&a, add.as_ref()).map(|plan| {
        let band = band(a.keys, plan.dims[2]);
        (plan, band)
    });
    let plan = plan.filter(|(plan, band)| {
        let [b, h, t, _, dv] = plan.dims;
        let fits = |x: &FlexTensor| x.dtype() == DType::F32 && x.layout().shape().as_slice() == [b, t, h * dv];
        p.dtype() == DType::F32
            && p.layout().shape().as_slice() == [b, h, band.entries()]
            && fits(&dy)
            && acc.as_ref().is_none_or(fits)
    });
    let Some((plan, band)) = plan else {
        let p = whole_weights(p, a.keys, &a.q);
        return reference::shaped_attention_backward::<Flex>(a, add, p, dy, acc);
    };
    let [b, h, t, d, dv] = plan.dims;
    let (n, width, len, e) = (b * h, h * dv, b * t * h * dv, band.entries());
    let (v, p, dy) = (a.v.to_contiguous(), p.to_contiguous(), dy.to_contiguous());
    let bt = add.as_ref().map(|m| m.b.to_contiguous());
    let cols = plan.columns(dv);
    let back = Back {
        plan: &plan,
        q: Heads::new(&a.q),
        k: Heads::new(&a.k),
        v: &v.storage()[..len],
        p: &p.storage()[..n * e],
        dy: &dy.storage()[..len],
        b: bt.as_ref().map(|x| &x.storage()[..len]),
        gains: loops::MixGains { alpha: &cols[0], beta: &cols[1], gamma: &cols[2], branch: &cols[3] },
        softmax_gain: &cols[1],
        scale: a.scale as f32,
        keys: a.keys,
        band,
    };
    // `dq`, `dk` and `db` fresh; `dv` added into `acc`, or fresh.
    let (mut dq, mut dk) = (Fresh::new(n * t * d), Fresh::new(n * t * d));
    let mut db = Fresh::new(if back.b.is_some() { len } else { 0 });
    let mut acc = acc.map(Rows::new);
    let mut fresh = Fresh::new(if acc.is_some() { 0 } else { len });
    let dvs: Vec<Dv<'_>> = match acc.as_mut() {
        Some(rows) => rows.all().chunks_mut(t * width).map(Dv::Add).collect(),
        None => fresh.parts(t * width).into_iter().map(Dv::Fresh).collect(),
    };
    let mut dbs = match back.b {
        Some(_) => db.parts(t * width).into_iter().map(Some).collect(),
        None => Vec::new(),
    }
    .into_iter();
    let (mut dqs, mut dks) = (dq.heads([b, h, t, d]).into_iter(), dk.heads([b, h, t, d]).into_iter());
    let outs: Vec<Outs<'_>> = dvs
        .into_iter()
        .map(|dv| Outs {
            dv,
            db: dbs.next().flatten(),
            dq: dqs.by_ref().take(h).collect(),
            dk: dks.by_ref().take(h).collect(),
        })
        .collect();
    let done = Gemm::map(outs, |q, out, gemm| back.sequence(q, out, gemm));
    let mut by: [Vec<Written>; 4] = Default::default();
    let mut per = Vec::with_capacity(b);
    for (sums, proofs) in done {
        proofs.into_iter().for_each(|(k, w)| by[k].push(w));
        per.push(sums);
    }
    let [pv, pb, pq, pk] = by;
    let shape = v.layout().shape().clone();
    let dv = match acc {
        Some(rows) => rows.tensor,
        None => owned(fresh.finish(pv), shape.clone()),
    };
    let sizes = a.gains.each_ref().map(|g| g.layout().num_elements());
    let (dgains, [dbeta_sa, dbeta_ff]) = gain_grads(&plan, &per, sizes);
    let addend = add.map(|m| {
        let [na, nb] = [&m.beta_sa, &m.beta_ff].map(|g| g.layout().num_elements());
        [owned(db.finish(pb), shape.clone()), group_sums(&dbeta_sa, na), group_sums(&dbeta_ff, nb)]
    });
    let dbq = plan.bq.as_ref().map(|_| vector(totals(per.iter().map(|s| s.dbq.as_slice()), h * d)));
    let (dq, dk) = (token_major(dq.finish(pq), [b, h, t, d]), token_major(dk.finish(pk), [b, h, t, d]));
    ShapedGrads { dq, dk, dv, dgains, addend, dbq }
}

/// The gains' gradients from the sequences' sums: the mix's own three
/// (`[n]` each, as `sizes` says), and per head those of the sum's gains
/// `beta_sa`, `beta_ff`.
fn gain_grads(plan: &ShapedPlan, per: &[Sums], sizes: [usize; 3]) -> ([FlexTensor; 3], [Vec<f64>; 2]) {
    let [_, h, _, _, dv] = plan.dims;
    // Per head: the sums of `dy` against `v`, `o`, the centre term and
    // `b` over the batch and the head's columns.
    let mut heads = vec![[0.0f64; 4]; h];
    for s in per {
        let [si, sc, sb] = &s.columns;
        for (hi, x) in heads.iter_mut().enumerate() {
            let part = |v: &[f32]| v[hi * dv..(hi + 1) * dv].iter().map(|&x| f64::from(x)).sum::<f64>();
            *x = [x[0] + part(si), x[1] + s.so[hi], x[2] + part(sc), x[3] + part(sb)];
        }
    }
    let beta_sa = |hi: usize| plan.beta_sa.as_ref().map_or(1.0, |g| f64::from(g[hi]));
    let own = [&plan.alpha, &plan.beta, &plan.gamma];
    let dgains =
        [0, 1, 2].map(|k| group_sums(&(0..h).map(|hi| beta_sa(hi) * heads[hi][k]).collect::<Vec<_>>(), sizes[k]));
    let dbeta_sa = (0..h).map(|hi| (0..3).map(|k| f64::from(own[k][hi]) * heads[hi][k]).sum()).collect();
    let dbeta_ff = (0..h).map(|hi| heads[hi][3]).collect();
    (dgains, [dbeta_sa, dbeta_ff])
}

impl Back<'_> {
    /// Sequence `q`: the mix's rows, then the heads.
    fn sequence(&self, q: usize, out: Outs<'_>, gemm: &Gemm) -> (Sums, Proofs) {
        let (columns, dv, mut proofs) = self.mix_rows(q, out.dv, out.db);
        let (so, dbq) = self.heads(q, dv, [out.dq, out.dk], gemm, &mut proofs);
        (Sums { columns, so, dbq }, proofs)
    }

    /// The mix's part of sequence `q`'s `dv` (and `db`), row by row from
    /// the last; fresh rows into scratch rows in cache, then streamed out.
    /// Returns the column sums, `dv`'s rows, written, and the proofs.
    fn mix_rows<'a>(&self, q: usize, dv: Dv<'a>, db: Option<Out<'_>>) -> ([Vec<f32>; 3], &'a mut [f32], Proofs) {
        let [_, _, t, _, _] = self.plan.dims;
        let width = self.gains.alpha.len();
        let base = q * t * width;
        let [mut si, mut sc, mut sb, mut unused, mut r] = [0, 1, 2, 3, 4].map(|_| vec![0.0f32; width]);
        let centre = loops::CentreGrads::new(&self.dy[base..base + t * width], width, self.keys, &mut r);
        let mut sums = loops::MixSums { r: &mut r, alpha: &mut si, beta: &mut unused, gamma: &mut sc, branch: &mut sb };
        let (mut row_dv, mut row_db) = (vec![0.0f32; width], vec![0.0f32; width]);
        let (mut db_rows, db_join) = match db.map(|o| o.split(width)) {
            Some((rows, join)) => (rows.into_iter().map(Some).collect(), Some(join)),
            None => (Vec::new(), None),
        };
        let (mut dv_add, mut dv_rows, dv_join) = match dv {
            Dv::Add(x) => (Some(x), Vec::new(), None),
            Dv::Fresh(o) => {
                let (rows, join) = o.split(width);
                (None, rows.into_iter().map(Some).collect::<Vec<_>>(), Some(join))
            }
        };
        let (mut dv_proofs, mut db_proofs) = (Vec::with_capacity(t), Vec::with_capacity(t));
        for row in (0..t).rev() {
            let at = base + row * width;
            // Rows last to first: the hardware prefetcher does not follow,
            // so ask for the rows two ahead.
            if row >= 2 {
                let next = at - 2 * width..at - width;
                [Some(self.dy), Some(self.v), self.b]
                    .into_iter()
                    .flatten()
                    .for_each(|x| raw::prefetch(&x[next.clone()]));
                if let Some(x) = dv_add.as_deref() {
                    raw::prefetch(&x[(row - 2) * width..(row - 1) * width]);
                }
            }
            let inv = centre.row(row, sums.r);
            let branch = self.b.map(|x| (&x[at..at + width], &mut row_db[..]));
            let out = match dv_add.as_deref_mut() {
                Some(x) => loops::Grad::Add(&mut x[row * width..(row + 1) * width]),
                None => loops::Grad::Set(&mut row_dv),
            };
            loops::shaped_back_row(
                out,
                &self.dy[at..at + width],
                &self.v[at..at + width],
                branch,
                self.gains,
                &mut sums,
                inv,
            );
            if let Some(out) = db_rows.get_mut(row).and_then(Option::take) {
                db_proofs.push(out.stream(&row_db));
            }
            if let Some(out) = dv_rows.get_mut(row).and_then(Option::take) {
                dv_proofs.push(out.stream(&row_dv));
            }
        }
        raw::fence();
        let mut proofs: Proofs = db_join.map(|j| (1, j.join(db_proofs).0)).into_iter().collect();
        let dv = match (dv_add, dv_join) {
            (Some(x), _) => x,
            (None, Some(j)) => {
                let (proof, data) = j.join(dv_proofs);
                proofs.push((0, proof));
                data
            }
            (None, None) => unreachable!("dv is added into or fresh"),
        };
        ([si, sc, sb], dv, proofs)
    }

    /// Sequence `q`'s heads: the attention's part of `dv`, then `dq` and
    /// `dk` from the scores' gradient, the softmax gain folded in. Returns
    /// per head `dy · o` (the softmax gain's gradient) and the sequence's
    /// part of the query bias's.
    fn heads(
        &self,
        q: usize,
        dv: &mut [f32],
        [dqs, dks]: [Vec<MatOut<'_>>; 2],
        gemm: &Gemm,
        proofs: &mut Proofs,
    ) -> (Vec<f64>, Vec<f32>) {
        let [_, h, t, d, dvw] = self.plan.dims;
        let (width, base) = (h * dvw, q * t * h * dvw);
        let mut so = vec![0.0f64; h];
        let mut dbq = vec![0.0f32; if self.plan.bq.is_some() { h * d } else { 0 }];
        // Every head's, stored by the band.
        let (band, e) = (&self.band, self.band.entries());
        let mut ds = vec![0.0f32; e];
        let mut ds = BandedMut::new(&mut ds, band);
        let dv_heads = MatMut::heads(dv, [1, h, t, dvw]);
        for (hi, ((mut dvi, dqi), dki)) in dv_heads.into_iter().zip(dqs).zip(dks).enumerate() {
            let i = q * h + hi;
            let dyi = Mat::new(self.dy, base + hi * dvw, [t, dvw], [width as isize, 1]);
            let vi = Mat::new(self.v, base + hi * dvw, [t, dvw], [width as isize, 1]);
            let (p, gain) = (Banded::new(&self.p[i * e..(i + 1) * e], band), self.softmax_gain[hi * dvw]);
            // dv += beta · pᵀ · dy (the mix's part is written already).
            gemm.product_from_banded_t(&mut dvi, Some(gain), p, dyi);
            // ds = beta · scale · p ⊙ (dp − Σ p ⊙ dp), dp = dy · vᵀ; the row
            // sums Σ p ⊙ dp are dy · o: the softmax gain's gradient.
            gemm.product_banded(&mut ds, dyi, vi.t());
            for ((_, _, row), (_, _, w)) in ds.rows().zip(p.rows()) {
                so[hi] += f64::from(softmax_backward(row, w, gain * self.scale));
            }
            let dsi = ds.view();
            // dq = ds · k: the key's bias adds (Σ_j ds_ij) · bk, and each
            // row of ds sums to zero.
            let (mut dqm, pq) = gemm.into_from_banded(dqi, dsi, self.k.at(i));
            let (mut dkm, pk) = gemm.into_from_banded_t(dki, dsi, self.q.at(i));
            if let Some(bias) = &self.plan.bq {
                let (bias, part) = (&bias[hi * d..(hi + 1) * d], &mut dbq[hi * d..(hi + 1) * d]);
                query_bias_back(dsi, bias, &mut dqm, Some(&mut dkm), part);
            }
            proofs.extend([(2, pq), (3, pk)]);
        }
        (so, dbq)
    }
}
