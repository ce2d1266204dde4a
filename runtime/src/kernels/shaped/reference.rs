//! The shaped attention from the attention family's reference maths (its
//! weights kept, whatever a backend's own attention keeps), the gains
//! family and burn's primitive ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata};

use super::{MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::reference as attention;
use crate::kernels::attention::Keys;
use crate::kernels::tensor::{merge_heads, primitive, split_heads};

/// The `centre` term: running mean over tokens, or the mean.
fn centre<B: ShapedOps>(v: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
    if causal {
        B::causal_mean(v)
    } else {
        let shape = v.shape();
        B::float_expand(B::float_mean_dim(v, 1), shape)
    }
}

fn centre_backward<B: ShapedOps>(dy: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
    if causal {
        B::causal_mean_backward(dy)
    } else {
        let shape = dy.shape();
        B::float_expand(B::float_mean_dim(dy, 1), shape)
    }
}

/// The forward, the weights, and the softmax term `o` (`[batch, heads,
/// tokens, d]`), which [`shaped_attention_backward_with`] can take instead
/// of recomputing it.
pub fn shaped_attention_forward<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let heads = a.q.shape()[1];
    let v4 = split_heads::<B>(a.v.clone(), heads);
    let (o, p) = attention::attention_forward::<B>(a.q, a.k, v4, a.bq, (a.scale, Keys::all(a.causal)));
    let y = B::mix(a.v, merge_heads::<B>(o.clone()), a.gains, a.causal);
    let y = match add {
        Some(m) => B::scaled_sum(y, m.b, m.beta_sa, m.beta_ff),
        None => y,
    };
    (y, p, o)
}

pub fn shaped_attention_backward<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
    p: FloatTensor<B>,
    dy: FloatTensor<B>,
    acc: Option<FloatTensor<B>>,
) -> ShapedGrads<FloatTensor<B>> {
    shaped_attention_backward_with::<B>(a, add, p, None, dy, acc)
}

/// The backward from the weights `p`, and the softmax term `o` when the
/// forward kept it (else recomputed as `p · v`).
pub fn shaped_attention_backward_with<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
    p: FloatTensor<B>,
    o: Option<FloatTensor<B>>,
    dy: FloatTensor<B>,
    acc: Option<FloatTensor<B>>,
) -> ShapedGrads<FloatTensor<B>> {
    let heads = a.q.shape()[1];
    let v4 = split_heads::<B>(a.v.clone(), heads);
    let o = merge_heads::<B>(o.unwrap_or_else(|| B::matmul_token_major(p.clone(), v4.clone())));
    // With an addend, the gained sum's backward first: `dy` at the mix.
    let (dy, addend) = match add {
        Some(m) => {
            let y = B::mix(a.v.clone(), o.clone(), a.gains.clone(), a.causal);
            let [dmix, db, dbeta_sa, dbeta_ff] = B::scaled_sum_backward(y, m.b, m.beta_sa, m.beta_ff, dy);
            (dmix, Some([db, dbeta_sa, dbeta_ff]))
        }
        None => (dy, None),
    };
    let (dv, d_o, dgains) = B::mix_backward(a.v, o, a.gains, dy, a.causal, acc);
    let d_o = split_heads::<B>(d_o, heads);
    let [dq, dk, dv, dbq] = attention::attention_backward::<B>(
        [a.q, a.k, v4],
        a.bq,
        p,
        d_o,
        (a.scale, Keys::all(a.causal), Some(dv)),
        [true; 3],
    );
    let [dq, dk, dv] = [dq, dk, dv].map(|g| g.expect("every gradient was wanted"));
    ShapedGrads { dq, dk, dv: merge_heads::<B>(dv), dgains, addend, dbq }
}

pub fn mix<B: ShapedOps>(
    v: FloatTensor<B>,
    o: FloatTensor<B>,
    gains: [FloatTensor<B>; 3],
    causal: bool,
) -> FloatTensor<B> {
    let [alpha, beta, gamma] = gains;
    let c = centre::<B>(v.clone(), causal);
    let sum = B::float_add(B::scale_groups(v, alpha), B::scale_groups(o, beta));
    B::float_add(sum, B::scale_groups(c, gamma))
}

pub fn mix_backward<B: ShapedOps>(
    v: FloatTensor<B>,
    o: FloatTensor<B>,
    gains: [FloatTensor<B>; 3],
    dy: FloatTensor<B>,
    causal: bool,
    acc: Option<FloatTensor<B>>,
) -> (FloatTensor<B>, FloatTensor<B>, [FloatTensor<B>; 3]) {
    let [alpha, beta, gamma] = gains;
    let n = |g: &FloatTensor<B>| g.shape().num_elements();
    let (ni, ns, nc) = (n(&alpha), n(&beta), n(&gamma));
    let c = centre::<B>(v.clone(), causal);
    let dalpha = B::scale_groups_grad(v, dy.clone(), ni);
    let dbeta = B::scale_groups_grad(o, dy.clone(), ns);
    let dgamma = B::scale_groups_grad(c, dy.clone(), nc);
    let dv = B::float_add(
        B::scale_groups(dy.clone(), alpha),
        centre_backward::<B>(B::scale_groups(dy.clone(), gamma), causal),
    );
    let dv = match acc {
        Some(a) => B::float_add(a, dv),
        None => dv,
    };
    (dv, B::scale_groups(dy, beta), [dalpha, dbeta, dgamma])
}

/// `[1, tokens, 1]`: 1, 2, …, tokens.
fn counts<B: Backend>(x: &FloatTensor<B>) -> FloatTensor<B> {
    let t = x.shape()[1];
    let c = Tensor::<B, 1, burn::tensor::Int>::arange(1..t as i64 + 1, &B::float_device(x)).float();
    B::float_reshape(primitive(c), [1, t, 1].into())
}

pub fn causal_mean<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let c = counts::<B>(&x);
    B::float_div(B::float_cumsum(x, 1), c)
}

pub fn causal_mean_backward<B: Backend>(dy: FloatTensor<B>) -> FloatTensor<B> {
    // Σ_{i ≥ s} z[i] = Σ_i z[i] − Σ_{i < s} z[i], with z = dy / (i + 1).
    let c = counts::<B>(&dy);
    let z = B::float_div(dy, c);
    let total = B::float_sum_dim(z.clone(), 1);
    let before = B::float_sub(B::float_cumsum(z.clone(), 1), z);
    B::float_sub(total, before)
}
