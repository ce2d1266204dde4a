//! The shaped mix on the CPU: `I`, `softmax` and `centre` terms with
//! their gains, and a block's other branch, row by row (forward and
//! backward).

use super::*;

/// The per-column gains of a shaped mix (`[width]` each) and the dims of
/// `v`, or `None` where the fused kernel does not apply (not f32, not
/// `[batch, tokens, width]`, `o` of another shape, a gain count that does
/// not divide the width).
pub(super) fn mix_setup(
    v: &FlexTensor,
    o: &FlexTensor,
    gains: &[FlexTensor; 3],
) -> Option<([Vec<f32>; 3], [usize; 3])> {
    let ok = v.dtype() == DType::F32
        && o.dtype() == DType::F32
        && v.layout().num_dims() == 3
        && o.layout().shape() == v.layout().shape()
        && gains.iter().all(|g| g.dtype() == DType::F32);
    if !ok {
        return None;
    }
    let dims = dims3(v);
    let w = dims[2];
    if dims[1] == 0 {
        return None;
    }
    let [gi, gs, gc] = gains;
    Some(([columns(gi, w)?, columns(gs, w)?, columns(gc, w)?], dims))
}

/// Per-column sums as one sum per group of `n` (a gain's gradient):
/// `[n]`, group `i` the columns `i·w/n .. (i+1)·w/n`.
pub(super) fn group_sums(col: &[f64], n: usize) -> FlexTensor {
    let per = col.len() / n.max(1);
    vector(col.chunks(per.max(1)).map(|g| g.iter().sum::<f64>() as f32).collect())
}

/// The operands of the shaped mix, and the addend, handed back where the
/// fused kernel does not apply.
pub(super) type MixOperands = (MixArgs<FlexTensor>, Option<MixAddend<FlexTensor>>);

/// The per-column gains of the mix's terms (times the mix's gain with an
/// addend) and of the addend's branch, the mix's own per-column gain, and
/// the dims of `v`; `None` where the fused kernel does not apply.
pub(super) struct MixPlan {
    pub(super) terms: [Vec<f32>; 3],
    pub(super) own: [Vec<f32>; 3],
    pub(super) ga: Option<Vec<f32>>,
    pub(super) gb: Vec<f32>,
    pub(super) dims: [usize; 3],
}

impl MixPlan {
    pub(super) fn gains(&self) -> simd::MixGains<'_> {
        let [i, s, c] = &self.terms;
        simd::MixGains { i, s, c, b: &self.gb }
    }
}

/// The shaped mix's `v`, `o` (and branch `b`), contiguous.
pub(super) struct MixData {
    pub(super) v: FlexTensor,
    pub(super) o: FlexTensor,
    pub(super) b: Option<FlexTensor>,
    pub(super) len: usize,
}

