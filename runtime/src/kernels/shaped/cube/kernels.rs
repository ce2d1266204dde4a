//! The device side of the shaped attention's kernels (see the module
//! above for what each computes): the three row kernels, the sum of the
//! gains' gradients, and the helpers they share.

use cubecl::prelude::*;

use crate::kernels::cube::{cap_slope, cube_sum, distanced, first_key, keys_end, logit, slope_of};

/// Rows `[batch·heads·tokens]` of `[·, d]` blocks; head `h`'s columns of a
/// `[batch, tokens, heads·d]` tensor start at `h·d`. Rows are read and
/// written as `w` vectors of `n` entries (`d = w·n`); offsets are in
/// vectors, the tensors' strides in entries.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn shaped_forward<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    bq: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    y: &mut Tensor<Vector<F, N>>,
    lse: &mut Tensor<F>,
    scale: f32,
    cap: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    reach: usize,
    #[comptime] w: usize,
    #[comptime] n: usize,
    #[comptime] causal: bool,
    #[comptime] mixed: bool,
    #[comptime] biased: bool,
    #[comptime] capped: bool,
    #[comptime] alibi: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let scale = F::cast_from(scale);
    let cap = F::cast_from(cap);
    let i = pos % tokens;
    let bh = pos / tokens;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * w;
    let qrow = (b * q.stride(0) + h * q.stride(1) + i * q.stride(2)) / n;
    let kbase = (b * k.stride(0) + h * k.stride(1)) / n;
    let ks = k.stride(2) / n;
    let lo = first_key(i, reach);
    let end = keys_end(i, tokens, reach, causal);
    let qr = held(q, qrow, bq, h * w, w, biased);
    let slope = slope_of::<F>(h, heads, alibi);
    let mut acc = zeros::<F, N>(w);
    let mut sum = zeros::<F, N>(w);
    let mut m = F::min_value();
    let mut l = F::new(0.0);
    for j in lo..end {
        let z = logit::<F>(dot(&qr, k, kbase + j * ks, w), scale, cap, capped);
        let s = distanced::<F>(z, slope, i, j, alibi);
        let top = F::max(m, s);
        let keep = Vector::new(F::exp(m - top));
        let p = F::exp(s - top);
        l = l * F::exp(m - top) + p;
        let p = Vector::new(p);
        let vrow = (b * tokens + j) * width + h * w;
        #[unroll]
        for c in 0..w {
            let x = v[vrow + c];
            acc[c] = acc[c] * keep + p * x;
            if mixed {
                sum[c] += x;
            }
        }
        m = top;
    }
    let inv = Vector::new(F::new(1.0) / l);
    let out = (b * tokens + i) * width + h * w;
    if mixed {
        let ga = Vector::new(gain(alpha, h));
        let gb = Vector::new(gain(beta, h));
        let gg = Vector::new(gain(gamma, h) / F::cast_from(end - lo));
        #[unroll]
        for c in 0..w {
            y[out + c] = ga * v[out + c] + gb * acc[c] * inv + gg * sum[c];
        }
    } else {
        #[unroll]
        for c in 0..w {
            y[out + c] = acc[c] * inv;
        }
    }
    lse[pos] = m + F::ln(l);
}

/// Head `h`'s value of a gain of one value per head or one in all.
#[cube]
pub(super) fn gain<F: Float>(g: &Tensor<F>, h: usize) -> F {
    let mut at = h;
    if g.len() == 1 {
        at = 0;
    }
    g[at]
}

/// `w` zero vectors.
#[cube]
fn zeros<F: Float, N: Size>(#[comptime] w: usize) -> Array<Vector<F, N>> {
    let mut r = Array::<Vector<F, N>>::new(w);
    #[unroll]
    for c in 0..w {
        r[c] = Vector::new(F::new(0.0));
    }
    r
}

/// The sum of a vector's entries.
#[cube]
fn total<F: Float, N: Size>(x: Vector<F, N>) -> F {
    x.dot(Vector::new(F::new(1.0)))
}

