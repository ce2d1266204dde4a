//! Attention on the CPU, head by head: the scores, their softmax and the
//! output while in cache, and their backward, each product over the band
//! of keys that each block of queries sees (under a causal mask or a
//! window, most of the hidden keys are never visited); the weights kept
//! for the backward only under autodiff, and then stored by that band
//! alone (`[batch, heads, entries]`, [`Banded`]: about half of `t × t`
//! under a causal mask, a few blocks per block of queries under a window).
//! The shaped family's kernel is built from the same pieces.

use std::ops::Range;

use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::{loops, reference, score_heads, AttentionOps, Keys, Scores};
use crate::kernels::cpu::raw::{Band, Banded, BandedMut, Fresh, Gemm, Heads, Mat, MatMut, MatOut, Out, Written};
use crate::kernels::cpu::rows::{owned, token_major, vector, Rows};
use crate::kernels::cpu::simd;
use crate::kernels::tensor::{merge_heads, split_heads};

impl AttentionOps for Flex {
    fn softmax_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bq: Option<FlexTensor>,
        scores: Scores,
    ) -> FlexTensor {
        let v = split_heads::<Flex>(v, q.layout().shape()[1]);
        merge_heads::<Flex>(forward([q, k, v], bq, scores, false).0)
    }

    fn attention_forward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bq: Option<FlexTensor>,
        scores: Scores,
    ) -> (FlexTensor, FlexTensor) {
        match forward([q, k, v], bq, scores, true) {
            (o, Some(p)) => (o, p),
            (_, None) => unreachable!("the weights are kept when asked for"),
        }
    }

    fn attention_backward(
        qkv: [FlexTensor; 3],
        bq: Option<FlexTensor>,
        (p, _): (FlexTensor, Option<FlexTensor>),
        g: FlexTensor,
        (scores, acc): (Scores, Option<FlexTensor>),
        wants: [bool; 3],
    ) -> [Option<FlexTensor>; 4] {
        let [q, k, v] = &qkv;
        let dims = attention_dims(q, k, v).map(|dims| (dims, band(scores.keys, dims[2])));
        let dims = dims.filter(|(dims, band)| {
            let [b, h, t, _, dv] = *dims;
            p.dtype() == DType::F32
                && p.layout().shape().as_slice() == [b, h, band.entries()]
                && g.dtype() == DType::F32
                && g.layout().shape().as_slice() == [b, h, t, dv]
                && acc
                    .as_ref()
                    .is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape().as_slice() == [b, t, h * dv])
        });
        let plan = dims.and_then(|(dims, band)| Some((dims, band, bias_values(&bq, dims[1] * dims[3])?)));
        let Some(([b, h, t, d, dv], band, bias)) = plan else {
            let p = whole_weights(p, scores.keys, q);
            return reference::attention_backward::<Flex>(qkv, bq, p, g, (scores, acc), wants);
        };
        let (n, e, band) = (b * h, band.entries(), &band);
        let p = p.to_contiguous();
        let pv: &[f32] = &p.storage()[..n * e];
        let (qh, kh, vh, gh) = (Heads::new(q), Heads::new(k), Heads::new(v), Heads::new(&g));
        let [want_q, want_k, want_v] = wants;
        // With a query bias, `dq` is needed for its gradient.
        let (want_q, keep_q) = (want_q || bias.is_some(), want_q);
        let through_scores = want_q || want_k;
        // `dv` added into `acc`, or fresh; `dq`, `dk` fresh.
        let mut acc = acc.filter(|_| want_v).map(Rows::new);
        let [mut dq, mut dk, mut dvs] = [(d, want_q), (d, want_k), (dv, want_v && acc.is_none())]
            .map(|(w, wanted)| Fresh::new(if wanted { n * t * w } else { 0 }));
        let (dqs, dks) = (optional_heads(&mut dq, [b, h, t, d], want_q), optional_heads(&mut dk, [b, h, t, d], want_k));
        let dvs_out = optional_heads(&mut dvs, [b, h, t, dv], want_v && acc.is_none());
        let dv_add: Vec<Option<MatMut<'_>>> = match acc.as_mut() {
            Some(rows) => MatMut::heads(rows.all(), [b, h, t, dv]).into_iter().map(Some).collect(),
            None => (0..n).map(|_| None).collect(),
        };
        let work: Vec<_> = dqs.into_iter().zip(dks).zip(dvs_out.into_iter().zip(dv_add)).collect();
        let scale = scores.scale as f32;
        let done = Gemm::map(work, |i, ((dqi, dki), (dv_fresh, dv_add)), gemm| {
            let pi = Banded::new(&pv[i * e..(i + 1) * e], band);
            let mut proofs = Vec::new();
            // dv = pᵀ · g, fresh or added into a gradient from elsewhere.
            match (dv_fresh, dv_add) {
                (Some(out), _) => proofs.push((2, gemm.into_from_banded_t(out, pi, gh.at(i)).1)),
                (None, Some(mut into)) => gemm.product_from_banded_t(&mut into, Some(1.0), pi, gh.at(i)),
                (None, None) => {}
            }
            if !through_scores {
                return (proofs, Vec::new());
            }
            // dp = g · vᵀ, then ds in place, while in cache (the band's
            // entries alone).
            let mut ds = vec![0.0f32; e];
            let mut ds = BandedMut::new(&mut ds, band);
            gemm.product_banded(&mut ds, gh.at(i), vh.at(i).t());
            for ((_, _, row), (_, _, w)) in ds.rows().zip(pi.rows()) {
                loops::softmax_backward(row, w, scale);
            }
            if let Some(cap) = scores.cap {
                // The soft-cap's slope, from the scores formed again.
                let u = bias.as_ref().map(|bias| key_shift(gemm, kh.at(i), &bias[(i % h) * d..]));
                let mut s = vec![0.0f32; e];
                let mut s = BandedMut::new(&mut s, band);
                gemm.product_banded(&mut s, qh.at(i), kh.at(i).t());
                for ((r, cols, row), (_, _, sr)) in ds.rows().zip(s.rows()) {
                    let seen = scores.keys.range(r, t);
                    let at = seen.start - cols.start..seen.end - cols.start;
                    if let Some(u) = &u {
                        simd::add_into(&mut sr[at.clone()], &u[seen]);
                    }
                    loops::cap_slope(&mut row[at.clone()], &sr[at], scale, cap as f32);
                }
            }
            let dsi = ds.view();
            let mut dq = dqi.map(|out| gemm.into_from_banded(out, dsi, kh.at(i)));
            let mut dk = dki.map(|out| gemm.into_from_banded_t(out, dsi, qh.at(i)));
            let mut dbq = Vec::new();
            if let (Some(bias), Some((dq, _))) = (&bias, dq.as_mut()) {
                dbq = vec![0.0f32; d];
                let bias = &bias[(i % h) * d..(i % h + 1) * d];
                query_bias_back(dsi, bias, dq, dk.as_mut().map(|(dk, _)| dk), &mut dbq);
            }
            proofs.extend(dq.map(|(_, w)| (0, w)));
            proofs.extend(dk.map(|(_, w)| (1, w)));
            (proofs, dbq)
        });
        let mut by = [Vec::new(), Vec::new(), Vec::new()];
        let mut parts = Vec::with_capacity(n);
        for (proofs, dbq) in done {
            proofs.into_iter().for_each(|(j, w)| by[j].push(w));
            parts.push(dbq);
        }
        let dbq = bias.map(|_| {
            let mut sums = vec![0.0f64; h * d];
            for (i, part) in parts.iter().enumerate() {
                let hi = i % h;
                sums[hi * d..(hi + 1) * d].iter_mut().zip(part).for_each(|(a, &x)| *a += f64::from(x));
            }
            vector(sums.into_iter().map(|x| x as f32).collect())
        });
        let [pq, pk, pv] = by;
        let dv = want_v.then(|| match acc {
            Some(rows) => Flex::float_swap_dims(Flex::float_reshape(rows.tensor, [b, t, h, dv].into()), 1, 2),
            None => token_major(dvs.finish(pv), [b, h, t, dv]),
        });
        let dq = want_q.then(|| token_major(dq.finish(pq), [b, h, t, d])).filter(|_| keep_q);
        let dk = want_k.then(|| token_major(dk.finish(pk), [b, h, t, d]));
        [dq, dk, dv, dbq]
    }

    fn reads_output(_: &FlexTensor) -> bool {
        // The weights kept on their band (rank 3 too) are all it reads.
        false
    }

    fn softmax_scores(s: FlexTensor, scores: Scores) -> FlexTensor {
        if s.dtype() != DType::F32 {
            return reference::softmax_scores::<Flex>(s, scores);
        }
        let shape = s.layout().shape().clone();
        let rank = shape.num_dims();
        let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
        let heads = score_heads(&shape);
        let slopes = scores.slopes(heads);
        let mut out = Rows::new(s);
        out.for_each(|r, row| {
            let (i, slope) = (r % tq, slopes.as_ref().map(|m| m[r / tq % heads]));
            seen_softmax(row, 0, (i, scores.keys.range(i, tk)), (scores, slope))
        });
        out.tensor
    }

    fn softmax_scores_backward(p: FlexTensor, dp: FlexTensor, scale: f64) -> FlexTensor {
        if p.dtype() != DType::F32 || dp.dtype() != DType::F32 {
            return reference::softmax_scores_backward::<Flex>(p, dp, scale);
        }
        let p = p.to_contiguous();
        let mut out = Rows::new(dp);
        let tk = out.width();
        let pv: &[f32] = p.storage();
        let scale = scale as f32;
        out.for_each(|r, row| {
            loops::softmax_backward(row, &pv[r * tk..(r + 1) * tk], scale);
        });
        out.tensor
    }
}

