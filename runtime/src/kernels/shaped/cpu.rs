//! The shaped attention on the CPU: per sequence, per head the scores,
//! their softmax and the softmax term into a scratch that stays in cache,
//! then the mix (and the block's gained sum) row by row; the backward the
//! other way round. Built from the attention family's pieces.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::mix::{mix_backward, mix_forward};
use super::{loops, reference, MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::cpu::{
    attention_weights, band, bias_values, kept_weights, key_shift, weights_or_scratch,
};
use crate::kernels::attention::Keys;
use crate::kernels::cpu::parallel;
use crate::kernels::cpu::raw::{self, Fresh, Gemm, Heads, Mat, Threads, Written};
use crate::kernels::cpu::rows::{dims3, owned, per_head};
use rayon::prelude::*;

impl ShapedOps for Flex {
    fn shaped_attention(a: Shaped<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> FlexTensor {
        forward(a, add, false).0
    }

    fn shaped_attention_forward(
        a: Shaped<FlexTensor>,
        add: Option<MixAddend<FlexTensor>>,
    ) -> (FlexTensor, FlexTensor, Option<FlexTensor>) {
        match forward(a, add, true) {
            (y, Some(p)) => (y, p, None),
            (_, None) => unreachable!("the weights are kept when asked for"),
        }
    }

    fn shaped_attention_backward(
        a: Shaped<FlexTensor>,
        add: Option<MixAddend<FlexTensor>>,
        (p, _): (FlexTensor, Option<FlexTensor>),
        dy: FlexTensor,
        acc: Option<FlexTensor>,
    ) -> ShapedGrads<FlexTensor> {
        super::backward::backward(a, add, p, dy, acc)
    }

    fn mix(v: FlexTensor, o: FlexTensor, gains: [FlexTensor; 3], keys: Keys) -> FlexTensor {
        mix_forward(&v, &o, &gains, keys).unwrap_or_else(|| reference::mix::<Flex>(v, o, gains, keys))
    }

    fn mix_backward(
        v: FlexTensor,
        o: FlexTensor,
        gains: [FlexTensor; 3],
        dy: FlexTensor,
        keys: Keys,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor, [FlexTensor; 3]) {
        match mix_backward([&v, &o], &gains, dy, keys, acc) {
            Ok(grads) => grads,
            Err((dy, acc)) => reference::mix_backward::<Flex>(v, o, gains, dy, keys, acc),
        }
    }

    fn centre(x: FlexTensor, keys: Keys) -> FlexTensor {
        by_sequence(x, |out, x, d| loops::window_mean(out, x, d, keys))
            .unwrap_or_else(|x| reference::centre::<Flex>(x, keys))
    }

    fn centre_backward(dy: FlexTensor, keys: Keys) -> FlexTensor {
        by_sequence(dy, |out, dy, d| loops::window_mean_backward(out, dy, d, keys))
            .unwrap_or_else(|dy| reference::centre_backward::<Flex>(dy, keys))
    }
}

/// The shaped attention through its mix (see
/// [`ShapedOps::shaped_attention_forward`]), and its weights when `keep`
/// asks for them (training's forward; otherwise each head's weights are
/// formed in a scratch of their own, and no `[batch, heads, t, t]` is ever
/// held).
fn forward(a: Shaped<FlexTensor>, add: Option<MixAddend<FlexTensor>>, keep: bool) -> (FlexTensor, Option<FlexTensor>) {
    let Some(plan) = shaped_plan(&a, add.as_ref()) else {
        let (y, p, _) = reference::shaped_attention_forward::<Flex>(a, add);
        return (y, keep.then_some(p));
    };
    let [b, h, t, d, dv] = plan.dims;
    let width = h * dv;
    let (qh, kh) = (Heads::new(&a.q), Heads::new(&a.k));
    let v = a.v.to_contiguous();
    let bt = add.map(|m| m.b.to_contiguous());
    let vs: &[f32] = &v.storage()[..b * t * width];
    let bs: Option<&[f32]> = bt.as_ref().map(|x| &x.storage()[..b * t * width]);
    let band = band(a.keys, t);
    let e = band.entries();
    let (mut p, mut y) = (Fresh::new(if keep { b * h * e } else { 0 }), Fresh::new(b * t * width));
    let mut weights = kept_weights(&mut p, b * h, e, keep).into_iter();
    let seqs: Vec<_> =
        y.parts(t * width).into_iter().map(|yq| (weights.by_ref().take(h).collect::<Vec<_>>(), yq)).collect();
    let cols = plan.columns(dv);
    let g = loops::MixGains { alpha: &cols[0], beta: &cols[1], gamma: &cols[2], branch: &cols[3] };
    let (scores, keys) = (a.scores(), a.keys);
    // Per sequence: per head the scores, their softmax and the softmax
    // term (into a scratch `[t, width]` that stays in cache), then the
    // mix row by row.
    let threads = if parallel(b * t * width) { Threads::Items } else { Threads::One };
    let done = Gemm::map_with(threads, seqs, |q, (pq, yq), gemm| {
        let span = q * t * width..(q + 1) * t * width;
        let (vq, bq) = (&vs[span.clone()], bs.map(|x| &x[span]));
        let mut o = Fresh::new(t * width);
        let mut heads = Vec::with_capacity(h);
        let mut proofs = Vec::with_capacity(h);
        for (hi, (pi, oi)) in pq.into_iter().zip(o.heads([1, h, t, dv])).enumerate() {
            let i = q * h + hi;
            let vi = Mat::new(vq, hi * dv, [t, dv], [width as isize, 1]);
            let u = plan.bq.as_ref().map(|bias| key_shift(gemm, kh.at(i), &bias[hi * d..]));
            let qk = [qh.at(i), kh.at(i)];
            // The weights kept, or in a scratch of this head's.
            let mut scratch = Fresh::new(0);
            let (pi, keeping) = weights_or_scratch(pi, &mut scratch, e);
            let (wi, wp) = attention_weights(gemm, pi, qk, (scores, None), u.as_deref(), &band);
            heads.push(gemm.into_from_banded(oi, wi.view(), vi).1);
            proofs.extend(keeping.then_some(wp));
        }
        let o = o.finish(heads);
        let mut centres = loops::Centres::new(vq, width, keys);
        // Each row into a scratch row in cache, then streamed out.
        let mut row = vec![0.0f32; width];
        let yp = yq.rows(width, false, |r, out| {
            let rows = r * width..(r + 1) * width;
            let x = loops::MixIn { v: &vq[rows.clone()], o: &o[rows.clone()], b: bq.map(|x| &x[rows]) };
            let (sum, inv, running) = centres.row(r, t);
            loops::mix_row(&mut row, x, sum, g, inv, running);
            out.stream(&row)
        });
        raw::fence();
        (proofs, yp)
    });
    let (pp, yp): (Vec<Vec<Written>>, Vec<Written>) = done.into_iter().unzip();
    let p = keep.then(|| owned(p.finish(pp.into_iter().flatten()), [b, h, e].into()));
    (owned(y.finish(yp), v.layout().shape().clone()), p)
}

/// A fused shaped attention's dims `[batch, heads, tokens, d, dv]`, its
/// gains per head: the mix's own (`alpha`, `beta`, `gamma`), the sum's `beta_sa`, `beta_ff`;
/// and the query's bias (`[heads · d]`) when it has biases.
pub(super) struct ShapedPlan {
    pub(super) dims: [usize; 5],
    pub(super) alpha: Vec<f32>,
    pub(super) beta: Vec<f32>,
    pub(super) gamma: Vec<f32>,
    pub(super) beta_sa: Option<Vec<f32>>,
    pub(super) beta_ff: Vec<f32>,
    pub(super) bq: Option<Vec<f32>>,
}

impl ShapedPlan {
    /// The gains per column (`dv` per head): the three terms' times `beta_sa`,
    /// and `beta_ff` (zeros without a branch).
    pub(super) fn columns(&self, dv: usize) -> [Vec<f32>; 4] {
        let heads = self.alpha.len();
        let column = |f: &dyn Fn(usize) -> f32| (0..heads * dv).map(|j| f(j / dv)).collect::<Vec<f32>>();
        let beta_sa = |hi: usize| self.beta_sa.as_ref().map_or(1.0, |g| g[hi]);
        [
            column(&|hi| self.alpha[hi] * beta_sa(hi)),
            column(&|hi| self.beta[hi] * beta_sa(hi)),
            column(&|hi| self.gamma[hi] * beta_sa(hi)),
            column(&|hi| self.beta_ff.get(hi).copied().unwrap_or(0.0)),
        ]
    }
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
    let [alpha, beta, gamma] = [&a.gains[0], &a.gains[1], &a.gains[2]].map(|g| per_head(g, h));
    let (beta_sa, beta_ff) = match add {
        Some(m) => {
            let same = m.b.dtype() == DType::F32 && m.b.layout().shape() == sv;
            (Some(per_head(&m.beta_sa, h).filter(|_| same)?), per_head(&m.beta_ff, h)?)
        }
        None => (None, Vec::new()),
    };
    let bq = bias_values(&a.bq, h * d)?;
    Some(ShapedPlan { dims: [b, h, t, d, sv[2] / h], alpha: alpha?, beta: beta?, gamma: gamma?, beta_sa, beta_ff, bq })
}

/// `f(out, x, width)` on each sequence of an f32 `x: [batch, tokens,
/// width]` into a fresh tensor of its shape; `x` back otherwise.
fn by_sequence(x: FlexTensor, f: impl Fn(&mut [f32], &[f32], usize) + Sync) -> Result<FlexTensor, FlexTensor> {
    if x.dtype() != DType::F32 || x.layout().num_dims() != 3 {
        return Err(x);
    }
    let [_, t, d] = dims3(&x);
    let x = x.to_contiguous();
    let len = x.layout().num_elements();
    let xs: &[f32] = &x.storage()[..len];
    let mut out = vec![0.0f32; len];
    let seq = |(q, y): (usize, &mut [f32])| f(y, &xs[q * t * d..(q + 1) * t * d], d);
    if parallel(len) {
        out.par_chunks_mut((t * d).max(1)).enumerate().for_each(seq);
    } else {
        out.chunks_mut((t * d).max(1)).enumerate().for_each(seq);
    }
    Ok(owned(out, x.layout().shape().clone()))
}
