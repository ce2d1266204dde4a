//! The shaped attention on burn's CubeCL backends (CUDA, and wgpu: the
//! software Vulkan device of the tests), as three kernels that never write
//! the T×T weights: one unit per (batch, head, token) row.
//!
//! - `forward`: for query row `i`, one pass over its keys with a running
//!   maximum (the online softmax) accumulates `softmax · v` and the sum of
//!   the values the `centre` averages (the same tokens: `0..=i` causal, all
//!   otherwise), then writes the mix `alpha ⊙ v + beta ⊙ o + gamma ⊙ centre`
//!   and the row's log-sum-exp, which is all the backward keeps (in the
//!   place of the reference's weights `p`).
//! - `rows` (backward by query row): recomputes `o_i` from the
//!   log-sum-exp, then `dq_i = scale · Σ_j p_ij (do_i · v_j − D_i) k_j` with
//!   `D_i = do_i · o_i`, and each row's share of the gains' gradients.
//! - `columns` (backward by key row): `dk_j` and `dv_j`, summing over the
//!   queries that see key `j`, with the `alpha` and `centre` terms of `dv`.
//!
//! The loops over a head's `d` entries are unrolled (`d` is known when a
//! kernel is compiled), so that a row's accumulators can live in registers;
//! so does the row a unit dots with all others (its query, or in `columns`
//! its key), read once: the rows it meets are the same for every unit of
//! a warp at each step (one broadcast read), its own row is not.
//!
//! The kernels read the gains as they are (one value per head or one in
//! all: no gathering per call); each row's shares of the gains' gradients
//! are summed after by one more kernel, `gain_sums`. The query's bias is
//! added before, and a block's other branch (`beta_sa ⊙ mix + beta_ff ⊙ b`) is applied
//! around the kernels with the gains family. Other dtypes than f32, head
//! dimensions above 256 and gains grouped otherwise than by head or as one
//! value take the reference maths. Tested against the reference on the
//! device, and end to end against the CPU, in `runtime/tests/device.rs`.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use burn::tensor::ops::FloatTensorOps;

use super::{reference, MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::cube::{cube_sum, empty_f32, row_cubes, units};
use crate::kernels::gains::GainOps;

/// Rows `[batch·heads·tokens]` of `[·, d]` blocks; head `h`'s columns of a
/// `[batch, tokens, heads·d]` tensor start at `h·d`.
#[cube(launch)]
fn shaped_forward<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    bq: &Tensor<F>,
    v: &Tensor<F>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    y: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    scale: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    #[comptime] d: usize,
    #[comptime] causal: bool,
    #[comptime] mixed: bool,
    #[comptime] biased: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let scale = F::cast_from(scale);
    let i = pos % tokens;
    let bh = pos / tokens;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * d;
    let qrow = b * q.stride(0) + h * q.stride(1) + i * q.stride(2);
    let kbase = b * k.stride(0) + h * k.stride(1);
    let ks = k.stride(2);
    let end = if causal { i + 1 } else { tokens };
    let qr = held(q, qrow, bq, h * d, d, biased);
    let mut acc = Array::<F>::new(d);
    let mut sum = Array::<F>::new(d);
    #[unroll]
    for e in 0..d {
        acc[e] = F::new(0.0);
        sum[e] = F::new(0.0);
    }
    let mut m = F::min_value();
    let mut l = F::new(0.0);
    for j in 0..end {
        let s = dot(&qr, k, kbase + j * ks, d) * scale;
        let top = F::max(m, s);
        let keep = F::exp(m - top);
        let p = F::exp(s - top);
        l = l * keep + p;
        let vrow = (b * tokens + j) * width + h * d;
        #[unroll]
        for e in 0..d {
            let x = v[vrow + e];
            acc[e] = acc[e] * keep + p * x;
            if mixed {
                sum[e] += x;
            }
        }
        m = top;
    }
    let inv = F::new(1.0) / l;
    let count = F::cast_from(end);
    let out = (b * tokens + i) * width + h * d;
    let mut ga = F::new(0.0);
    let mut gb = F::new(1.0);
    let mut gg = F::new(0.0);
    if mixed {
        ga = gain(alpha, h);
        gb = gain(beta, h);
        gg = gain(gamma, h);
    }
    #[unroll]
    for e in 0..d {
        if mixed {
            y[out + e] = ga * v[out + e] + gb * acc[e] * inv + gg * sum[e] / count;
        } else {
            y[out + e] = acc[e] * inv;
        }
    }
    lse[pos] = m + F::ln(l);
}