/// Softmax attention on heads (see [`AttentionOps::attention_forward`]):
/// the output, token-major, and the weights when `keep` asks for them
/// (training's forward; otherwise each head's weights are formed in a
/// scratch of their own, and no `[batch, heads, t, t]` is ever held).
fn forward(
    [q, k, v]: [FlexTensor; 3],
    bq: Option<FlexTensor>,
    scores: Scores,
    keep: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let plan = attention_dims(&q, &k, &v).and_then(|dims| Some((dims, bias_values(&bq, dims[1] * dims[3])?)));
    let Some(([b, h, t, d, dv], bias)) = plan else {
        let (o, p) = reference::attention_forward::<Flex>(q, k, v, bq, scores);
        return (o, keep.then_some(p));
    };
    let n = b * h;
    let slopes = scores.slopes(h);
    let (qh, kh, vh) = (Heads::new(&q), Heads::new(&k), Heads::new(&v));
    let band = band(scores.keys, t);
    let e = band.entries();
    let (mut p, mut o) = (Fresh::new(if keep { n * e } else { 0 }), Fresh::new(n * t * dv));
    let heads: Vec<_> = kept_weights(&mut p, n, e, keep).into_iter().zip(o.heads([b, h, t, dv])).collect();
    // Per head: the scores, their softmax while in cache, the output,
    // over the band of keys the queries see.
    let proofs = Gemm::map(heads, |i, (pi, oi), gemm| {
        let mut scratch = Fresh::new(0);
        let (pi, keeping) = weights_or_scratch(pi, &mut scratch, e);
        let u = bias.as_ref().map(|bias| key_shift(gemm, kh.at(i), &bias[(i % h) * d..]));
        let slope = slopes.as_ref().map(|m| m[i % h]);
        let qk = [qh.at(i), kh.at(i)];
        let (weights, wp) = attention_weights(gemm, pi, qk, (scores, slope), u.as_deref(), &band);
        let (_, op) = gemm.into_from_banded(oi, weights.view(), vh.at(i));
        (keeping.then_some(wp), op)
    });
    let (wp, op): (Vec<Option<Written>>, Vec<Written>) = proofs.into_iter().unzip();
    let p = keep.then(|| owned(p.finish(wp.into_iter().flatten()), [b, h, e].into()));
    (token_major(o.finish(op), [b, h, t, dv]), p)
}