/// A head's `w` vectors of `x` from `at`, read once into registers: the
/// row a unit dots with every other row; plus `bias` from `b0` when
/// `biased` (the query's bias).
#[cube]
fn held<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    at: usize,
    bias: &Tensor<Vector<F, N>>,
    b0: usize,
    #[comptime] w: usize,
    #[comptime] biased: bool,
) -> Array<Vector<F, N>> {
    let mut r = Array::<Vector<F, N>>::new(w);
    #[unroll]
    for c in 0..w {
        r[c] = x[at + c];
        if biased {
            r[c] += bias[b0 + c];
        }
    }
    r
}

/// `Σ a · b[b0..]` over a head's `w` vectors.
#[cube]
fn dot<F: Float, N: Size>(a: &Array<Vector<F, N>>, b: &Tensor<Vector<F, N>>, b0: usize, #[comptime] w: usize) -> F {
    let mut s = Vector::new(F::new(0.0));
    #[unroll]
    for c in 0..w {
        s += a[c] * b[b0 + c];
    }
    total(s)
}

/// The backward by query row: `dq`, `D_i` (`delta`) and each row's share
/// of the gains' gradients, `part[4, rows]`: `Σ g·v`, `Σ g·o`, `Σ g·centre`
/// (`g` the mix's gradient) and `Σ dy·mix` (for `beta_sa`). With `kept` (a
/// plain softmax only), `o` is read from `o_kept` (`[batch, tokens, heads
/// · d]`, the forward's output) instead of recomputed.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn shaped_rows<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    bq: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    beta_sa: &Tensor<F>,
    lse: &Tensor<F>,
    o_kept: &Tensor<Vector<F, N>>,
    dy: &Tensor<Vector<F, N>>,
    dq: &mut Tensor<Vector<F, N>>,
    delta: &mut Tensor<F>,
    part: &mut Tensor<F>,
    scale: f32,
    cap: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    reach: usize,
    #[comptime] w: usize,
    #[comptime] n: usize,
    #[comptime] causal: bool,
    #[comptime] mixed: bool,
    #[comptime] summed: bool,
    #[comptime] biased: bool,
    #[comptime] kept: bool,
    #[comptime] capped: bool,
    #[comptime] alibi: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let scale = F::cast_from(scale);
    let cap = F::cast_from(cap);
    let i = pos % tokens;
    let bh = pos / tokens;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * w;
    let qrow = (b * q.stride(0) + h * q.stride(1) + i * q.stride(2)) / n;
    let kbase = (b * k.stride(0) + h * k.stride(1)) / n;
    let ks = k.stride(2) / n;
    let lo = first_key(i, reach);
    let end = keys_end(i, tokens, reach, causal);
    // A plain softmax (not `mixed`): gains `[0, 1, 0]` and no gained sum,
    // the gains and `part` not read or written.
    let mut sa = F::new(1.0);
    let mut g_alpha = F::new(0.0);
    let mut g_beta = F::new(1.0);
    let mut g_gamma = F::new(0.0);
    if mixed {
        if summed {
            sa = gain(beta_sa, h);
        }
        g_alpha = gain(alpha, h);
        g_beta = gain(beta, h);
        g_gamma = gain(gamma, h);
    }
    let row_lse = lse[pos];
    let qr = held(q, qrow, bq, h * w, w, biased);
    let slope = slope_of::<F>(h, heads, alibi);
    let at = (b * tokens + i) * width + h * w;
    let mut o = zeros::<F, N>(w);
    let mut sum = zeros::<F, N>(w);
    let mut grad = zeros::<F, N>(w);
    if kept {
        // A plain softmax's output as the forward wrote it: no pass to
        // recompute it.
        #[unroll]
        for c in 0..w {
            o[c] = o_kept[at + c];
        }
    } else {
        for j in lo..end {
            let z = logit::<F>(dot(&qr, k, kbase + j * ks, w), scale, cap, capped);
            let p = Vector::new(F::exp(distanced::<F>(z, slope, i, j, alibi) - row_lse));
            let vrow = (b * tokens + j) * width + h * w;
            #[unroll]
            for c in 0..w {
                let x = v[vrow + c];
                o[c] += p * x;
                if mixed {
                    sum[c] += x;
                }
            }
        }
    }
    let inv_count = Vector::new(F::new(1.0) / F::cast_from(end - lo));
    let mut d_o = Array::<Vector<F, N>>::new(w);
    let mut dd = Vector::new(F::new(0.0));
    let mut pv = Vector::new(F::new(0.0));
    let mut po = Vector::new(F::new(0.0));
    let mut pc = Vector::new(F::new(0.0));
    let mut pm = Vector::new(F::new(0.0));
    #[unroll]
    for c in 0..w {
        let up = dy[at + c];
        let g = Vector::new(sa) * up;
        d_o[c] = Vector::new(g_beta) * g;
        dd += d_o[c] * o[c];
        if mixed {
            let x = v[at + c];
            let centre = sum[c] * inv_count;
            pv += g * x;
            po += g * o[c];
            pc += g * centre;
            pm += up * (Vector::new(g_alpha) * x + Vector::new(g_beta) * o[c] + Vector::new(g_gamma) * centre);
        }
    }
    let dd = total(dd);
    for j in lo..end {
        let vrow = (b * tokens + j) * width + h * w;
        let dp = dot(&d_o, v, vrow, w);
        let z = logit::<F>(dot(&qr, k, kbase + j * ks, w), scale, cap, capped);
        let p = F::exp(distanced::<F>(z, slope, i, j, alibi) - row_lse);
        let ds = Vector::new(p * (dp - dd) * cap_slope::<F>(z, cap, capped));
        #[unroll]
        for c in 0..w {
            grad[c] += ds * k[kbase + j * ks + c];
        }
    }
    let scale = Vector::new(scale);
    #[unroll]
    for c in 0..w {
        dq[pos * w + c] = grad[c] * scale;
    }
    delta[pos] = dd;
    if mixed {
        part[pos] = total(pv);
        part[units + pos] = total(po);
        part[2 * units + pos] = total(pc);
        part[3 * units + pos] = total(pm);
    }
}

