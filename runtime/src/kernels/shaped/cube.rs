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
/// `[batch, tokens, heads·d]` tensor start at `h·d`. Rows are read and
/// written as `w` vectors of `n` entries (`d = w·n`); offsets are in
/// vectors, the tensors' strides in entries.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn shaped_forward<F: Float, N: Size>(
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
    units: usize,
    heads: usize,
    tokens: usize,
    #[comptime] w: usize,
    #[comptime] n: usize,
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
    let width = heads * w;
    let qrow = (b * q.stride(0) + h * q.stride(1) + i * q.stride(2)) / n;
    let kbase = (b * k.stride(0) + h * k.stride(1)) / n;
    let ks = k.stride(2) / n;
    let end = if causal { i + 1 } else { tokens };
    let qr = held(q, qrow, bq, h * w, w, biased);
    let mut acc = zeros::<F, N>(w);
    let mut sum = zeros::<F, N>(w);
    let mut m = F::min_value();
    let mut l = F::new(0.0);
    for j in 0..end {
        let s = dot(&qr, k, kbase + j * ks, w) * scale;
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
        let gg = Vector::new(gain(gamma, h) / F::cast_from(end));
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
fn gain<F: Float>(g: &Tensor<F>, h: usize) -> F {
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
/// (`g` the mix's gradient) and `Σ dy·mix` (for `beta_sa`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn shaped_rows<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    bq: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    beta_sa: &Tensor<F>,
    lse: &Tensor<F>,
    dy: &Tensor<Vector<F, N>>,
    dq: &mut Tensor<Vector<F, N>>,
    delta: &mut Tensor<F>,
    part: &mut Tensor<F>,
    scale: f32,
    units: usize,
    heads: usize,
    tokens: usize,
    #[comptime] w: usize,
    #[comptime] n: usize,
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
    let width = heads * w;
    let qrow = (b * q.stride(0) + h * q.stride(1) + i * q.stride(2)) / n;
    let kbase = (b * k.stride(0) + h * k.stride(1)) / n;
    let ks = k.stride(2) / n;
    let end = if causal { i + 1 } else { tokens };
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
    let mut o = zeros::<F, N>(w);
    let mut sum = zeros::<F, N>(w);
    let mut grad = zeros::<F, N>(w);
    for j in 0..end {
        let p = Vector::new(F::exp(dot(&qr, k, kbase + j * ks, w) * scale - row_lse));
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
    let inv_count = Vector::new(F::new(1.0) / F::cast_from(end));
    let at = (b * tokens + i) * width + h * w;
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
    for j in 0..end {
        let vrow = (b * tokens + j) * width + h * w;
        let dp = dot(&d_o, v, vrow, w);
        let p = F::exp(dot(&qr, k, kbase + j * ks, w) * scale - row_lse);
        let ds = Vector::new(p * (dp - dd));
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
fn shaped_columns<F: Float, N: Size>(
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
    units: usize,
    heads: usize,
    tokens: usize,
    #[comptime] w: usize,
    #[comptime] n: usize,
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
    let vat = (b * tokens + j) * width + h * w;
    let mut gk = zeros::<F, N>(w);
    let mut gv = Array::<Vector<F, N>>::new(w);
    #[unroll]
    for c in 0..w {
        gv[c] = Vector::new(ga) * dy[vat + c];
    }
    for i in start..tokens {
        let qrow = qbase + i * qs;
        let yrow = (b * tokens + i) * width + h * w;
        let mut dpv = Vector::new(F::new(0.0));
        #[unroll]
        for c in 0..w {
            dpv += dy[yrow + c] * v[vat + c];
        }
        let dp = gb * total(dpv);
        let p = F::exp((dot(&kr, q, qrow, w) + kb) * scale - lse[bh * tokens + i]);
        let ds = p * (dp - delta[bh * tokens + i]);
        if biased {
            sds += ds;
        }
        // The centre's weight of token j in row i: 1/(i+1) causal, 1/T otherwise.
        let mut weight = p * gb;
        if mixed {
            let centre = if causal { F::new(1.0) / F::cast_from(i + 1) } else { F::new(1.0) / F::cast_from(tokens) };
            weight += centre * gg;
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

/// Entries per vector the kernels read and write: 4 where a head's `d`
/// and every stride of `q` and `k` are multiples of 4 (and the device
/// reads vectors of 4), else 1.
const LANES: usize = 4;

impl<R: CubeRuntime> Operands<R> {
    fn lanes(&self, p: &Plan) -> usize {
        let strides = |t: &CubeTensor<R>| t.meta.strides().iter().all(|&s| s.is_multiple_of(LANES) || s == 1);
        let device = self.v.client.properties().hardware.max_vector_size >= LANES;
        if device && p.d.is_multiple_of(LANES) && strides(&self.q) && strides(&self.k) {
            LANES
        } else {
            1
        }
    }

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
    let n = o.lanes(p);
    let [alpha, beta, gamma, _] = o.gains;
    shaped_forward::launch::<f32, R>(
        &client,
        count,
        dim,
        n,
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
        p.d / n,
        n,
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
    let n = o.lanes(p);
    let gains = || o.gains.clone().map(|g| g.into_tensor_arg());
    let [alpha, beta, gamma, beta_sa] = gains();
    shaped_rows::launch::<f32, R>(
        &client,
        count.clone(),
        dim,
        n,
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
        p.d / n,
        n,
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
        n,
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
        p.d / n,
        n,
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