/// The `n` heads' weights to write (the `entries` of their band each,
/// [`Banded`]): parts of `p` when `keep` asks for them, else none (see
/// [`weights_or_scratch`]).
pub(crate) fn kept_weights(p: &mut Fresh, n: usize, entries: usize, keep: bool) -> Vec<Option<Out<'_>>> {
    some_if(keep, n, || p.parts(entries))
}

/// Where a head writes its weights (the `entries` of their band): the
/// kept ones, or a scratch made for them; and whether they are kept.
pub(crate) fn weights_or_scratch<'a>(kept: Option<Out<'a>>, scratch: &'a mut Fresh, entries: usize) -> (Out<'a>, bool) {
    match kept {
        Some(p) => (p, true),
        None => {
            *scratch = Fresh::new(entries);
            (scratch.parts(entries).remove(0), false)
        }
    }
}

/// Weights as the reference's backward takes them (`[batch, heads, t,
/// t]`, zeros outside the band) from what the forward kept: the band
/// alone (`[batch, heads, entries]`, under `keys`, `t` the tokens of `q:
/// [batch, heads, t, d]`), or already whole.
pub(crate) fn whole_weights(p: FlexTensor, keys: Keys, q: &FlexTensor) -> FlexTensor {
    let (sp, sq) = (p.layout().shape(), q.layout().shape());
    if sp.num_dims() != 3 || sq.num_dims() != 4 || p.dtype() != DType::F32 {
        return p;
    }
    let ([b, h], t) = ([sp[0], sp[1]], sq[2]);
    let band = band(keys, t);
    let e = band.entries();
    if sp[2] != e {
        return p;
    }
    let p = p.to_contiguous();
    let packed: &[f32] = &p.storage()[..b * h * e];
    let mut whole = vec![0.0f32; b * h * t * t];
    for (i, out) in whole.chunks_mut(t * t).enumerate() {
        Banded::new(&packed[i * e..], &band).unpack_into(out);
    }
    owned(whole, [b, h, t, t].into())
}

