//! The shaped attention on burn's CubeCL backends (CUDA, and wgpu: the
//! software Vulkan device of the tests), as three kernels that never write
//! the T×T weights: one unit per (batch, head, token) row.
//!
//! - `forward`: for query row `i`, one pass over its keys with a running
//!   maximum (the online softmax) accumulates `softmax · v` and the sum of
//!   the values the `centre` averages (the same tokens: `0..=i` causal, all
//!   otherwise, narrowed to a sliding window when one is given: a
//!   runtime `reach`, the keys `i − reach ..` that row `i` sees), then writes the mix `alpha ⊙ v + beta ⊙ o + gamma ⊙ centre`
//!   and the row's log-sum-exp, which is all the backward keeps (in the
//!   place of the reference's weights `p`).
//! - `rows` (backward by query row): recomputes `o_i` from the
//!   log-sum-exp, then `dq_i = scale · Σ_j p_ij (do_i · v_j − D_i) k_j` with
//!   `D_i = do_i · o_i`, and each row's share of the gains' gradients.
//! - `columns` (backward by key row): `dk_j` and `dv_j`, summing over the
//!   queries that see key `j`, with the `alpha` and `centre` terms of `dv`.
//!
//! A soft-capped softmax (the plain softmax attention of `attention/cube.rs`
//! with Gemma 2's cap; the shaped mix itself is not capped) forms each
//! logit as `cap · tanh(scale · s / cap)` where the others form `scale · s`,
//! and each `ds` is bent by the cap's slope `1 − (z / cap)²` (`capped`, a
//! comptime switch, so that the uncapped kernels are as they were). With
//! ALiBi (`alibi`, comptime too; a plain softmax's only), each logit is
//! then less head `h`'s slope times `|i − j|`, the slope formed once per
//! unit (`cube::alibi_slope`); the cap's slope is the capped logit's,
//! before the bias, which has no slope of its own.
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
//! device (`runtime/tests/device/kernels.rs`), and end to end against the
//! CPU (`runtime/tests/device.rs`).

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use burn::tensor::ops::FloatTensorOps;

use super::{reference, MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::{Keys, Scores};
use crate::kernels::cube::{empty_f32, row_cubes, units};
use crate::kernels::gains::GainOps;

mod kernels;
mod mix;

use kernels::{gain_sums, shaped_columns, shaped_forward, shaped_rows};

/// Heads of at most this dimension run the kernels (a row's
/// accumulators are local arrays of this length).
const MAX_HEAD_DIM: usize = 256;

/// The shape the kernels run, when they can (else the reference runs).
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) tokens: usize,
    pub(crate) d: usize,
    /// The lengths of alpha, beta, gamma and `beta_sa` (1 or `heads`).
    pub(crate) lengths: [usize; 4],
}

pub(crate) fn plan<T: TensorMetadata>(a: &Shaped<T>, add: Option<&MixAddend<T>>) -> Option<Plan> {
    let mut p = shape_plan(&a.q, &a.k, (a.v.shape(), a.v.dtype()), a.bq.as_ref())?;
    let n = |t: &T| t.shape().num_elements();
    let sa = add.map_or(1, |m| n(&m.beta_sa));
    p.lengths = [n(&a.gains[0]), n(&a.gains[1]), n(&a.gains[2]), sa];
    let f32s = a.gains.iter().all(|t| t.dtype() == DType::F32)
        && add.is_none_or(|m| [&m.b, &m.beta_sa, &m.beta_ff].iter().all(|t| t.dtype() == DType::F32));
    let grouped = p.lengths.iter().all(|&l| l == 1 || l == p.heads);
    (f32s && grouped).then_some(p)
}

