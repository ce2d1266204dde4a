//! Attention on the CPU, head by head: the scores, their softmax and the
//! output while in cache, and their backward. The shaped family's kernel
//! is built from the same pieces.

#![allow(unsafe_code)]

use std::sync::atomic::AtomicU64;

use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{loops, reference, AttentionOps};
use crate::kernels::cpu::raw::{commit, product, token_major, Dst, Heads, Operand};
use crate::kernels::cpu::rows::{owned, vector, Rows};
use crate::kernels::cpu::simd;

impl AttentionOps for Flex {
    fn attention_forward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bq: Option<FlexTensor>,
        (scale, causal): (f64, bool),
    ) -> (FlexTensor, FlexTensor) {
        forward(q, k, v, bq, (scale, causal))
    }

    fn attention_backward(
        qkv: [FlexTensor; 3],
        bq: Option<FlexTensor>,
        p: FlexTensor,
        g: FlexTensor,
        (scale, acc): (f64, Option<FlexTensor>),
        wants: [bool; 3],
    ) -> [Option<FlexTensor>; 4] {
        backward(qkv, bq, p, g, (scale, acc), wants)
    }

    fn softmax_scores(s: FlexTensor, scale: f64, causal: bool) -> FlexTensor {
        if s.dtype() != DType::F32 {
            return reference::softmax_scores::<Flex>(s, scale, causal);
        }
        let shape = s.layout().shape().clone();
        let (tq, tk) = (shape[shape.num_dims() - 2], shape[shape.num_dims() - 1]);
        let mut out = Rows::new(s);
        let scale = scale as f32;
        out.for_each(|r, row| {
            // Row `i` of its matrix sees columns `0..=i`.
            let seen = if causal { (r % tq + 1).min(tk) } else { tk };
            loops::softmax(row, seen, scale);
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

/// Runs `head(i)` for every head `i < n`, on several threads when there
/// are; returns what each head returned (in head order) and how many
/// threads ran them.
pub(crate) fn map_heads<T: Send>(n: usize, head: impl Fn(usize) -> T + Sync + Send) -> (Vec<T>, usize) {
    if rayon::current_num_threads() > 1 {
        ((0..n).into_par_iter().map(head).collect(), rayon::current_num_threads().min(n))
    } else {
        ((0..n).map(head).collect(), 1)
    }
}

/// One head's attention weights `softmax(scale · (q · kᵀ + 1 · uᵀ) (+
/// causal mask))` (`q`, `k`: `t × d`; `u`, a shift per key, or none)
/// written at `p` (`t × t`, row-major); returns them as an operand.
///
/// # Safety
/// As for [`product`]: `q`'s and `k`'s elements are live, `p`'s `t × t`
/// are writable and touched by no other thread meanwhile.
pub(crate) unsafe fn attention_weights(
    p: *mut f32,
    q: Operand,
    k: Operand,
    [t, d]: [usize; 2],
    (scale, causal): (f32, bool),
    shift: Option<&[f32]>,
    clock: &AtomicU64,
) -> Operand {
    // SAFETY: as the caller promises; the rows are read after the product
    // wrote all of them.
    unsafe {
        product([t, t, d], p, t, None, q, k.transposed(), clock);
        let rows = std::slice::from_raw_parts_mut(p, t * t);
        for (r, row) in rows.chunks_mut(t).enumerate() {
            let seen = if causal { r + 1 } else { t };
            if let Some(u) = shift {
                simd::add_into(&mut row[..seen], &u[..seen]);
            }
            loops::softmax(row, seen, scale);
        }
    }
    Operand { ptr: p, rs: t as isize, cs: 1 }
}

/// The scores' shift per key from a query bias `bq` (one head's `d`
/// entries): `u = k · bq`, `u_j = bq · k_j` (`k`: `t × d`). With the bias,
/// a score is `(q_i + bq) · k_j = q_i · k_j + u_j`.
///
/// # Safety
/// As for [`product`]: `k`'s elements are live.
pub(crate) unsafe fn key_shift(k: Operand, bq: &[f32], [t, d]: [usize; 2], clock: &AtomicU64) -> Vec<f32> {
    let mut u: Vec<f32> = Vec::with_capacity(t);
    let b = Operand { ptr: bq.as_ptr(), rs: 1, cs: 1 };
    // SAFETY: as the caller promises; `bq` holds `d` entries, `u` room for
    // `t`, all written by the product.
    unsafe {
        product([t, 1, d], u.as_mut_ptr(), 1, None, k, b, clock);
        u.set_len(t);
    }
    u
}

/// A query bias's part of one head's backward, from its score gradients
/// `ds` (`t × t`, rows summing to zero): with `dk = dsᵀ · (q + bq)`, adds
/// `c_j · bq` to row `j` of `dk` (when given), `c` the column sums of `ds`;
/// adds the rows of `dq = ds · k` (exact without the key's bias, whose
/// term is `(Σ_j ds_ij) · bk = 0`) into `dbq`. Rows of `d`, `rs` apart.
///
/// # Safety
/// `dq`'s and `dk`'s `t` rows are initialised and touched by no other
/// thread meanwhile.
pub(crate) unsafe fn query_bias_back(
    ds: &[f32],
    [t, d, rs]: [usize; 3],
    bq: &[f32],
    dq: *const f32,
    dk: Option<*mut f32>,
    dbq: &mut [f32],
) {
    let mut c = vec![0.0f32; t];
    ds.chunks(t).take(t).for_each(|row| simd::add_into(&mut c, row));
    for (r, &cr) in c.iter().enumerate() {
        // SAFETY: as the caller promises; row `r` lies at `r·rs`.
        unsafe {
            if let Some(dk) = dk {
                simd::add_scaled(std::slice::from_raw_parts_mut(dk.add(r * rs), d), cr, bq);
            }
            simd::add_into(dbq, std::slice::from_raw_parts(dq.add(r * rs), d));
        }
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

/// [`map_heads`] for heads that return nothing: how many threads ran them.
pub(crate) fn each_head(n: usize, head: impl Fn(usize) + Sync + Send) -> usize {
    map_heads(n, head).1
}

fn forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bq: Option<FlexTensor>,
    (scale, causal): (f64, bool),
) -> (FlexTensor, FlexTensor) {
    let plan = attention_dims(&q, &k, &v).and_then(|dims| Some((dims, bias_values(&bq, dims[1] * dims[3])?)));
    let Some(([b, h, t, d, dv], bias)) = plan else {
        return reference::attention_forward::<Flex>(q, k, v, bq, (scale, causal));
    };
    let n = b * h;
    let (qh, kh, vh) = (Heads::new(&q), Heads::new(&k), Heads::new(&v));
    let (mut p, mut o): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n * t * t), Vec::with_capacity(n * t * dv));
    let (pd, od) = (Dst(p.as_mut_ptr()), Dst(o.as_mut_ptr()));
    let clock = AtomicU64::new(0);
    let scale = scale as f32;
    // Per head: the scores, their softmax while in cache, the output.
    let head = |i: usize| {
        // SAFETY: the operands' matrices lie in their storage (`Heads`
        // reads each tensor's own layout); head `i` writes the `t × t`
        // weights at `i·t·t` of `p` and its `t × dv` rows of the
        // token-major `o` (row stride `h·dv`), within the capacities
        // and disjoint between heads; the weights are read only after
        // the product wrote all of them.
        unsafe {
            let u = bias.as_ref().map(|bias| key_shift(kh.at(i), &bias[(i % h) * d..], [t, d], &clock));
            let (at, w) = (pd.at(i * t * t), [t, d]);
            let weights = attention_weights(at, qh.at(i), kh.at(i), w, (scale, causal), u.as_deref(), &clock);
            let oi = od.at((i / h) * t * h * dv + (i % h) * dv);
            product([t, dv, t], oi, h * dv, None, weights, vh.at(i), &clock);
        }
    };
    let threads = each_head(n, head);
    commit(&clock, threads);
    // SAFETY: the heads wrote all `n·t·t` weights and `n·t·dv` outputs.
    let o = unsafe {
        p.set_len(n * t * t);
        token_major(o, [b, h, t, dv])
    };
    (o, owned(p, [b, h, t, t].into()))
}

fn backward(
    qkv: [FlexTensor; 3],
    bq: Option<FlexTensor>,
    p: FlexTensor,
    g: FlexTensor,
    (scale, acc): (f64, Option<FlexTensor>),
    wants: [bool; 3],
) -> [Option<FlexTensor>; 4] {
    let [q, k, v] = &qkv;
    let dims = attention_dims(q, k, v).filter(|&[b, h, t, _, dv]| {
        p.dtype() == DType::F32
            && p.layout().shape().as_slice() == [b, h, t, t]
            && g.dtype() == DType::F32
            && g.layout().shape().as_slice() == [b, h, t, dv]
            && acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape().as_slice() == [b, t, h * dv])
    });
    let plan = dims.and_then(|dims| Some((dims, bias_values(&bq, dims[1] * dims[3])?)));
    let Some(([b, h, t, d, dv], bias)) = plan else {
        return reference::attention_backward::<Flex>(qkv, bq, p, g, (scale, acc), wants);
    };
    let n = b * h;
    let p = p.to_contiguous();
    let pv: &[f32] = &p.storage()[..n * t * t];
    let (qh, kh, vh, gh) = (Heads::new(q), Heads::new(k), Heads::new(v), Heads::new(&g));
    let [want_q, want_k, want_v] = wants;
    // With a query bias, `dq` is needed for its gradient.
    let (want_q, keep_q) = (want_q || bias.is_some(), want_q);
    let scores = want_q || want_k;
    let fresh = |len: usize, wanted: bool| if wanted { Vec::with_capacity(len) } else { Vec::new() };
    let (mut dq, mut dk): (Vec<f32>, Vec<f32>) = (fresh(n * t * d, want_q), fresh(n * t * d, want_k));
    let mut acc = acc.filter(|_| want_v).map(Rows::new);
    let mut dvs: Vec<f32> = fresh(n * t * dv, want_v && acc.is_none());
    let (dqd, dkd) = (Dst(dq.as_mut_ptr()), Dst(dk.as_mut_ptr()));
    let dvd = Dst(match acc.as_mut() {
        Some(rows) => rows.all().as_mut_ptr(),
        None => dvs.as_mut_ptr(),
    });
    let read_dv = acc.is_some();
    let clock = AtomicU64::new(0);
    let scale = scale as f32;
    let head = |i: usize| {
        let pi = Operand { ptr: pv[i * t * t..].as_ptr(), rs: t as isize, cs: 1 };
        let token = |w: usize| (i / h) * t * h * w + (i % h) * w;
        // SAFETY: the operands' matrices lie in their storage (`Heads`
        // reads each tensor's own layout, `p` is contiguous); head `i`
        // writes only its own rows of the token-major outputs (row
        // stride `h·width`), within their capacities or `acc`'s
        // storage (unique, of that shape, initialised when read), and
        // its own scratch `ds`, read only after the product wrote it.
        unsafe {
            if want_v {
                product(
                    [t, dv, t],
                    dvd.at(token(dv)),
                    h * dv,
                    read_dv.then_some(1.0),
                    pi.transposed(),
                    gh.at(i),
                    &clock,
                );
            }
            if !scores {
                return Vec::new();
            }
            // dp = g · vᵀ, then ds in place, while in cache.
            let mut ds: Vec<f32> = Vec::with_capacity(t * t);
            product([t, t, dv], ds.as_mut_ptr(), t, None, gh.at(i), vh.at(i).transposed(), &clock);
            ds.set_len(t * t);
            for (row, w) in ds.chunks_mut(t).zip(pv[i * t * t..(i + 1) * t * t].chunks(t)) {
                loops::softmax_backward(row, w, scale);
            }
            let dsi = Operand { ptr: ds.as_ptr(), rs: t as isize, cs: 1 };
            if want_q {
                product([t, d, t], dqd.at(token(d)), h * d, None, dsi, kh.at(i), &clock);
            }
            if want_k {
                product([t, d, t], dkd.at(token(d)), h * d, None, dsi.transposed(), qh.at(i), &clock);
            }
            let mut dbq = Vec::new();
            if let Some(bias) = &bias {
                dbq = vec![0.0f32; d];
                let dk = want_k.then(|| dkd.at(token(d)));
                let bias = &bias[(i % h) * d..(i % h + 1) * d];
                query_bias_back(&ds, [t, d, h * d], bias, dqd.at(token(d)), dk, &mut dbq);
            }
            dbq
        }
    };
    let (parts, threads) = map_heads(n, head);
    commit(&clock, threads);
    let dbq = bias.map(|_| {
        let mut sums = vec![0.0f64; h * d];
        for (i, part) in parts.iter().enumerate() {
            let hi = i % h;
            sums[hi * d..(hi + 1) * d].iter_mut().zip(part).for_each(|(a, &x)| *a += f64::from(x));
        }
        vector(sums.into_iter().map(|x| x as f32).collect())
    });
    // SAFETY: every head wrote its `t × w` rows of the output.
    let token_major = |data: Vec<f32>, w: usize| unsafe { token_major(data, [b, h, t, w]) };
    let dv = want_v.then(|| match acc {
        Some(rows) => Flex::float_swap_dims(Flex::float_reshape(rows.tensor, [b, t, h, dv].into()), 1, 2),
        None => token_major(dvs, dv),
    });
    [keep_q.then(|| token_major(dq, d)), want_k.then(|| token_major(dk, d)), dv, dbq]
}