/// Head `h`'s value of a gain of one value per head or one in all.
#[cube]
fn gain<F: Float>(g: &Tensor<F>, h: usize) -> F {
    let mut at = h;
    if g.len() == 1 {
        at = 0;
    }
    g[at]
}

/// A head's `d` entries of `x` from `at`, read once into registers: the
/// row a unit dots with every other row; plus `bias` from `b0` when
/// `biased` (the query's bias).
#[cube]
fn held<F: Float>(
    x: &Tensor<F>,
    at: usize,
    bias: &Tensor<F>,
    b0: usize,
    #[comptime] d: usize,
    #[comptime] biased: bool,
) -> Array<F> {
    let mut r = Array::<F>::new(d);
    #[unroll]
    for e in 0..d {
        r[e] = x[at + e];
        if biased {
            r[e] += bias[b0 + e];
        }
    }
    r
}

/// `Σ_e a[e] · b[b0 + e]` over a head's `d` entries.
#[cube]
fn dot<F: Float>(a: &Array<F>, b: &Tensor<F>, b0: usize, #[comptime] d: usize) -> F {
    let mut s = F::new(0.0);
    #[unroll]
    for e in 0..d {
        s += a[e] * b[b0 + e];
    }
    s
}

/// The backward by query row: `dq`, `D_i` (`delta`) and each row's share
/// of the gains' gradients, `part[4, rows]`: `Σ g·v`, `Σ g·o`, `Σ g·centre`
/// (`g` the mix's gradient) and `Σ dy·mix` (for `beta_sa`).
#[cube(launch)]
fn shaped_rows<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    bq: &Tensor<F>,
    v: &Tensor<F>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    beta_sa: &Tensor<F>,
    lse: &Tensor<F>,
    dy: &Tensor<F>,
    dq: &mut Tensor<F>,
    delta: &mut Tensor<F>,
    part: &mut Tensor<F>,
    scale: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    #[comptime] d: usize,
    #[comptime] causal: bool,
    #[comptime] mixed: bool,
    #[comptime] summed: bool,
    #[comptime] biased: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let scale = F::cast_from(scale);
    let i = pos % tokens;
    let bh = pos / tokens;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * d;
    let qrow = b * q.stride(0) + h * q.stride(1) + i * q.stride(2);
    let kbase = b * k.stride(0) + h * k.stride(1);
    let ks = k.stride(2);
    let end = if causal { i + 1 } else { tokens };
    // A plain softmax (not `mixed`): gains `[0, 1, 0]` and no gained sum,
    // `gains` and `part` not read or written.
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
    let qr = held(q, qrow, bq, h * d, d, biased);
    let mut o = Array::<F>::new(d);
    let mut sum = Array::<F>::new(d);
    let mut d_o = Array::<F>::new(d);
    let mut grad = Array::<F>::new(d);
    #[unroll]
    for e in 0..d {
        o[e] = F::new(0.0);
        sum[e] = F::new(0.0);
        grad[e] = F::new(0.0);
    }
    for j in 0..end {
        let p = F::exp(dot(&qr, k, kbase + j * ks, d) * scale - row_lse);
        let vrow = (b * tokens + j) * width + h * d;
        #[unroll]
        for e in 0..d {
            let x = v[vrow + e];
            o[e] += p * x;
            if mixed {
                sum[e] += x;
            }
        }
    }
    let count = F::cast_from(end);
    let at = (b * tokens + i) * width + h * d;
    let mut dd = F::new(0.0);
    let mut pv = F::new(0.0);
    let mut po = F::new(0.0);
    let mut pc = F::new(0.0);
    let mut pm = F::new(0.0);
    #[unroll]
    for e in 0..d {
        let up = dy[at + e];
        let g = sa * up;
        let x = v[at + e];
        let c = sum[e] / count;
        d_o[e] = g_beta * g;
        dd += d_o[e] * o[e];
        if mixed {
            pv += g * x;
            po += g * o[e];
            pc += g * c;
            pm += up * (g_alpha * x + g_beta * o[e] + g_gamma * c);
        }
    }
    for j in 0..end {
        let mut dp = F::new(0.0);
        let vrow = (b * tokens + j) * width + h * d;
        #[unroll]
        for e in 0..d {
            dp += d_o[e] * v[vrow + e];
        }
        let p = F::exp(dot(&qr, k, kbase + j * ks, d) * scale - row_lse);
        let ds = p * (dp - dd);
        #[unroll]
        for e in 0..d {
            grad[e] += ds * k[kbase + j * ks + e];
        }
    }
    #[unroll]
    for e in 0..d {
        dq[pos * d + e] = grad[e] * scale;
    }
    delta[pos] = dd;
    if mixed {
        part[pos] = pv;
        part[units + pos] = po;
        part[2 * units + pos] = pc;
        part[3 * units + pos] = pm;
    }
}

