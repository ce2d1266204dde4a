//! Attention on the CPU, head by head: the scores, their softmax and the
//! output while in cache (plain and shaped), and their backward.

use super::*;

/// `[batch, heads, tokens, head_dim, value_dim]` of attention operands
/// that the fused kernel takes (f32, `q`, `k`: `[b, h, t, d]`, `v`: `[b, h,
/// t, dv]`, none empty), or `None`.
pub(super) fn attention_dims(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> Option<[usize; 5]> {
    let ok = [q, k, v].iter().all(|x| x.dtype() == DType::F32 && x.layout().num_dims() == 4);
    if !ok {
        return None;
    }
    let (sq, sv) = (q.layout().shape(), v.layout().shape());
    let dims = [sq[0], sq[1], sq[2], sq[3], sv[3]];
    let fits = k.layout().shape() == sq && sv[..3] == sq[..3] && dims.iter().all(|&x| x > 0);
    fits.then_some(dims)
}

/// A fused shaped attention's dims `[batch, heads, tokens, d, dv]`, its
/// gains per head: the mix's own (`gi`, `gs`, `gc`), the sum's `ga`, `gb`;
/// and the query's bias (`[heads · d]`) when it has biases.
pub(super) struct ShapedPlan {
    pub(super) dims: [usize; 5],
    pub(super) gi: Vec<f32>,
    pub(super) gs: Vec<f32>,
    pub(super) gc: Vec<f32>,
    pub(super) ga: Option<Vec<f32>>,
    pub(super) gb: Vec<f32>,
    pub(super) bq: Option<Vec<f32>>,
}

impl ShapedPlan {
    /// The gains per column (`dv` per head): the three terms' times `ga`,
    /// and `gb` (zeros without a branch).
    pub(super) fn columns(&self, dv: usize) -> [Vec<f32>; 4] {
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

/// A gain `[n]` as one value per head, or `None` unless `n` divides the
/// heads (each group of columns whole heads).
pub(super) fn per_head(g: &FlexTensor, heads: usize) -> Option<Vec<f32>> {
    let n = g.layout().num_elements();
    if g.dtype() != DType::F32 || n == 0 || !heads.is_multiple_of(n) {
        return None;
    }
    let g = g.to_contiguous();
    let values: &[f32] = &g.storage()[..n];
    Some((0..heads).map(|i| values[i / (heads / n)]).collect())
}

/// Per-head sums as one sum per group of heads: `[n]`.
pub(super) fn per_group(heads: &[f64], n: usize) -> FlexTensor {
    let per = heads.len() / n.max(1);
    vector(heads.chunks(per.max(1)).map(|g| g.iter().sum::<f64>() as f32).collect())
}

/// The plan of a shaped attention the fused kernel takes: f32 throughout,
/// `q`, `k` `[b, h, t, d]`, `v` (and `b`) `[b, t, h·dv]`, gains per whole
/// heads.
pub(super) fn shaped_plan(a: &Shaped<FlexTensor>, add: Option<&MixAddend<FlexTensor>>) -> Option<ShapedPlan> {
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

/// Runs `head(i)` for every head `i < n`, on several threads when there
/// are; returns what each head returned (in head order) and how many
/// threads ran them.
pub(super) fn map_heads<T: Send>(n: usize, head: impl Fn(usize) -> T + Sync + Send) -> (Vec<T>, usize) {
    if rayon::current_num_threads() > 1 {
        ((0..n).into_par_iter().map(head).collect(), rayon::current_num_threads().min(n))
    } else {
        ((0..n).map(head).collect(), 1)
    }
}

/// One matrix operand of a product: its first element and strides.
#[derive(Clone, Copy)]
pub(super) struct Operand {
    pub(super) ptr: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

// SAFETY: an operand is only read, by the products of one kernel call,
// while the tensor it points into is alive (borrowed by that call).
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    pub(super) fn transposed(self) -> Self {
        Operand { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// The `batch · heads` matrices of a `[batch, heads, rows, cols]` f32
/// tensor, from its own layout.
pub(super) struct Heads {
    pub(super) ptr: *const f32,
    pub(super) starts: Vec<isize>,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

// SAFETY: as for `Operand`.
unsafe impl Send for Heads {}
unsafe impl Sync for Heads {}

impl Heads {
    pub(super) fn new(x: &FlexTensor) -> Self {
        let l = x.layout();
        let data: &[f32] = x.storage();
        Heads { ptr: data.as_ptr(), starts: matrix_offsets(l), rs: l.strides()[2], cs: l.strides()[3] }
    }

    /// Matrix `i`.
    pub(super) fn at(&self, i: usize) -> Operand {
        // SAFETY: `starts[i]` is the offset of matrix `i` in the storage
        // `ptr` points to (from the tensor's own layout).
        Operand { ptr: unsafe { self.ptr.offset(self.starts[i]) }, rs: self.rs, cs: self.cs }
    }
}

/// One head's attention weights `softmax(scale · (q · kᵀ + 1 · uᵀ) (+
/// causal mask))` (`q`, `k`: `t × d`; `u`, a shift per key, or none)
/// written at `p` (`t × t`, row-major); returns them as an operand.
///
/// # Safety
/// As for [`product`]: `q`'s and `k`'s elements are live, `p`'s `t × t`
/// are writable and touched by no other thread meanwhile.
pub(super) unsafe fn attention_weights(
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
            simd::softmax(row, seen, scale);
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
pub(super) unsafe fn key_shift(k: Operand, bq: &[f32], [t, d]: [usize; 2], clock: &AtomicU64) -> Vec<f32> {
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
pub(super) unsafe fn query_bias_back(
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
pub(super) fn bias_values(bq: &Option<FlexTensor>, n: usize) -> Option<Option<Vec<f32>>> {
    match bq {
        None => Some(None),
        Some(b) if b.dtype() == DType::F32 && b.layout().num_elements() == n => {
            Some(Some(b.to_contiguous().storage::<f32>()[..n].to_vec()))
        }
        Some(_) => None,
    }
}

/// [`map_heads`] for heads that return nothing: how many threads ran them.
pub(super) fn each_head(n: usize, head: impl Fn(usize) + Sync + Send) -> usize {
    map_heads(n, head).1
}

pub(super) fn attention_forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bq: Option<FlexTensor>,
    (scale, causal): (f64, bool),
) -> (FlexTensor, FlexTensor) {
    let plan = attention_dims(&q, &k, &v).and_then(|dims| Some((dims, bias_values(&bq, dims[1] * dims[3])?)));
    let Some(([b, h, t, d, dv], bias)) = plan else {
        return composed::attention_forward::<Flex>(q, k, v, bq, (scale, causal));
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

pub(super) fn attention_backward(
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
        return composed::attention_backward::<Flex>(qkv, bq, p, g, (scale, acc), wants);
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
                simd::softmax_backward(row, w, scale);
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

pub(super) fn shaped_attention_forward(
    a: Shaped<FlexTensor>,
    add: Option<MixAddend<FlexTensor>>,
) -> (FlexTensor, FlexTensor) {
    let Some(plan) = shaped_plan(&a, add.as_ref()) else {
        return composed::shaped_attention_forward::<Flex>(a, add);
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
    let g = simd::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
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
            let x = simd::MixIn { v: &vq[rows.clone()], o: &o[rows.clone()], b: bq.map(|x| &x[rows]) };
            let inv = 1.0 / if causal { r + 1 } else { t } as f32;
            // SAFETY: the scratch row is initialised; `simd::mix_row`
            // writes all `width` of its elements.
            let scratch = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), width) };
            simd::mix_row(scratch, x, &mut sum, g, inv, causal);
            simd::stream(out, &row);
        }
        simd::fence();
    };
    // As `filled` runs the sequences.
    let parallel = b * t * width >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1;
    let threads = if parallel { rayon::current_num_threads().min(b) } else { 1 };
    // SAFETY: every row of the sequence is streamed whole from a
    // scratch row `simd::mix_row` wrote.
    let y = unsafe { filled(b * t * width, t * width, sequence) };
    commit(&clock, threads);
    // SAFETY: the heads wrote all `b·h·t·t` weights.
    unsafe { p.set_len(b * h * t * t) };
    (owned(y, v.layout().shape().clone()), owned(p, [b, h, t, t].into()))
}

pub(super) fn shaped_attention_backward(
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
        return composed::shaped_attention_backward::<Flex>(a, add, p, dy, acc);
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
    let g = simd::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
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
        let mut sums = simd::MixSums { r: &mut r, i: &mut si, s: &mut unused, c: &mut sc, b: &mut sb };
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
                    simd::prefetch(&gs[next.clone()]);
                    simd::prefetch(&vs[next.clone()]);
                    if let Some(x) = bs {
                        simd::prefetch(&x[next.clone()]);
                    }
                    if adding {
                        simd::prefetch(std::slice::from_raw_parts(dvd.at(next.start), width));
                    }
                }
                let inv = if causal { 1.0 / (row + 1) as f32 } else { 0.0 };
                let (gy, vr) = (&gs[at..at + width], &vs[at..at + width]);
                // Fresh rows into scratch in cache (`shaped_back_row`
                // writes every element of both), then streamed out.
                let scratch = |row: &mut Vec<f32>| std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), width);
                let branch = bs.map(|x| (&x[at..at + width], scratch(&mut row_db)));
                let out = match adding {
                    true => simd::Grad::Add(std::slice::from_raw_parts_mut(dvd.at(at), width)),
                    false => simd::Grad::Fresh(scratch(&mut row_dv)),
                };
                simd::shaped_back_row(out, gy, vr, branch, g, &mut sums, inv);
                if bs.is_some() {
                    let out = std::slice::from_raw_parts_mut(dbd.at(at).cast::<MaybeUninit<f32>>(), width);
                    simd::stream(out, &row_db);
                }
                if !adding {
                    let out = std::slice::from_raw_parts_mut(dvd.at(at).cast::<MaybeUninit<f32>>(), width);
                    simd::stream(out, &row_dv);
                }
            }
            simd::fence();
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
                    so[hi] += f64::from(simd::softmax_backward(row, w, gain * scale));
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
    let dgains = [0, 1, 2].map(|k| per_group(&(0..h).map(|hi| ga(hi) * heads[hi][k]).collect::<Vec<_>>(), sizes[k]));
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
        [owned(db, shape.clone()), per_group(&dga, na), per_group(&dgb, nb)]
    });
    let dbq = plan.bq.as_ref().map(|_| vector(totals(per.iter().map(|(_, _, part)| part.as_slice()), h * d)));
    ShapedGrads { dq: token_major(dq, d), dk: token_major(dk, d), dv, dgains, addend, dbq }
}
