//! Softmax attention on burn's CubeCL backends: the shaped attention's
//! kernels (`shaped/cube/`) compiled for a plain softmax (not `mixed`:
//! gains `[0, 1, 0]` as constants, no gains read, no centre's sums). The T×T weights are never
//! written: the forward keeps the rows' log-sum-exp in their place
//! (`[batch, heads, tokens]`, where the reference keeps the weights
//! `[batch, heads, tokens, tokens]`), and the backward recomputes the
//! weights from it, row by row.
//!
//! The backward is given the forward's output too
//! (the `o` of [`AttentionOps::attention_backward`]), so the query rows' kernel
//! reads `o_i` rather than recomputing it.
//!
//! In bf16 or tf32, up to [`super::PRODUCTS_UP_TO`] tokens, the attention
//! runs as products instead ([`super::Route`]): the reference maths, whose
//! `q · kᵀ` and `p · v` the dense family runs on tensor cores, and whose
//! softmax and its backward are one kernel each here (a cube per row of
//! weights). That path keeps the weights, as does the reference where the
//! shaped kernels do not take the operands (other dtypes than f32, head
//! dimensions above theirs); the backward tells the two apart by rank.
//! Tested against the reference in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, score_heads, AttentionOps, Scores};
use crate::kernels::cube::{
    cube_sum, distanced, empty_f32, first_key, keys_end, logit, row_cubes, row_lse, slope_of, writable,
};
use crate::kernels::shaped::cube::{backward, forward, no_gains, shape_plan, Mix, Operands, Plan};
use crate::kernels::tensor::{merge_heads, split_heads};

/// `q`, `k`, the query's bias and `v` with the heads merged, and
/// placeholders for the gains; with their plan, where the kernels take
/// them.
fn operands<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    [q, k, v]: &[CubeTensor<R>; 3],
    bq: Option<&CubeTensor<R>>,
) -> Option<(Operands<R>, Plan)> {
    let v = merge_heads::<CubeBackend<R, F, I, BT>>(v.clone());
    let p = shape_plan(q, k, (v.shape(), v.dtype), bq)?;
    let none = no_gains(&v);
    let gains = [none.clone(), none.clone(), none.clone(), none];
    Some((Operands::new([q.clone(), k.clone(), v], bq, gains), p))
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AttentionOps for CubeBackend<R, F, I, BT> {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bq: Option<FloatTensor<Self>>,
        scores: Scores,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if super::as_products(q.shape()[2]) {
            return reference::attention_forward::<Self>(q, k, v, bq, scores);
        }
        let qkv = [q, k, v];
        let Some((operands, p)) = operands::<R, F, I, BT>(&qkv, bq.as_ref()) else {
            let [q, k, v] = qkv;
            return reference::attention_forward::<Self>(q, k, v, bq, scores);
        };
        let (o, lse) = forward(operands, &p, (scores, false));
        (split_heads::<Self>(o, p.heads), lse)
    }

    fn attention_backward(
        qkv: [FloatTensor<Self>; 3],
        bq: Option<FloatTensor<Self>>,
        kept: (FloatTensor<Self>, Option<FloatTensor<Self>>),
        g: FloatTensor<Self>,
        mask: (Scores, Option<FloatTensor<Self>>),
        wants: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 4] {
        rows_backward::<R, F, I, BT>(qkv, bq, kept, g, mask, wants)
    }

    fn softmax_scores(s: FloatTensor<Self>, scores: Scores) -> FloatTensor<Self> {
        let Some([rows, tq, tk]) = rows_of(&s) else { return reference::softmax_scores::<Self>(s, scores) };
        let (keys, heads) = (scores.keys, score_heads(&s.shape()));
        let s = into_contiguous(s);
        let p = empty_f32(&s, s.shape());
        let client = s.client.clone();
        let (count, dim, block) = row_cubes(&client, rows, tk);
        softmax_rows::launch::<f32, R>(
            &client,
            count,
            dim,
            s.into_tensor_arg(),
            p.clone().into_tensor_arg(),
            scores.scale as f32,
            scores.cap.unwrap_or(1.0) as f32,
            rows,
            heads,
            tq,
            tk,
            keys.reach(tq.max(tk)),
            block,
            keys.causal,
            scores.cap.is_some(),
            scores.alibi,
        );
        p
    }

    fn softmax_scores_backward(p: FloatTensor<Self>, dp: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let fits = rows_of(&p).filter(|_| dp.dtype == DType::F32 && dp.shape() == p.shape());
        let Some([rows, _, tk]) = fits else { return reference::softmax_scores_backward::<Self>(p, dp, scale) };
        let p = into_contiguous(p);
        let ds = writable(dp);
        let client = p.client.clone();
        let (count, dim, block) = row_cubes(&client, rows, tk);
        softmax_rows_grad::launch::<f32, R>(
            &client,
            count,
            dim,
            p.into_tensor_arg(),
            ds.clone().into_tensor_arg(),
            scale as f32,
            rows,
            tk,
            block,
        );
        ds
    }
}