/// The backward by key row: `dk_j` and `dv_j` (head `h`'s columns).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn shaped_columns<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    bq: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    beta_sa: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    dy: &Tensor<Vector<F, N>>,
    dk: &mut Tensor<Vector<F, N>>,
    dv: &mut Tensor<Vector<F, N>>,
    scale: f32,
    cap: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    reach: usize,
    #[comptime] w: usize,
    #[comptime] n: usize,
    #[comptime] causal: bool,
    #[comptime] mixed: bool,
    #[comptime] summed: bool,
    #[comptime] biased: bool,
    #[comptime] capped: bool,
    #[comptime] alibi: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let scale = F::cast_from(scale);
    let cap = F::cast_from(cap);
    let j = pos % tokens;
    let bh = pos / tokens;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * w;
    let qbase = (b * q.stride(0) + h * q.stride(1)) / n;
    let qs = q.stride(2) / n;
    let kr = held(k, (b * k.stride(0) + h * k.stride(1) + j * k.stride(2)) / n, bq, 0, w, false);
    // The query's bias: its part of every score, `k_j · bq`, and of `dk_j`,
    // `Σ_i ds_i · bq`.
    let mut kb = F::new(0.0);
    if biased {
        kb = dot(&kr, bq, h * w, w);
    }
    let mut sds = F::new(0.0);
    let slope = slope_of::<F>(h, heads, alibi);
    // The queries that see key `j`: itself and the `reach` after it, and
    // without a causal mask the `reach` before it too.
    let mut start = first_key(j, reach);
    if causal {
        start = j;
    }
    let stop = keys_end(j, tokens, reach, false);
    // A plain softmax (not `mixed`): `beta` 1, no other term.
    let mut ga = F::new(0.0);
    let mut gb = F::new(1.0);
    let mut gg = F::new(0.0);
    if mixed {
        let mut sa = F::new(1.0);
        if summed {
            sa = gain(beta_sa, h);
        }
        ga = gain(alpha, h) * sa;
        gb = gain(beta, h) * sa;
        gg = gain(gamma, h) * sa;
    }
    let vat = (b * tokens + j) * width + h * w;
    let mut gk = zeros::<F, N>(w);
    let mut gv = Array::<Vector<F, N>>::new(w);
    #[unroll]
    for c in 0..w {
        gv[c] = Vector::new(ga) * dy[vat + c];
    }
    for i in start..stop {
        let qrow = qbase + i * qs;
        let yrow = (b * tokens + i) * width + h * w;
        let mut dpv = Vector::new(F::new(0.0));
        #[unroll]
        for c in 0..w {
            dpv += dy[yrow + c] * v[vat + c];
        }
        let dp = gb * total(dpv);
        let z = logit::<F>(dot(&kr, q, qrow, w) + kb, scale, cap, capped);
        let p = F::exp(distanced::<F>(z, slope, i, j, alibi) - lse[bh * tokens + i]);
        let ds = p * (dp - delta[bh * tokens + i]) * cap_slope::<F>(z, cap, capped);
        if biased {
            sds += ds;
        }
        // The centre's weight of token j in row i: one over the keys row
        // i sees.
        let mut weight = p * gb;
        if mixed {
            let seen = keys_end(i, tokens, reach, causal) - first_key(i, reach);
            weight += gg / F::cast_from(seen);
        }
        let (ds, weight) = (Vector::new(ds), Vector::new(weight));
        #[unroll]
        for c in 0..w {
            gk[c] += ds * q[qrow + c];
            gv[c] += weight * dy[yrow + c];
        }
    }
    let scale = Vector::new(scale);
    let sds = Vector::new(sds);
    #[unroll]
    for c in 0..w {
        let mut g = gk[c];
        if biased {
            g += sds * bq[h * w + c];
        }
        dk[pos * w + c] = g * scale;
        dv[vat + c] = gv[c];
    }
}
/// The gains' gradients from the rows' shares `part` (`[4, batch, heads,
/// tokens]`): cube `(which, h)` sums share `which` of head `h` over batch
/// and tokens into `out_which[h]`, or, for a gain of one value in all
/// (`out_which` of one entry), cube `(which, 0)` sums all heads'.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn gain_sums<F: Float>(
    part: &Tensor<F>,
    d_alpha: &mut Tensor<F>,
    d_beta: &mut Tensor<F>,
    d_gamma: &mut Tensor<F>,
    d_beta_sa: &mut Tensor<F>,
    batch: usize,
    heads: usize,
    tokens: usize,
    #[comptime] block: usize,
) {
    let which = CUBE_POS / heads;
    let h = CUBE_POS % heads;
    let mut len = d_alpha.len();
    if which == 1 {
        len = d_beta.len();
    } else if which == 2 {
        len = d_gamma.len();
    } else if which == 3 {
        len = d_beta_sa.len();
    }
    let single = len == 1;
    if which >= 4 || (single && h > 0) {
        terminate!();
    }
    let rows = batch * heads * tokens;
    let base = which * rows;
    let mut n = batch * tokens;
    if single {
        n = rows;
    }
    let mut s = F::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < n {
        let mut at = j;
        if !single {
            at = ((j / tokens) * heads + h) * tokens + j % tokens;
        }
        s += part[base + at];
        j += block;
    }
    let mut shared = SharedMemory::<F>::new(block);
    let total = cube_sum(&mut shared, s, block);
    if UNIT_POS == 0 {
        if which == 0 {
            d_alpha[h] = total;
        } else if which == 1 {
            d_beta[h] = total;
        } else if which == 2 {
            d_gamma[h] = total;
        } else {
            d_beta_sa[h] = total;
        }
    }
}