/// The backward by key row: `dk_j` and `dv_j` (head `h`'s columns).
#[cube(launch)]
fn shaped_columns<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    bq: &Tensor<F>,
    v: &Tensor<F>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    beta_sa: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    dy: &Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    scale: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    #[comptime] d: usize,
    #[comptime] causal: bool,
    #[comptime] mixed: bool,
    #[comptime] summed: bool,
    #[comptime] biased: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let scale = F::cast_from(scale);
    let j = pos % tokens;
    let bh = pos / tokens;
    let h = bh % heads;
    let b = bh / heads;
    let width = heads * d;
    let qbase = b * q.stride(0) + h * q.stride(1);
    let qs = q.stride(2);
    let kr = held(k, b * k.stride(0) + h * k.stride(1) + j * k.stride(2), bq, 0, d, false);
    // The query's bias: its part of every score, `k_j · bq`, and of `dk_j`,
    // `Σ_i ds_i · bq`.
    let mut kb = F::new(0.0);
    if biased {
        #[unroll]
        for e in 0..d {
            kb += kr[e] * bq[h * d + e];
        }
    }
    let mut sds = F::new(0.0);
    let mut start = 0;
    if causal {
        start = j;
    }
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
    let vat = (b * tokens + j) * width + h * d;
    let mut gk = Array::<F>::new(d);
    let mut gv = Array::<F>::new(d);
    #[unroll]
    for e in 0..d {
        gk[e] = F::new(0.0);
        gv[e] = ga * dy[vat + e];
    }
    for i in start..tokens {
        let qrow = qbase + i * qs;
        let yrow = (b * tokens + i) * width + h * d;
        let mut dp = F::new(0.0);
        #[unroll]
        for e in 0..d {
            dp += dy[yrow + e] * v[vat + e];
        }
        let dp = gb * dp;
        let p = F::exp((dot(&kr, q, qrow, d) + kb) * scale - lse[bh * tokens + i]);
        let ds = p * (dp - delta[bh * tokens + i]);
        if biased {
            sds += ds;
        }
        // The centre's weight of token j in row i: 1/(i+1) causal, 1/T otherwise.
        let w = if causal { F::new(1.0) / F::cast_from(i + 1) } else { F::new(1.0) / F::cast_from(tokens) };
        #[unroll]
        for e in 0..d {
            let up = dy[yrow + e];
            gk[e] += ds * q[qrow + e];
            gv[e] += p * gb * up;
            if mixed {
                gv[e] += w * gg * up;
            }
        }
    }
    #[unroll]
    for e in 0..d {
        let mut g = gk[e];
        if biased {
            g += sds * bq[h * d + e];
        }
        dk[pos * d + e] = g * scale;
        dv[vat + e] = gv[e];
    }
}

/// Heads of at most this dimension run the kernels (a row's
/// accumulators are local arrays of this length).
const MAX_HEAD_DIM: usize = 256;

/// The shape the kernels run, when they can (else the reference runs).
pub(crate) struct Plan {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) tokens: usize,
    pub(crate) d: usize,
    /// The lengths of alpha, beta, gamma and `beta_sa` (1 or `heads`).
    pub(crate) lengths: [usize; 4],
}

