//! Softmax attention from burn's primitive ops and the dense family's
//! products.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Tensor, TensorMetadata};

use super::{alibi_bias, score_heads, AttentionOps, Keys, Scores};
use crate::kernels::tensor::{primitive, tensor};

/// `q + bq` for `q: [batch, heads, tokens, d]`, `bq: [heads · d]`.
fn biased<B: Backend>(q: FloatTensor<B>, bq: Option<FloatTensor<B>>) -> FloatTensor<B> {
    let Some(bq) = bq else {
        return q;
    };
    let [_, h, _, d] = q.shape().dims();
    primitive(tensor::<B, 4>(q) + tensor::<B, 1>(bq).reshape([1, h, 1, d]))
}

/// The gradient of a bias added to `x: [batch, heads, tokens, d]`
/// from `x`'s: its sums over the batch and the tokens, `[heads · d]`.
fn bias_grad<B: Backend>(dx: &FloatTensor<B>) -> FloatTensor<B> {
    let [_, h, _, d] = dx.shape().dims();
    primitive(tensor::<B, 4>(dx.clone()).sum_dim(0).sum_dim(2).reshape([h * d]))
}

pub fn attention_forward<B: AttentionOps>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bq: Option<FloatTensor<B>>,
    scores: Scores,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = B::matmul(biased::<B>(q, bq), B::float_transpose(k));
    let p = B::softmax_scores(s, scores);
    (B::matmul_token_major(p.clone(), v), p)
}

pub fn attention_backward<B: AttentionOps>(
    qkv: [FloatTensor<B>; 3],
    bq: Option<FloatTensor<B>>,
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    (scores, acc): (Scores, Option<FloatTensor<B>>),
    wants: [bool; 3],
) -> [Option<FloatTensor<B>>; 4] {
    let [q, k, v] = qkv;
    let with_bias = bq.is_some();
    let q = biased::<B>(q, bq);
    let dv = wants[2].then(|| {
        let pt = B::float_transpose(p.clone());
        match acc {
            Some(c) => B::matmul_token_major_add(c, pt, g.clone()),
            None => B::matmul_token_major(pt, g.clone()),
        }
    });
    if !wants[0] && !wants[1] && !with_bias {
        return [None, None, dv, None];
    }
    let dp = B::matmul(g, B::float_transpose(v));
    let ds = match scores.cap {
        None => B::softmax_scores_backward(p, dp, scores.scale),
        // The logits' gradient times their slope, from the scores formed
        // again.
        Some(cap) => {
            let dz = B::softmax_scores_backward(p, dp, 1.0);
            let s = B::matmul(q.clone(), B::float_transpose(k.clone()));
            let th = B::float_tanh(B::float_mul_scalar(s, (scores.scale / cap).into()));
            let flat = B::float_add_scalar(B::float_neg(B::float_mul(th.clone(), th)), 1.0.into());
            B::float_mul(dz, B::float_mul_scalar(flat, scores.scale.into()))
        }
    };
    let dq = (wants[0] || with_bias).then(|| B::matmul_token_major(ds.clone(), k));
    let dk = wants[1].then(|| B::matmul_token_major(B::float_transpose(ds), q));
    let dbq = dq.as_ref().filter(|_| with_bias).map(bias_grad::<B>);
    [dq.filter(|_| wants[0]), dk, dv, dbq]
}

pub fn softmax_scores<B: Backend>(s: FloatTensor<B>, scores: Scores) -> FloatTensor<B> {
    let s = B::float_mul_scalar(s, scores.scale.into());
    let s = match scores.cap {
        Some(cap) => B::float_mul_scalar(B::float_tanh(B::float_div_scalar(s, cap.into())), cap.into()),
        None => s,
    };
    let keys = scores.keys;
    let shape = s.shape();
    let rank = shape.num_dims();
    let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
    let s = match hidden::<B>([tq, tk], keys, &B::float_device(&s)) {
        Some(hidden) => {
            let mut dims = vec![1; rank];
            dims[rank - 2] = tq;
            dims[rank - 1] = tk;
            let hidden = B::bool_expand(B::bool_reshape(hidden.into_primitive(), dims.into()), shape.clone());
            B::float_mask_fill(s, hidden, f32::NEG_INFINITY.into())
        }
        None => s,
    };
    // ALiBi's bias after the mask (burn's order), by head of `[batch, heads,
    // t_q, t_k]` scores.
    let s = match scores.alibi {
        true => {
            let device = B::float_device(&s);
            let bias = alibi_bias::<B>((0, tq), tk, score_heads(&shape), keys.causal, &device);
            B::float_add(s, B::float_expand(primitive(bias), shape))
        }
        false => s,
    };
    primitive(burn::tensor::activation::softmax(tensor::<B, 4>(s), 3))
}

/// The keys `[t_q, t_k]` that the queries do not see, true where hidden:
/// later keys under a causal mask, and those outside the window; `None`
/// when every query sees every key.
fn hidden<B: Backend>([tq, tk]: [usize; 2], keys: Keys, device: &B::Device) -> Option<Tensor<B, 2, Bool>> {
    let later = keys.causal.then(|| Tensor::<B, 2, Bool>::tril_mask([tq, tk], 0, device));
    match (later, outside_window::<B>((0, tq), tk, keys, device)) {
        (Some(a), Some(b)) => Some(a.bool_or(b)),
        (a, b) => a.or(b),
    }
}

/// The keys `0..t` that queries at positions `from..from + n` do not see
/// for the window of `keys`, `[n, t]`, true where hidden (a causal mask
/// hides the later keys on its own); `None` where the window hides none.
pub fn outside_window<B: Backend>(
    (from, n): (usize, usize),
    t: usize,
    keys: Keys,
    device: &B::Device,
) -> Option<Tensor<B, 2, Bool>> {
    let span = t.max(from + n);
    if !keys.windowed(span) {
        return None;
    }
    let (reach, from) = (keys.reach(span) as i64, from as i64);
    // Keys more than `reach` before the query, and without a causal mask
    // more than `reach` after it.
    let before = Tensor::<B, 2, Bool>::triu_mask([n, t], from - reach, device);
    Some(match keys.causal {
        true => before,
        false => before.bool_or(Tensor::<B, 2, Bool>::tril_mask([n, t], from + reach, device)),
    })
}

pub fn softmax_scores_backward<B: Backend>(p: FloatTensor<B>, dp: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let rank = p.shape().num_dims();
    let dot = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), rank - 1);
    let ds = B::float_mul(p, B::float_sub(dp, dot));
    B::float_mul_scalar(ds, scale.into())
}
