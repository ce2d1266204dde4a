//! The shaped attention on the CPU: per sequence, per head the scores,
//! their softmax and the softmax term into a scratch that stays in cache,
//! then the mix (and the block's gained sum) row by row; the backward the
//! other way round. Built from the attention family's pieces.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::sync::atomic::AtomicU64;

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::mix::{mix_backward, mix_forward};
use super::{loops, reference, MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::cpu::{attention_weights, bias_values, key_shift, map_heads, query_bias_back};
use crate::kernels::cpu::raw::{self, commit, filled, product, token_major, Dst, Heads, Operand};
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
    let mut p: Vec<f32> = Vec::with_capacity(b * h * t * t);
    let pd = Dst(p.as_mut_ptr());
    let cols = plan.columns(dv);
    let g = loops::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
    let clock = AtomicU64::new(0);
    let (scale, causal) = (a.scale as f32, a.causal);
    // Per sequence: per head the scores, their softmax and the softmax
    // term (into a scratch `[t, width]` that stays in cache), then the
    // mix row by row.
    let sequence = |q: usize, y: &mut [MaybeUninit<f32>]| {
        let span = q * t * width..(q + 1) * t * width;
        let (vq, bq) = (&vs[span.clone()], bs.map(|x| &x[span]));
        let mut o: Vec<f32> = Vec::with_capacity(t * width);
        for hi in 0..h {
            let i = q * h + hi;
            let vi = Operand { ptr: vq[hi * dv..].as_ptr(), rs: width as isize, cs: 1 };
            // SAFETY: the operands lie in their storage (`Heads` reads
            // the layouts; `v` is contiguous `[b, t, width]`); head `i`
            // writes its `t × t` weights at `i·t·t` of `p` (within
            // capacity, disjoint between heads) and its `dv` columns of
            // the scratch `o`; each is read after it is written.
            unsafe {
                let u = plan.bq.as_ref().map(|bias| key_shift(kh.at(i), &bias[hi * d..], [t, d], &clock));
                let (at, w) = (pd.at(i * t * t), [t, d]);
                let weights = attention_weights(at, qh.at(i), kh.at(i), w, (scale, causal), u.as_deref(), &clock);
                product([t, dv, t], o.as_mut_ptr().add(hi * dv), width, None, weights, vi, &clock);
            }
        }
        // SAFETY: the heads wrote every column of every row of `o`.
        unsafe { o.set_len(t * width) };
        let mut sum = vec![0.0f32; width];
        if !causal {
            vq.chunks(width).for_each(|row| simd::add_into(&mut sum, row));
        }
        // Each row into a scratch row in cache, then streamed out.
        let mut row = vec![0.0f32; width];
        for (r, out) in y.chunks_mut(width).enumerate() {
            let rows = r * width..(r + 1) * width;
            let x = loops::MixIn { v: &vq[rows.clone()], o: &o[rows.clone()], b: bq.map(|x| &x[rows]) };
            let inv = 1.0 / if causal { r + 1 } else { t } as f32;
            // SAFETY: the scratch row is initialised; `loops::mix_row`
            // writes all `width` of its elements.
            let scratch = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), width) };
            loops::mix_row(scratch, x, &mut sum, g, inv, causal);
            raw::stream(out, &row);
        }
        raw::fence();
    };
    // As `filled` runs the sequences.
    let threads = if parallel(b * t * width) { rayon::current_num_threads().min(b) } else { 1 };
    // SAFETY: every row of the sequence is streamed whole from a
    // scratch row `loops::mix_row` wrote.
    let y = unsafe { filled(b * t * width, t * width, sequence) };
    commit(&clock, threads);
    // SAFETY: the heads wrote all `b·h·t·t` weights.
    unsafe { p.set_len(b * h * t * t) };
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
    let (mut dq, mut dk): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n * t * d), Vec::with_capacity(n * t * d));
    let mut acc = acc.map(Rows::new);
    let mut fresh: Vec<f32> = if acc.is_some() { Vec::new() } else { Vec::with_capacity(len) };
    let mut db: Vec<f32> = if bs.is_some() { Vec::with_capacity(len) } else { Vec::new() };
    let (dqd, dkd, dbd) = (Dst(dq.as_mut_ptr()), Dst(dk.as_mut_ptr()), Dst(db.as_mut_ptr()));
    let dvd = Dst(match acc.as_mut() {
        Some(rows) => rows.all().as_mut_ptr(),
        None => fresh.as_mut_ptr(),
    });
    let adding = acc.is_some();
    let cols = plan.columns(dv);
    let g = loops::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
    let clock = AtomicU64::new(0);
    let (scale, causal) = (a.scale as f32, a.causal);
    // Per sequence: the mix's part of `dv` (and `db`) row by row from
    // the last, then per head the attention's, the softmax gain folded
    // in. Returns the column sums of `dy` against `v`, the centre term
    // and `b`, per head `dy · o`, and the sequence's part of the query
    // bias's gradient.
    let sequence = |q: usize| -> ([Vec<f32>; 3], Vec<f64>, Vec<f32>) {
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
        // SAFETY: the operands lie in their storage (`Heads` reads the
        // layouts; `v`, `b`, `dy`, `p` are contiguous); sequence `q`
        // writes only its own rows of `dv` (in `acc`'s storage: unique,
        // of that shape, initialised; or within capacity) and of `db`,
        // its heads' rows of the token-major `dq`, `dk`, and its
        // scratch `ds`; each is read only after it is written.
        unsafe {
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
                    if adding {
                        raw::prefetch(std::slice::from_raw_parts(dvd.at(next.start), width));
                    }
                }
                let inv = if causal { 1.0 / (row + 1) as f32 } else { 0.0 };
                let (gy, vr) = (&gs[at..at + width], &vs[at..at + width]);
                // Fresh rows into scratch in cache (`shaped_back_row`
                // writes every element of both), then streamed out.
                let scratch = |row: &mut Vec<f32>| std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), width);
                let branch = bs.map(|x| (&x[at..at + width], scratch(&mut row_db)));
                let out = match adding {
                    true => loops::Grad::Add(std::slice::from_raw_parts_mut(dvd.at(at), width)),
                    false => loops::Grad::Fresh(scratch(&mut row_dv)),
                };
                loops::shaped_back_row(out, gy, vr, branch, g, &mut sums, inv);
                if bs.is_some() {
                    let out = std::slice::from_raw_parts_mut(dbd.at(at).cast::<MaybeUninit<f32>>(), width);
                    raw::stream(out, &row_db);
                }
                if !adding {
                    let out = std::slice::from_raw_parts_mut(dvd.at(at).cast::<MaybeUninit<f32>>(), width);
                    raw::stream(out, &row_dv);
                }
            }
            raw::fence();
            let mut ds: Vec<f32> = Vec::with_capacity(t * t);
            for hi in 0..h {
                let i = q * h + hi;
                let token = |w: usize| q * t * h * w + hi * w;
                let gi = Operand { ptr: gs[base + hi * dv..].as_ptr(), rs: width as isize, cs: 1 };
                let vi = Operand { ptr: vs[base + hi * dv..].as_ptr(), rs: width as isize, cs: 1 };
                let pi = Operand { ptr: ps[i * t * t..].as_ptr(), rs: t as isize, cs: 1 };
                let gain = cols[1][hi * dv];
                // dv += gs · pᵀ · dy (the mix's part is written above).
                product([t, dv, t], dvd.at(base + hi * dv), width, Some(gain), pi.transposed(), gi, &clock);
                // ds = gs · scale · p ⊙ (dp − Σ p ⊙ dp), dp = dy · vᵀ;
                // the row sums Σ p ⊙ dp are dy · o: the softmax gain's
                // gradient.
                product([t, t, dv], ds.as_mut_ptr(), t, None, gi, vi.transposed(), &clock);
                ds.set_len(t * t);
                for (row, w) in ds.chunks_mut(t).zip(ps[i * t * t..(i + 1) * t * t].chunks(t)) {
                    so[hi] += f64::from(crate::kernels::attention::loops::softmax_backward(row, w, gain * scale));
                }
                let dsi = Operand { ptr: ds.as_ptr(), rs: t as isize, cs: 1 };
                // dq = ds · k: the key's bias adds (Σ_j ds_ij) · bk,
                // and each row of ds sums to zero.
                product([t, d, t], dqd.at(token(d)), h * d, None, dsi, kh.at(i), &clock);
                product([t, d, t], dkd.at(token(d)), h * d, None, dsi.transposed(), qh.at(i), &clock);
                if let Some(bias) = &plan.bq {
                    let (bias, part) = (&bias[hi * d..(hi + 1) * d], &mut dbq[hi * d..(hi + 1) * d]);
                    query_bias_back(&ds, [t, d, h * d], bias, dqd.at(token(d)), Some(dkd.at(token(d))), part);
                }
                ds.set_len(0);
            }
        }
        ([si, sc, sb], so, dbq)
    };
    let (per, threads) = map_heads(b, sequence);
    commit(&clock, threads);
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
    // SAFETY: every head wrote its `t × w` rows of the output.
    let token_major = |data: Vec<f32>, w: usize| unsafe { token_major(data, [b, h, t, w]) };
    let shape = v.layout().shape().clone();
    let dv = match acc {
        Some(rows) => rows.tensor,
        None => {
            // SAFETY: every sequence wrote every element of its rows.
            unsafe { fresh.set_len(len) };
            owned(fresh, shape.clone())
        }
    };
    let addend = add.map(|m| {
        let dga: Vec<f64> = (0..h).map(|hi| (0..3).map(|k| f64::from(own[k][hi]) * heads[hi][k]).sum()).collect();
        let dgb: Vec<f64> = (0..h).map(|hi| heads[hi][3]).collect();
        // SAFETY: with a branch, every sequence wrote every element of
        // its rows of `db`.
        unsafe { db.set_len(len) };
        let [na, nb] = [&m.ga, &m.gb].map(|g| g.layout().num_elements());
        [owned(db, shape.clone()), group_sums(&dga, na), group_sums(&dgb, nb)]
    });
    let dbq = plan.bq.as_ref().map(|_| vector(totals(per.iter().map(|(_, _, part)| part.as_slice()), h * d)));
    ShapedGrads { dq: token_major(dq, d), dk: token_major(dk, d), dv, dgains, addend, dbq }
}