pub(crate) fn plan<R: CubeRuntime>(a: &Shaped<CubeTensor<R>>, add: Option<&MixAddend<CubeTensor<R>>>) -> Option<Plan> {
    let mut p = shape_plan(&a.q, &a.k, &a.v, a.bq.as_ref())?;
    let n = |t: &CubeTensor<R>| t.shape().num_elements();
    let sa = add.map_or(1, |m| n(&m.beta_sa));
    p.lengths = [n(&a.gains[0]), n(&a.gains[1]), n(&a.gains[2]), sa];
    let f32s = a.gains.iter().all(|t| t.dtype == DType::F32)
        && add.is_none_or(|m| [&m.b, &m.beta_sa, &m.beta_ff].iter().all(|t| t.dtype == DType::F32));
    let grouped = p.lengths.iter().all(|&l| l == 1 || l == p.heads);
    (f32s && grouped).then_some(p)
}

/// The plan of `q`, `k` (`[batch, heads, tokens, d]`), `v` (`[batch,
/// tokens, heads · d]`) and the query's bias, without gains: what a plain
/// softmax attention runs.
pub(crate) fn shape_plan<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    bq: Option<&CubeTensor<R>>,
) -> Option<Plan> {
    let s = q.shape();
    if s.num_dims() != 4 {
        return None;
    }
    let [batch, heads, tokens, d] = [s[0], s[1], s[2], s[3]];
    let f32s = [q, k, v].into_iter().chain(bq).all(|t| t.dtype == DType::F32);
    let shapes = k.shape().as_slice() == [batch, heads, tokens, d]
        && v.shape().as_slice() == [batch, tokens, heads * d]
        && bq.is_none_or(|b| b.shape().num_elements() == heads * d);
    let fits = (1..=MAX_HEAD_DIM).contains(&d) && tokens > 0 && batch > 0;
    (f32s && shapes && fits).then_some(Plan { batch, heads, tokens, d, lengths: [1; 4] })
}

impl Plan {
    fn rows(&self) -> usize {
        self.batch * self.heads * self.tokens
    }
}

/// What the kernels read: `q` and `k` (`[batch, heads, tokens, d]`, any
/// layout whose last dimension is contiguous: the products' token-major
/// views are read as they are), the query's bias `bq` (`[heads · d]`,
/// added where the kernels read `q`) when `biased`, `v` (`[batch, tokens,
/// heads · d]`, contiguous), and the gains alpha, beta, gamma and
/// `beta_sa`, each one value per head or one in all. What is not read (no
/// bias, a plain softmax's gains, `beta_sa` without a gained sum) is a
/// placeholder.
pub(crate) struct Operands<R: CubeRuntime> {
    pub(crate) q: CubeTensor<R>,
    pub(crate) k: CubeTensor<R>,
    pub(crate) bq: CubeTensor<R>,
    pub(crate) biased: bool,
    pub(crate) v: CubeTensor<R>,
    pub(crate) gains: [CubeTensor<R>; 4],
}

/// `x` itself when its last dimension is contiguous, else a contiguous copy.
fn rows_contiguous<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    let strides = x.meta.strides();
    if strides.last().is_some_and(|&s| s == 1) {
        x
    } else {
        into_contiguous(x)
    }
}

impl<R: CubeRuntime> Operands<R> {
    /// `q`, `k`, `bq` and `v` as the kernels read them, with `gains`.
    pub(crate) fn new([q, k, v]: [CubeTensor<R>; 3], bq: Option<&CubeTensor<R>>, gains: [CubeTensor<R>; 4]) -> Self {
        let biased = bq.is_some();
        let bq = bq.map_or_else(|| no_gains(&v), |b| into_contiguous(b.clone()));
        Operands { q: rows_contiguous(q), k: rows_contiguous(k), bq, biased, v: into_contiguous(v), gains }
    }
}