/// The backward from what the forward kept (`p`): the row kernels from
/// the rows' log-sum-exp (reading `D_i` from the output `o` when given),
/// the reference from the weights.
fn rows_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    qkv: [CubeTensor<R>; 3],
    bq: Option<CubeTensor<R>>,
    (p, o): (CubeTensor<R>, Option<CubeTensor<R>>),
    g: CubeTensor<R>,
    (scores, acc): (Scores, Option<CubeTensor<R>>),
    wants: [bool; 3],
) -> [Option<CubeTensor<R>>; 4] {
    type B<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    if p.shape().num_dims() != 3 {
        return reference::attention_backward::<B<R, F, I, BT>>(qkv, bq, p, g, (scores, acc), wants);
    }
    let Some((operands, plan)) = operands::<R, F, I, BT>(&qkv, bq.as_ref()) else {
        // Not reached (the forward kept row statistics, so it ran the
        // kernels on these operands); the reference, from its weights.
        let [q, k, v] = qkv.clone();
        let weights = reference::attention_forward::<B<R, F, I, BT>>(q, k, v, bq.clone(), scores).1;
        return reference::attention_backward::<B<R, F, I, BT>>(qkv, bq, weights, g, (scores, acc), wants);
    };
    let dy = into_contiguous(merge_heads::<B<R, F, I, BT>>(g));
    let shape = [plan.batch, plan.heads, plan.tokens, plan.d];
    let kept = o
        .filter(|o| o.dtype == DType::F32 && o.shape().as_slice() == shape)
        .map(|o| into_contiguous(merge_heads::<B<R, F, I, BT>>(o)));
    let plain = Mix { mixed: false, summed: false };
    let [dq, dk, dv, _] = backward(operands, &plan, (p, kept), dy, (scores, plain));
    let dbq = bq.as_ref().map(|_| {
        let s = B::<R, F, I, BT>::float_sum_dim(B::<R, F, I, BT>::float_sum_dim(dq.clone(), 2), 0);
        B::<R, F, I, BT>::float_reshape(s, [plan.heads * plan.d].into())
    });
    let dv = match acc {
        Some(acc) => B::<R, F, I, BT>::float_add(acc, dv),
        None => dv,
    };
    let [dq, dk, dv] = [dq, dk, split_heads::<B<R, F, I, BT>>(dv, plan.heads)];
    [wants[0].then_some(dq), wants[1].then_some(dk), wants[2].then_some(dv), dbq]
}

/// `[rows, t_q, t_k]` of f32 scores or weights `[..., t_q, t_k]` (at least
/// one query and one key), which the row kernels take (of metadata only,
/// so that fusion plans as this file does).
pub(crate) fn rows_of<T: TensorMetadata>(s: &T) -> Option<[usize; 3]> {
    let shape = s.shape();
    let rank = shape.num_dims();
    if s.dtype() != DType::F32 || rank < 2 || shape.num_elements() == 0 {
        return None;
    }
    let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
    Some([shape.num_elements() / tk, tq, tk])
}

/// Row `CUBE_POS` of `rows` rows of `tk` scores (`tq` rows a matrix, of
/// `heads` matrices per sequence): the softmax of their logits (`scale ·
/// s`, soft-capped at `cap` when `capped`, less ALiBi's distance when
/// `alibi`) over the keys its query sees (`Keys::range`: the causal mask's
/// and those within `reach`), the others weighted 0.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn softmax_rows<F: Float>(
    s: &Tensor<F>,
    p: &mut Tensor<F>,
    scale: f32,
    cap: f32,
    rows: usize,
    heads: usize,
    tq: usize,
    tk: usize,
    reach: usize,
    #[comptime] block: usize,
    #[comptime] causal: bool,
    #[comptime] capped: bool,
    #[comptime] alibi: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let start = row * tk;
    let i = row % tq;
    let lo = first_key(i, reach);
    let end = keys_end(i, tk, reach, causal);
    let (scale, cap) = (F::cast_from(scale), F::cast_from(cap));
    let slope = slope_of::<F>(row / tq % heads, heads, alibi);
    let lse = row_lse(s, start + lo, end - lo, scale, cap, slope, i, lo, capped, alibi, block);
    let mut j = UNIT_POS as usize;
    while j < tk {
        let mut x = F::new(0.0);
        if j >= lo && j < end {
            x = F::exp(distanced::<F>(logit::<F>(s[start + j], scale, cap, capped), slope, i, j, alibi) - lse);
        }
        p[start + j] = x;
        j += block;
    }
}

/// Row `CUBE_POS` of the scores' gradient, written over `d` (the weights'
/// gradient `dp`): `scale · p ⊙ (dp − Σⱼ p ⊙ dp)`.
#[cube(launch)]
fn softmax_rows_grad<F: Float>(
    p: &Tensor<F>,
    d: &mut Tensor<F>,
    scale: f32,
    rows: usize,
    tk: usize,
    #[comptime] block: usize,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let start = row * tk;
    let mut part = F::new(0.0);
    let mut j = UNIT_POS as usize;
    while j < tk {
        part += p[start + j] * d[start + j];
        j += block;
    }
    let mut shared = SharedMemory::<F>::new(block);
    let dot = cube_sum(&mut shared, part, block);
    let scale = F::cast_from(scale);
    j = UNIT_POS as usize;
    while j < tk {
        d[start + j] = scale * p[start + j] * (d[start + j] - dot);
        j += block;
    }
}