/// The plan of `q`, `k` (`[batch, heads, tokens, d]`), `v` (its shape
/// and dtype: `[batch, tokens, heads · d]`) and the query's bias, without
/// gains: what a plain softmax attention runs. Of metadata only, so that
/// burn's fusion streams plan as the kernels will (`kernels/fused.rs` and
/// the family's `fused.rs`).
pub(crate) fn shape_plan<T: TensorMetadata>(
    q: &T,
    k: &T,
    (v, v_dtype): (Shape, DType),
    bq: Option<&T>,
) -> Option<Plan> {
    let s = q.shape();
    if s.num_dims() != 4 {
        return None;
    }
    let [batch, heads, tokens, d] = [s[0], s[1], s[2], s[3]];
    let f32s = [q, k].into_iter().chain(bq).all(|t| t.dtype() == DType::F32) && v_dtype == DType::F32;
    let shapes = k.shape().as_slice() == [batch, heads, tokens, d]
        && v.as_slice() == [batch, tokens, heads * d]
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

/// A gain as the kernels read it: its values in a row, contiguous.
fn flat<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(g: &CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(CubeBackend::<R, F, I, BT>::float_reshape(g.clone(), [g.shape().num_elements()].into()))
}

/// The operands of a shaped attention (`beta_sa` that of its gained sum).
fn operands<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: &Shaped<CubeTensor<R>>,
    beta_sa: Option<&CubeTensor<R>>,
) -> Operands<R> {
    let [alpha, beta, gamma] = a.gains.each_ref().map(flat::<R, F, I, BT>);
    let beta_sa = beta_sa.map_or_else(|| no_gains(&a.v), flat::<R, F, I, BT>);
    Operands::new([a.q.clone(), a.k.clone(), a.v.clone()], a.bq.as_ref(), [alpha, beta, gamma, beta_sa])
}