/// The operands of a shaped attention (`beta_sa` that of its gained sum).
fn operands<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: &Shaped<CubeTensor<R>>,
    beta_sa: Option<&CubeTensor<R>>,
) -> Operands<R> {
    let flat = |g: &CubeTensor<R>| {
        into_contiguous(CubeBackend::<R, F, I, BT>::float_reshape(g.clone(), [g.shape().num_elements()].into()))
    };
    let [alpha, beta, gamma] = a.gains.each_ref().map(flat);
    let beta_sa = beta_sa.map_or_else(|| no_gains(&a.v), flat);
    Operands::new([a.q.clone(), a.k.clone(), a.v.clone()], a.bq.as_ref(), [alpha, beta, gamma, beta_sa])
}

/// The forward kernel: `(mix, lse)`; `mixed` false is a plain softmax
/// attention (gains `[0, 1, 0]`, no centre's sums), whose gains are not
/// read.
pub(crate) fn forward<R: CubeRuntime>(
    o: Operands<R>,
    p: &Plan,
    (scale, causal, mixed): (f64, bool, bool),
) -> (CubeTensor<R>, CubeTensor<R>) {
    let y = empty_f32(&o.v, [p.batch, p.tokens, p.heads * p.d]);
    let lse = empty_f32(&o.v, [p.batch, p.heads, p.tokens]);
    let client = o.v.client.clone();
    let (count, dim) = units(&client, p.rows());
    let [alpha, beta, gamma, _] = o.gains;
    shaped_forward::launch::<f32, R>(
        &client,
        count,
        dim,
        o.q.into_tensor_arg(),
        o.k.into_tensor_arg(),
        o.bq.into_tensor_arg(),
        o.v.into_tensor_arg(),
        alpha.into_tensor_arg(),
        beta.into_tensor_arg(),
        gamma.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        scale as f32,
        p.rows(),
        p.heads,
        p.tokens,
        p.d,
        causal,
        mixed,
        o.biased,
    );
    (y, lse)
}

/// A gain the kernels do not read (a plain softmax's, or `beta_sa`
/// without a gained sum).
pub(crate) fn no_gains<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    empty_f32(like, [1])
}

/// Whether the kernels mix (the shaped attention, not a plain softmax) and
/// the mix is summed with a gain (`beta_sa`, read by the backward).
#[derive(Clone, Copy)]
pub(crate) struct Mix {
    pub(crate) mixed: bool,
    pub(crate) summed: bool,
}

/// The backward kernels, given the forward's `lse` and the output's
/// gradient `dy` (contiguous): `[dq, dk, dv, part]`, `part` the rows'
/// shares of the gains' gradients (see `shaped_rows`; a placeholder for a
/// plain softmax).
pub(crate) fn backward<R: CubeRuntime>(
    o: Operands<R>,
    p: &Plan,
    lse: CubeTensor<R>,
    dy: CubeTensor<R>,
    (scale, causal, mix): (f64, bool, Mix),
) -> [CubeTensor<R>; 4] {
    let client = o.v.client.clone();
    let (count, dim) = units(&client, p.rows());
    let dq = empty_f32(&o.v, [p.batch, p.heads, p.tokens, p.d]);
    let dk = empty_f32(&o.v, [p.batch, p.heads, p.tokens, p.d]);
    let dv = empty_f32(&o.v, [p.batch, p.tokens, p.heads * p.d]);
    let delta = empty_f32(&o.v, [p.batch, p.heads, p.tokens]);
    let part = empty_f32(&o.v, if mix.mixed { [4, p.batch, p.heads, p.tokens] } else { [1, 1, 1, 1] });
    let gains = || o.gains.clone().map(|g| g.into_tensor_arg());
    let [alpha, beta, gamma, beta_sa] = gains();
    shaped_rows::launch::<f32, R>(
        &client,
        count.clone(),
        dim,
        o.q.clone().into_tensor_arg(),
        o.k.clone().into_tensor_arg(),
        o.bq.clone().into_tensor_arg(),
        o.v.clone().into_tensor_arg(),
        alpha,
        beta,
        gamma,
        beta_sa,
        lse.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        part.clone().into_tensor_arg(),
        scale as f32,
        p.rows(),
        p.heads,
        p.tokens,
        p.d,
        causal,
        mix.mixed,
        mix.summed,
        o.biased,
    );
    let [alpha, beta, gamma, beta_sa] = gains();
    shaped_columns::launch::<f32, R>(
        &client,
        count,
        dim,
        o.q.into_tensor_arg(),
        o.k.into_tensor_arg(),
        o.bq.into_tensor_arg(),
        o.v.into_tensor_arg(),
        alpha,
        beta,
        gamma,
        beta_sa,
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        dy.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        scale as f32,
        p.rows(),
        p.heads,
        p.tokens,
        p.d,
        causal,
        mix.mixed,
        mix.summed,
        o.biased,
    );
    [dq, dk, dv, part]
}