impl MixData {
    pub(super) fn new(m: &MixArgs<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> Self {
        let (v, o) = (m.v.to_contiguous(), m.o.to_contiguous());
        let len = v.layout().num_elements();
        MixData { v, o, b: add.map(|a| a.b.to_contiguous()), len }
    }

    pub(super) fn slices(&self) -> (&[f32], &[f32], Option<&[f32]>) {
        let n = self.len;
        (&self.v.storage()[..n], &self.o.storage()[..n], self.b.as_ref().map(|b| &b.storage()[..n]))
    }
}

pub(super) fn mix_plan(m: &MixArgs<FlexTensor>, add: Option<&MixAddend<FlexTensor>>) -> Option<MixPlan> {
    let (own, dims) = mix_setup(&m.v, &m.o, &m.gains)?;
    let w = dims[2];
    let (ga, gb) = match add {
        Some(a) => {
            let fits = a.b.dtype() == DType::F32 && a.b.layout().shape() == m.v.layout().shape();
            (Some(columns(&a.ga, w).filter(|_| fits)?), columns(&a.gb, w)?)
        }
        None => (None, Vec::new()),
    };
    let terms = own.clone().map(|mut g| {
        if let Some(ga) = &ga {
            g.iter_mut().zip(ga).for_each(|(x, a)| *x *= a);
        }
        g
    });
    Some(MixPlan { terms, own, ga, gb, dims })
}

/// The shaped mix (plus `ga`/`gb`-gained `b` with an addend), one pass per
/// sequence.
#[allow(clippy::result_large_err)]
pub(super) fn mix_forward(
    m: MixArgs<FlexTensor>,
    add: Option<MixAddend<FlexTensor>>,
) -> Result<FlexTensor, MixOperands> {
    let Some(plan) = mix_plan(&m, add.as_ref()) else {
        return Err((m, add));
    };
    let [_, t, w] = plan.dims;
    let causal = m.causal;
    let data = MixData::new(&m, add);
    let (len, (vs, os, bs)) = (data.len, data.slices());
    let g = plan.gains();
    let sequence = |q: usize, y: &mut [MaybeUninit<f32>]| {
        let span = q * t * w..(q + 1) * t * w;
        let (vq, oq, bq) = (&vs[span.clone()], &os[span.clone()], bs.map(|b| &b[span]));
        // The running sum of the rows (causal), or the sum of all.
        let mut sum = vec![0.0f32; w];
        if !causal {
            vq.chunks(w).for_each(|row| simd::add_into(&mut sum, row));
        }
        for (i, y) in y.chunks_mut(w).enumerate() {
            let rows = i * w..(i + 1) * w;
            let inv = 1.0 / if causal { i + 1 } else { t } as f32;
            let x = simd::MixIn { v: &vq[rows.clone()], o: &oq[rows.clone()], b: bq.map(|b| &b[rows]) };
            simd::mix_row(y, x, &mut sum, g, inv, causal);
        }
    };
    // SAFETY: `simd::mix_row` writes every element of every row of the
    // sequence.
    let out = unsafe { filled(len, t * w, sequence) };
    Ok(owned(out, data.v.layout().shape().clone()))
}

/// The gradients of the shaped mix (`dv` added into `acc` when given; `do`
/// over `dy`) and, with an addend, `[db, dga, dgb]`: one pass per sequence,
/// from the last token to the first.
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub(super) fn mix_backward(
    m: MixArgs<FlexTensor>,
    add: Option<MixAddend<FlexTensor>>,
    dy: FlexTensor,
    acc: Option<FlexTensor>,
) -> Result<
    (FlexTensor, FlexTensor, [FlexTensor; 3], Option<[FlexTensor; 3]>),
    (MixArgs<FlexTensor>, Option<MixAddend<FlexTensor>>, FlexTensor, Option<FlexTensor>),
> {
    let shape = m.v.layout().shape().clone();
    let fits = dy.dtype() == DType::F32
        && dy.layout().shape() == &shape
        && acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape() == &shape);
    let Some(plan) = mix_plan(&m, add.as_ref()).filter(|_| fits) else {
        return Err((m, add, dy, acc));
    };
    let [_, t, w] = plan.dims;
    let causal = m.causal;
    let sizes = m.gains.each_ref().map(|g| g.layout().num_elements());
    let add_sizes = add.as_ref().map(|a| [a.ga.layout().num_elements(), a.gb.layout().num_elements()]);
    let data = MixData::new(&m, add);
    let (len, (vs, os, bs)) = (data.len, data.slices());
    let g = plan.gains();
    // `do` over `dy` itself; `dv` added into `acc`, or fresh; `db` fresh.
    let mut d_o = Rows::new(dy);
    let mut acc = acc.map(Rows::new);
    let (mut fresh, mut db): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let sequence =
        |(q, ((mut dvq, dq), mut dbq)): (usize, ((simd::Grad, &mut [f32]), Option<&mut [MaybeUninit<f32>]>))| {
            let span = q * t * w..(q + 1) * t * w;
            let (vq, oq, bq) = (&vs[span.clone()], &os[span.clone()], bs.map(|b| &b[span]));
            let [mut si, mut ss, mut sc, mut sb] = [0, 1, 2, 3].map(|_| vec![0.0f32; w]);
            let mut r = vec![0.0f32; w];
            if !causal {
                // The mean's gradient per unit gain: Σ_i dy_i / t, the same
                // for every token.
                dq.chunks(w).for_each(|row| simd::add_into(&mut r, row));
                r.iter_mut().for_each(|x| *x /= t as f32);
            }
            let mut sums = simd::MixSums { r: &mut r, i: &mut si, s: &mut ss, c: &mut sc, b: &mut sb };
            for i in (0..t).rev() {
                let inv = if causal { 1.0 / (i + 1) as f32 } else { 0.0 };
                let rows = i * w..(i + 1) * w;
                let x = simd::MixIn { v: &vq[rows.clone()], o: &oq[rows.clone()], b: bq.map(|b| &b[rows.clone()]) };
                let (dy, db) = (&mut dq[rows.clone()], dbq.as_mut().map(|d| &mut d[rows.clone()]));
                simd::mix_back_row(dvq.part(rows), dy, x, db, g, &mut sums, inv);
            }
            [si, ss, sc, sb]
        };
    let add4 = |mut a: [Vec<f64>; 4], b: [Vec<f32>; 4]| {
        for (x, y) in a.iter_mut().zip(b) {
            x.iter_mut().zip(y).for_each(|(p, q)| *p += f64::from(q));
        }
        a
    };
    let zero = || [0, 1, 2, 3].map(|_| vec![0.0f64; w]);
    let dv: Vec<simd::Grad> = match acc.as_mut() {
        Some(rows) => rows.all().chunks_mut(t * w).map(simd::Grad::Add).collect(),
        None => {
            fresh.reserve_exact(len);
            fresh.spare_capacity_mut()[..len].chunks_mut(t * w).map(simd::Grad::Fresh).collect()
        }
    };
    let dbs: Vec<Option<&mut [MaybeUninit<f32>]>> = if bs.is_some() {
        db.reserve_exact(len);
        db.spare_capacity_mut()[..len].chunks_mut(t * w).map(Some).collect()
    } else {
        (0..dv.len()).map(|_| None).collect()
    };
    let dq: Vec<&mut [f32]> = d_o.all().chunks_mut(t * w).collect();
    let work: Vec<_> = dv.into_iter().zip(dq).zip(dbs).collect();
    let [si, ss, sc, sb] = if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        let per: Vec<[Vec<f32>; 4]> = work.into_par_iter().enumerate().map(sequence).collect();
        per.into_iter().fold(zero(), add4)
    } else {
        work.into_iter().enumerate().map(sequence).fold(zero(), add4)
    };
    let dv = match acc {
        Some(rows) => rows.tensor,
        None => {
            // SAFETY: `simd::mix_back_row` wrote every element of every
            // row of every sequence (`len` = sequences · t · w).
            unsafe { fresh.set_len(len) };
            owned(fresh, shape.clone())
        }
    };
    // Each term's gain gradient is the mix's gain times its sum; the mix's
    // gain gradient is Σ of each term's gain times its sum.
    let sums = [si, ss, sc];
    let scaled = |k: usize| -> Vec<f64> {
        match &plan.ga {
            Some(ga) => sums[k].iter().zip(ga).map(|(s, &a)| s * f64::from(a)).collect(),
            None => sums[k].clone(),
        }
    };
    let dgains = [0, 1, 2].map(|k| group_sums(&scaled(k), sizes[k]));
    let extra = add_sizes.map(|[na, nb]| {
        let dga: Vec<f64> = (0..w).map(|j| (0..3).map(|k| sums[k][j] * f64::from(plan.own[k][j])).sum()).collect();
        // SAFETY: `simd::mix_back_row` wrote every element of every row of
        // `db` (a branch `b` was given).
        unsafe { db.set_len(len) };
        [owned(db, shape.clone()), group_sums(&dga, na), group_sums(&sb, nb)]
    });
    Ok((dv, d_o.tensor, dgains, extra))
}