/// `[batch, heads, tokens, head_dim, value_dim]` of attention operands
/// that the fused kernel takes (f32, `q`, `k`: `[b, h, t, d]`, `v`: `[b, h,
/// t, dv]`, none empty), or `None`.
pub(crate) fn attention_dims(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> Option<[usize; 5]> {
    let ok = [q, k, v].iter().all(|x| x.dtype() == DType::F32 && x.layout().num_dims() == 4);
    if !ok {
        return None;
    }
    let (sq, sv) = (q.layout().shape(), v.layout().shape());
    let dims = [sq[0], sq[1], sq[2], sq[3], sv[3]];
    let fits = k.layout().shape() == sq && sv[..3] == sq[..3] && dims.iter().all(|&x| x > 0);
    fits.then_some(dims)
}

/// Rows of queries per block of a head's banded weights on the CPU:
/// small enough that a causal mask's blocks skip most of the keys no
/// query of theirs sees, large enough for whole products.
const BAND_ROWS: usize = 64;

/// The band of one head's `t × t` attention weights under `keys`: blocks
/// of queries and the keys they see; without a causal mask or a window
/// that hides a key, every entry, in one block.
pub(crate) fn band(keys: Keys, t: usize) -> Band {
    let block = if keys.causal || keys.windowed(t) { BAND_ROWS } else { t };
    // Both masks see ranges whose ends grow with the query.
    let seen = |r: Range<usize>| keys.range(r.start, t).start..keys.range(r.end - 1, t).end;
    Band::new([t, t], block, seen)
}

/// One head's attention weights: the softmax of the logits of `q · kᵀ +
/// 1 · uᵀ` (`q`, `k`: `t × d`; `u`, a shift per key, or none; the logits
/// as `scores` makes them, with the head's ALiBi slope when it takes
/// ALiBi's bias) formed in `p`, stored by `band` (the band of [`band`]:
/// its entries alone are formed), the keys a query does not see
/// (`scores.keys`) weighted 0.
pub(crate) fn attention_weights<'a>(
    gemm: &Gemm,
    p: Out<'a>,
    [q, k]: [Mat<'_>; 2],
    logits: (Scores, Option<f32>),
    shift: Option<&[f32]>,
    band: &'a Band,
) -> (BandedMut<'a>, Written) {
    let (mut p, proof) = gemm.into_banded(p, q, k.t(), band);
    let t = band.dims()[0];
    for (r, cols, row) in p.rows() {
        let seen = logits.0.keys.range(r, t);
        if let Some(u) = shift {
            simd::add_into(&mut row[seen.start - cols.start..seen.end - cols.start], &u[seen.clone()]);
        }
        seen_softmax(row, cols.start, (r, seen), logits);
    }
    (p, proof)
}

/// The softmax of query `i`'s logits of keys `seen` in place (ALiBi's bias
/// of `slope` on them when given), and zeros for the other keys of `row`,
/// which holds keys `first..first + row.len()` (`seen` among them).
fn seen_softmax(
    row: &mut [f32],
    first: usize,
    (i, seen): (usize, Range<usize>),
    (scores, slope): (Scores, Option<f32>),
) {
    let (before, from) = row.split_at_mut(seen.start - first);
    before.fill(0.0);
    let (mut scale, len) = (scores.scale as f32, seen.len());
    if let Some(cap) = scores.cap {
        loops::soft_cap(&mut from[..len], scale, cap as f32);
        scale = 1.0;
    }
    if let Some(m) = slope {
        loops::distance_bias(&mut from[..len], scale, m, i, seen.start);
        scale = 1.0;
    }
    // Neither capped nor biased, the scale is the softmax's (no pass of
    // its own).
    loops::softmax(from, len, scale);
}

/// The scores' shift per key from a query bias `bq` (one head's `d`
/// entries): `u = k · bq`, `u_j = bq · k_j` (`k`: `t × d`). With the bias,
/// a score is `(q_i + bq) · k_j = q_i · k_j + u_j`.
pub(crate) fn key_shift(gemm: &Gemm, k: Mat<'_>, bq: &[f32]) -> Vec<f32> {
    let [t, d] = k.dims();
    let mut u = vec![0.0f32; t];
    gemm.product(&mut MatMut::rows(&mut u, t, 1), None, k, Mat::rows(&bq[..d], d, 1));
    u
}

/// A query bias's part of one head's backward, from its score gradients
/// `ds` (`t × t` stored by its band, rows summing to zero): with `dk =
/// dsᵀ · (q + bq)`, adds `c_j · bq` to row `j` of `dk` (when given), `c`
/// the column sums of `ds`; adds the rows of `dq = ds · k` (exact without
/// the key's bias, whose term is `(Σ_j ds_ij) · bk = 0`) into `dbq`.
pub(crate) fn query_bias_back(
    ds: Banded<'_>,
    bq: &[f32],
    dq: &mut MatMut<'_>,
    dk: Option<&mut MatMut<'_>>,
    dbq: &mut [f32],
) {
    let t = dq.dims()[0];
    let mut c = vec![0.0f32; t];
    ds.rows().for_each(|(_, cols, row)| simd::add_into(&mut c[cols], row));
    let mut dk = dk;
    for (r, &cr) in c.iter().enumerate() {
        if let Some(dk) = dk.as_mut() {
            simd::add_scaled(dk.row(r), cr, bq);
        }
        simd::add_into(dbq, dq.row(r));
    }
}

/// A query bias's values when it suits the kernels (f32, `n` of them):
/// `Some(None)` without one, `None` when it does not suit.
pub(crate) fn bias_values(bq: &Option<FlexTensor>, n: usize) -> Option<Option<Vec<f32>>> {
    match bq {
        None => Some(None),
        Some(b) if b.dtype() == DType::F32 && b.layout().num_elements() == n => {
            Some(Some(b.to_contiguous().storage::<f32>()[..n].to_vec()))
        }
        Some(_) => None,
    }
}

/// `f`'s heads when `wanted`, else as many `None`s.
fn optional_heads(f: &mut Fresh, dims: [usize; 4], wanted: bool) -> Vec<Option<MatOut<'_>>> {
    some_if(wanted, dims[0] * dims[1], || f.heads(dims))
}

/// `make()`'s `n` items when `wanted`, else `n` `None`s.
fn some_if<T>(wanted: bool, n: usize, make: impl FnOnce() -> Vec<T>) -> Vec<Option<T>> {
    match wanted {
        true => make().into_iter().map(Some).collect(),
        false => (0..n).map(|_| None).collect(),
    }
}