/// The gains' gradients from the rows' shares `part` (`[4, batch, heads,
/// tokens]`): cube `(which, h)` sums share `which` of head `h` over batch
/// and tokens into `out_which[h]`, or, for a gain of one value in all
/// (`out_which` of one entry), cube `(which, 0)` sums all heads'.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gain_sums<F: Float>(
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

/// The gains' gradients (`lengths` entries each: alpha, beta, gamma, and
/// `beta_sa` when `summed`) from the rows' shares, in one launch.
fn gain_grads<R: CubeRuntime>(part: CubeTensor<R>, p: &Plan, summed: bool) -> [Option<CubeTensor<R>>; 4] {
    let which = if summed { 4 } else { 3 };
    let out: [CubeTensor<R>; 4] =
        std::array::from_fn(|i| if i < which { empty_f32(&part, [p.lengths[i]]) } else { no_gains(&part) });
    let client = part.client.clone();
    let (count, dim, block) = row_cubes(&client, which * p.heads, p.batch * p.tokens);
    let [a, b, g, sa] = out.clone().map(|t| t.into_tensor_arg());
    gain_sums::launch::<f32, R>(
        &client,
        count,
        dim,
        part.into_tensor_arg(),
        a,
        b,
        g,
        sa,
        p.batch,
        p.heads,
        p.tokens,
        block,
    );
    let mut i = 0;
    out.map(|t| {
        i += 1;
        (i <= which).then_some(t)
    })
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ShapedOps for CubeBackend<R, F, I, BT> {
    fn shaped_attention_forward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some(p) = plan(&a, add.as_ref()) else { return reference::shaped_attention_forward::<Self>(a, add) };
        let (y, lse) = forward(operands::<R, F, I, BT>(&a, None), &p, (a.scale, a.causal, true));
        let y = match add {
            Some(m) => Self::scaled_sum(y, m.b, m.beta_sa, m.beta_ff),
            None => y,
        };
        (y, lse)
    }

    fn shaped_attention_backward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
        lse: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        acc: Option<FloatTensor<Self>>,
    ) -> ShapedGrads<FloatTensor<Self>> {
        let Some(p) = plan(&a, add.as_ref()) else {
            return reference::shaped_attention_backward::<Self>(a, add, lse, dy, acc);
        };
        let operands = operands::<R, F, I, BT>(&a, add.as_ref().map(|m| &m.beta_sa));
        let dy = into_contiguous(dy);
        let summed = add.is_some();
        let mix = Mix { mixed: true, summed };
        let [dq, dk, dv, part] = backward(operands, &p, lse, dy.clone(), (a.scale, a.causal, mix));
        let [da, db, dg, dsa] = gain_grads(part, &p, summed);
        let some =
            |t: Option<CubeTensor<R>>| t.unwrap_or_else(|| unreachable!("the first three gains' gradients are made"));
        let dgains = [some(da), some(db), some(dg)];
        let addend = add.zip(dsa).map(|(m, dsa)| {
            let n = m.beta_ff.shape().num_elements();
            let db = Self::scale_groups(dy.clone(), m.beta_ff.clone());
            let dbeta_ff = Self::scale_groups_grad(m.b, dy.clone(), n);
            [db, dsa, dbeta_ff]
        });
        let dbq = a.bq.as_ref().map(|_| {
            let s = Self::float_sum_dim(Self::float_sum_dim(dq.clone(), 2), 0);
            Self::float_reshape(s, [p.heads * p.d].into())
        });
        let dv = match acc {
            Some(acc) => Self::float_add(acc, dv),
            None => dv,
        };
        ShapedGrads { dq, dk, dv, dgains, addend, dbq }
    }
}