/// The forward kernel: `(mix, lse)`; `mixed` false is a plain softmax
/// attention (gains `[0, 1, 0]`, no centre's sums), whose gains are not
/// read.
pub(crate) fn forward<R: CubeRuntime>(
    o: Operands<R>,
    p: &Plan,
    (scores, mixed): (Scores, bool),
) -> (CubeTensor<R>, CubeTensor<R>) {
    let keys = scores.keys;
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
        scores.scale as f32,
        scores.cap.unwrap_or(1.0) as f32,
        p.rows(),
        p.heads,
        p.tokens,
        keys.reach(p.tokens),
        p.d / n,
        n,
        keys.causal,
        mixed,
        o.biased,
        scores.cap.is_some(),
        scores.alibi,
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
/// plain softmax). `kept`: a plain softmax's output as its forward wrote
/// it (`[batch, tokens, heads · d]`, contiguous), which spares the rows'
/// kernel its first pass.
pub(crate) fn backward<R: CubeRuntime>(
    o: Operands<R>,
    p: &Plan,
    (lse, kept): (CubeTensor<R>, Option<CubeTensor<R>>),
    dy: CubeTensor<R>,
    (scores, mix): (Scores, Mix),
) -> [CubeTensor<R>; 4] {
    let keys = scores.keys;
    let (scale, cap) = (scores.scale as f32, scores.cap.unwrap_or(1.0) as f32);
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
    let kept = kept.filter(|_| !mix.mixed);
    let with_o = kept.is_some();
    let o_kept = kept.unwrap_or_else(|| no_gains(&o.v));
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
        o_kept.into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        part.clone().into_tensor_arg(),
        scale,
        cap,
        p.rows(),
        p.heads,
        p.tokens,
        keys.reach(p.tokens),
        p.d / n,
        n,
        keys.causal,
        mix.mixed,
        mix.summed,
        o.biased,
        with_o,
        scores.cap.is_some(),
        scores.alibi,
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
        scale,
        cap,
        p.rows(),
        p.heads,
        p.tokens,
        keys.reach(p.tokens),
        p.d / n,
        n,
        keys.causal,
        mix.mixed,
        mix.summed,
        o.biased,
        scores.cap.is_some(),
        scores.alibi,
    );
    [dq, dk, dv, part]
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
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        routed::<Self>(a, add, |a, add, p| by_rows::<R, F, I, BT>(a, add, &p))
    }

    fn shaped_attention_backward(
        a: Shaped<FloatTensor<Self>>,
        add: Option<MixAddend<FloatTensor<Self>>>,
        (lse, o): (FloatTensor<Self>, Option<FloatTensor<Self>>),
        dy: FloatTensor<Self>,
        acc: Option<FloatTensor<Self>>,
    ) -> ShapedGrads<FloatTensor<Self>> {
        if let Some(o) = o.filter(|_| lse.shape().num_dims() == 4) {
            // The products' route kept the weights and the softmax term.
            return reference::shaped_attention_backward_with::<Self>(a, add, lse, Some(o), dy, acc);
        }
        // The weights (the products' route, or the reference's), or the
        // rows' log-sum-exp (the kernels').
        let planned = plan(&a, add.as_ref()).filter(|_| lse.shape().num_dims() == 3);
        let Some(p) = planned else {
            return reference::shaped_attention_backward::<Self>(a, add, lse, dy, acc);
        };
        let operands = operands::<R, F, I, BT>(&a, add.as_ref().map(|m| &m.beta_sa));
        let dy = into_contiguous(dy);
        let summed = add.is_some();
        let mix = Mix { mixed: true, summed };
        let [dq, dk, dv, part] = backward(operands, &p, (lse, None), dy.clone(), (a.scores(), mix));
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

    fn mix(v: FloatTensor<Self>, o: FloatTensor<Self>, gains: [FloatTensor<Self>; 3], keys: Keys) -> FloatTensor<Self> {
        let Some(m) = mix_plan(&v, &o, &gains, vectors(&v)) else { return reference::mix::<Self>(v, o, gains, keys) };
        let [v, o] = [v, o].map(into_contiguous);
        let [alpha, beta, gamma] = gains.each_ref().map(flat::<R, F, I, BT>);
        let y = empty_f32(&v, v.shape());
        let client = v.client.clone();
        let (count, dim) = units(&client, m.units());
        mix::mix_forward::launch::<f32, R>(
            &client,
            count,
            dim,
            m.lanes,
            v.into_tensor_arg(),
            o.into_tensor_arg(),
            alpha.into_tensor_arg(),
            beta.into_tensor_arg(),
            gamma.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            m.units(),
            m.tokens,
            m.w,
            m.hw,
            keys.reach(m.tokens),
            keys.causal,
        );
        y
    }

    fn mix_backward(
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        gains: [FloatTensor<Self>; 3],
        dy: FloatTensor<Self>,
        keys: Keys,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, [FloatTensor<Self>; 3]) {
        let fits = mix_plan(&v, &o, &gains, vectors(&v)).filter(|_| mix_backward_fits(&v, &dy, acc.as_ref()));
        let Some(m) = fits else { return reference::mix_backward::<Self>(v, o, gains, dy, keys, acc) };
        let [v, o, dy] = [v, o, dy].map(into_contiguous);
        let lengths = gains.each_ref().map(|g| g.shape().num_elements());
        let [alpha, beta, gamma] = gains.each_ref().map(flat::<R, F, I, BT>);
        let accumulate = acc.is_some();
        let acc = acc.map_or_else(|| no_gains(&v), into_contiguous);
        let (dv, d_o) = (empty_f32(&v, v.shape()), empty_f32(&v, v.shape()));
        let part = empty_f32(&v, [4, m.units()]);
        let client = v.client.clone();
        let (count, dim) = units(&client, m.units());
        mix::mix_backward::launch::<f32, R>(
            &client,
            count,
            dim,
            m.lanes,
            v.into_tensor_arg(),
            o.into_tensor_arg(),
            dy.into_tensor_arg(),
            acc.into_tensor_arg(),
            alpha.into_tensor_arg(),
            beta.into_tensor_arg(),
            gamma.into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            d_o.clone().into_tensor_arg(),
            part.clone().into_tensor_arg(),
            m.units(),
            m.tokens,
            m.w,
            m.hw,
            keys.reach(m.tokens),
            keys.causal,
            accumulate,
        );
        // The rows' shares summed per group as the shaped kernels' are:
        // `[3, batch, groups, hw]` read as `[3, batch, heads, tokens]`.
        let sums = Plan {
            batch: m.batch,
            heads: m.groups,
            tokens: m.hw,
            d: 0,
            lengths: [lengths[0], lengths[1], lengths[2], 1],
        };
        let [da, db, dg, _] = gain_grads(part, &sums, false);
        let some = |t: Option<CubeTensor<R>>| t.unwrap_or_else(|| unreachable!("the three gains' gradients are made"));
        (dv, d_o, [some(da), some(db), some(dg)])
    }
}

/// The forward of a CubeCL backend (with fusion or not). As products
/// (`attention::as_products`): the reference maths, keeping the softmax
/// term, which their backward would recompute as `p · v`. By rows: `rows`
/// (the output and the rows' log-sum-exp, which the backward kernels
/// read) where the kernels take the shape, the reference otherwise.
pub(crate) fn routed<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
    rows: impl FnOnce(Shaped<FloatTensor<B>>, Option<MixAddend<FloatTensor<B>>>, Plan) -> (FloatTensor<B>, FloatTensor<B>),
) -> (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>) {
    if crate::kernels::attention::as_products(a.q.shape()[2]) {
        let (y, p, o) = reference::shaped_attention_forward::<B>(a, add);
        return (y, p, Some(o));
    }
    match plan(&a, add.as_ref()) {
        Some(p) => {
            let (y, lse) = rows(a, add, p);
            (y, lse, None)
        }
        None => {
            let (y, p, _) = reference::shaped_attention_forward::<B>(a, add);
            (y, p, None)
        }
    }
}

/// The row kernels' forward for plan `p`: the output, summed with `add`
/// when given, and the rows' log-sum-exp.
pub(crate) fn by_rows<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: Shaped<CubeTensor<R>>,
    add: Option<MixAddend<CubeTensor<R>>>,
    p: &Plan,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (y, lse) = forward(operands::<R, F, I, BT>(&a, None), p, (a.scores(), true));
    let y = match add {
        Some(m) => CubeBackend::<R, F, I, BT>::scaled_sum(y, m.b, m.beta_sa, m.beta_ff),
        None => y,
    };
    (y, lse)
}

/// How the mix kernels run: `batch` sequences of `tokens` tokens, `w`
/// vectors of `lanes` entries a token, in `groups` groups of `hw` vectors
/// (a gain of `groups` values scales one each).
pub(crate) struct MixPlan {
    batch: usize,
    tokens: usize,
    w: usize,
    hw: usize,
    groups: usize,
    lanes: usize,
}

impl MixPlan {
    fn units(&self) -> usize {
        self.batch * self.w
    }
}

/// The mix kernels' plan for f32 `v`, `o` (`[batch, tokens, width]`) and
/// gains of one value or one per group (the same number of groups for
/// all, dividing the width), reading vectors of 4 where `vectors` (the
/// device reads them) and a group's width allow. Of metadata only, so
/// that fusion plans as this file does (`vectors` false there: its
/// outputs' shapes do not depend on it).
pub(crate) fn mix_plan<T: TensorMetadata>(v: &T, o: &T, gains: &[T; 3], vectors: bool) -> Option<MixPlan> {
    let s = v.shape();
    let lengths = gains.each_ref().map(|g| g.shape().num_elements());
    let groups = lengths.iter().copied().max().unwrap_or(1);
    let f32s = [v, o].into_iter().chain(gains).all(|t| t.dtype() == DType::F32);
    if !f32s || s.num_dims() != 3 || o.shape() != s || s.num_elements() == 0 {
        return None;
    }
    let [batch, tokens, width] = [s[0], s[1], s[2]];
    if !lengths.iter().all(|&l| l == 1 || l == groups) || !width.is_multiple_of(groups) {
        return None;
    }
    let per_group = width / groups;
    let lanes = if vectors && per_group.is_multiple_of(4) { 4 } else { 1 };
    Some(MixPlan { batch, tokens, w: width / lanes, hw: per_group / lanes, groups, lanes })
}

/// Whether the mix's backward kernel takes `dy` and `acc` (f32, shaped as
/// `v`) beside a planned mix.
pub(crate) fn mix_backward_fits<T: TensorMetadata>(v: &T, dy: &T, acc: Option<&T>) -> bool {
    let like_v = |t: &T| t.dtype() == DType::F32 && t.shape() == v.shape();
    like_v(dy) && acc.is_none_or(like_v)
}

/// Whether `like`'s device reads vectors of 4.
fn vectors<R: CubeRuntime>(like: &CubeTensor<R>) -> bool {
    like.client.properties().hardware.max_vector_size >= 4
}
